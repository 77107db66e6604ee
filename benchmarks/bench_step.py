"""Side-by-side cost of clip-and-check variants of one training step (not a unit test).

Every variant of the step is built in ONE process (each with its own copy of the model), warmed up,
then timed round-robin: each round runs every variant for a few steps, so load changes on the
machine hit all variants alike. The table reports the median time per step over rounds and ratios.

Variants:
  V0  no clipping                              apply_gradients(grads)
  V1  tf.clip_by_global_norm                   the usual advice
  V3  tutorial pattern                         per-gradient clip_by_value + per-gradient NaN assert
  V4  check_numerics on every gradient
  SR  safegrad.clip_and_apply raise mode       clip_norm, NaN/Inf check, named error
  SS  safegrad.clip_and_apply skip mode        the same, skipping non-finite steps
  SI  safegrad.clip_and_apply ignore mode      clipping only (diagnostic; --variants ...,SI)
  K   Keras global_clipnorm (tf.function only) the Keras optimizer's own clipping
  L   the norm read alone                      V0 + tf.linalg.global_norm (the floor of any check)
  X0, X1, XS  V0, V1 and SS compiled with XLA (tf.function(jit_compile=True), TF >= 2.5): XLA fuses
      the clip scale into the optimizer's update for every optimizer

Models:
  M1  200 variables of 256x256, plain SGD (many variables, cheap gradients)
  M2  MLP 784-2048-2048-10, Adam, batch 128

Modes: "session" (a tf.compat.v1 graph + Session; TF 1.15 and 2.x) and "function" (TF2
tf.function).

Usage:  python benchmarks/bench_step.py [--modes session,function] [--models M1,M2]
                                        [--rounds 15] [--steps 3] [--json results.json]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import safegrad
from safegrad._tf import TF_VERSION, TF_VERSION_STRING, tf, tf1

CLIP = 1.0
VALUE = 1.0

# --------------------------------------------------------------------------------------------
# Models: (make_variables, loss_fn(vars, batch), make_optimizer, make_keras_optimizer, batch)
# --------------------------------------------------------------------------------------------


def m1_spec():
    rng = np.random.RandomState(0)
    x = rng.randn(32, 256).astype(np.float32) * 0.1

    def variables(make):
        return [make(rng.randn(256, 256).astype(np.float32) * 0.01, "w{}".format(i)) for i in range(200)]

    def loss(weights, xb):
        return tf.add_n([tf.reduce_mean(tf.square(tf.matmul(xb, w))) for w in weights])

    return {
        "name": "M1",
        "describe": "200 x 256x256 vars, SGD",
        "variables": variables,
        "loss": loss,
        "optimizer": lambda: tf1.train.GradientDescentOptimizer(0.01),
        "keras_optimizer": lambda **kw: tf.keras.optimizers.SGD(0.01, **kw),
        "batch": x,
    }


def m2_spec():
    rng = np.random.RandomState(1)
    x = rng.rand(128, 784).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.randint(0, 10, 128)]
    sizes = [784, 2048, 2048, 10]

    def variables(make):
        out = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            out.append(make((rng.randn(a, b) * np.sqrt(2.0 / a)).astype(np.float32), "kernel{}".format(i)))
            out.append(make(np.zeros(b, np.float32), "bias{}".format(i)))
        return out

    def loss(weights, xb):
        h = xb
        for i in range(0, len(weights), 2):
            h = tf.matmul(h, weights[i]) + weights[i + 1]
            if i + 2 < len(weights):
                h = tf.nn.relu(h)
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=h))

    return {
        "name": "M2",
        "describe": "MLP 784-2048-2048-10, Adam, batch 128",
        "variables": variables,
        "loss": loss,
        "optimizer": lambda: tf1.train.AdamOptimizer(1e-4),
        "keras_optimizer": lambda **kw: tf.keras.optimizers.Adam(1e-4, **kw),
        "batch": x,
    }


MODELS = {"M1": m1_spec, "M2": m2_spec}

# --------------------------------------------------------------------------------------------
# Variants: build(optimizer, loss_fn, variables) -> train op (session) / runs the step (function)
# --------------------------------------------------------------------------------------------


def _grads(loss_tensor_or_fn, variables, tape_mode):
    if tape_mode:
        with tf.GradientTape() as tape:
            loss = loss_tensor_or_fn()
        return tape.gradient(loss, variables)
    return tf.gradients(loss_tensor_or_fn(), variables)


def v0(opt, loss, variables, tape_mode):
    grads = _grads(loss, variables, tape_mode)
    return opt.apply_gradients(zip(grads, variables))


def v1(opt, loss, variables, tape_mode):
    grads = _grads(loss, variables, tape_mode)
    clipped, _ = tf.clip_by_global_norm(grads, CLIP)
    return opt.apply_gradients(zip(clipped, variables))


def v3(opt, loss, variables, tape_mode):
    # The tutorial pattern (seed article 001, with the assertion the right way round).
    grads = _grads(loss, variables, tape_mode)
    clipped = [tf.clip_by_value(g, -VALUE, VALUE) for g in grads]
    checks = [
        tf.debugging.assert_equal(tf.reduce_sum(tf.cast(tf.math.is_nan(g), tf.float32)), 0.0, message="NaN gradient")
        for g in clipped
    ]
    with tf.control_dependencies(checks):
        return opt.apply_gradients(zip(clipped, variables))


def v4(opt, loss, variables, tape_mode):
    grads = _grads(loss, variables, tape_mode)
    checked = [tf.debugging.check_numerics(g, "bad gradient") for g in grads]
    return opt.apply_gradients(zip(checked, variables))


def lread(opt, loss, variables, tape_mode):
    # The norm is FETCHED as well as waited for: a control dependency alone lets Grappler's
    # dependency optimizer turn the (side-effect free) norm computation into NoOps, which makes a
    # floor that reads nothing (measured: 30% too low on M1).
    grads = _grads(loss, variables, tape_mode)
    norm = tf.linalg.global_norm(grads)
    with tf.control_dependencies([norm]):
        return [opt.apply_gradients(zip(grads, variables)), norm]


VARIANTS = {"V0": v0, "V1": v1, "V3": v3, "V4": v4, "L": lread}
ORDER = ["V0", "V1", "V3", "V4", "SR", "SS", "K", "L", "X0", "X1", "XS"]  # (+ "SI": ignore mode)
FUNCTION_ONLY = ("K", "X0", "X1", "XS")


class SessionStep:
    """One variant in its own graph and Session."""

    def __init__(self, spec, variant):
        self.graph = tf.Graph()
        with self.graph.as_default():
            variables = spec["variables"](lambda v, n: tf1.Variable(v, name=n))
            x = tf1.constant(spec["batch"])
            loss_tensor = spec["loss"](variables, x)
            if variant in ("SR", "SS", "SI"):
                self.op = safegrad.clip_and_apply(
                    spec["optimizer"](), loss_tensor, variables, clip_norm=CLIP,
                    on_nonfinite={"SR": "raise", "SS": "skip", "SI": "ignore"}[variant],
                )
            else:
                self.op = VARIANTS[variant](spec["optimizer"](), lambda: loss_tensor, variables, False)
            self.ops = len(self.graph.get_operations())
            self.sess = tf1.Session(graph=self.graph)
            self.sess.run(tf1.global_variables_initializer())

    def __call__(self):
        self.sess.run(self.op)


class FunctionStep:
    """One variant as a tf.function over its own variables."""

    def __init__(self, spec, variant):
        variables = spec["variables"](lambda v, n: tf.Variable(v, name=n))
        x = tf.constant(spec["batch"])
        loss = lambda: spec["loss"](variables, x)  # noqa: E731
        jit = variant.startswith("X")
        if jit:  # the same step compiled by XLA: X0 = V0, X1 = V1, XS = SS
            variant = {"X0": "V0", "X1": "V1", "XS": "SS"}[variant]
        if variant == "K":
            optimizer = spec["keras_optimizer"](global_clipnorm=CLIP)

            def step():
                with tf.GradientTape() as tape:
                    value = loss()
                optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
        elif variant in ("SR", "SS"):
            optimizer = spec["optimizer"]()
            policy = "skip" if variant == "SS" else "raise"
            # As documented: the counters exist before the first call, so it is traced once (a
            # second trace would also count in bench_memory's peak).
            safegrad.step_state(optimizer)

            def step():
                safegrad.clip_and_apply(optimizer, loss, variables, clip_norm=CLIP, on_nonfinite=policy)
        else:
            optimizer = spec["optimizer"]()
            build = VARIANTS[variant]

            def step():
                result = build(optimizer, loss, variables, True)
                return result[1] if isinstance(result, list) else None

        self.fn = tf.function(step, jit_compile=True) if jit else tf.function(step)
        self.fn()  # trace
        self.ops = len(self.fn.get_concrete_function().graph.get_operations())

    def __call__(self):
        self.fn()


def _has_jit():
    import inspect

    return "jit_compile" in inspect.signature(tf.function).parameters


def measure(spec, mode, variants, rounds, steps, warmup):
    maker = SessionStep if mode == "session" else FunctionStep
    built = {}
    for name in variants:
        if name in FUNCTION_ONLY and mode == "session":
            continue
        if name.startswith("X") and not _has_jit():
            continue
        built[name] = maker(spec, name)
    times = round_robin(built, rounds, steps, warmup)
    for name, entry in times.items():
        entry["ops"] = built[name].ops
    return times


def round_robin(built, rounds, steps, warmup):
    """Times each built step (a callable) round-robin; median/min/max seconds per step by name."""
    for step in built.values():
        for _ in range(warmup):
            step()
    samples = {name: [] for name in built}
    for _ in range(rounds):
        for name, step in built.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s)}
            for name, s in samples.items()}


def ratios(result):
    """Ratios to V0, and the pairs the targets are about (when both sides were measured)."""
    median = {name: r["median_s"] for name, r in result.items()}
    out = {name: t / median["V0"] for name, t in median.items()} if "V0" in median else {}
    for a, b in (("SR", "V1"), ("SS", "V1"), ("SR", "L"), ("SR", "V3"), ("L", "V3"), ("XS", "X1")):
        if a in median and b in median:
            out["{}/{}".format(a, b)] = median[a] / median[b]
    if {"SR", "L", "V0"} <= set(median):
        extra_read = median["L"] - median["V0"]
        out["(SR-V0)/(L-V0)"] = (median["SR"] - median["V0"]) / extra_read if extra_read > 0 else float("nan")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="session,function" if TF_VERSION >= (2, 0) else "session")
    parser.add_argument("--models", default="M1,M2")
    parser.add_argument("--variants", default=",".join(ORDER))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if TF_VERSION < (2, 0) and "function" in modes:
        parser.error("--modes function needs TF2; TF {} has Session mode only".format(TF_VERSION_STRING))
    if TF_VERSION < (2, 0):
        tf1.disable_eager_execution()

    report = {
        "tensorflow": TF_VERSION_STRING,
        "safegrad": safegrad.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "results": [],
    }
    print("safegrad {} step benchmark on TensorFlow {} (Python {}, {} CPUs); median of {} rounds x {} steps".format(
        safegrad.__version__, TF_VERSION_STRING, platform.python_version(), os.cpu_count(), args.rounds, args.steps))
    for model in args.models.split(","):
        spec = MODELS[model]()
        for mode in modes:
            result = measure(spec, mode, args.variants.split(","), args.rounds, args.steps, args.warmup)
            rel = ratios(result)
            report["results"].append({"model": model, "mode": mode, "times": result, "ratios": rel})
            print()
            print("{} ({}), {}:".format(model, spec["describe"], mode))
            print("  {:<4} {:>10} {:>8} {:>7}".format("", "ms/step", "x V0", "ops"))
            for name in ORDER + ["SI"]:
                if name in result:
                    print("  {:<4} {:>10.2f} {:>8.3f} {:>7d}".format(
                        name, 1e3 * result[name]["median_s"], rel.get(name, float("nan")), result[name]["ops"]))
            for key in ("SR/V1", "SS/V1", "SR/L", "SR/V3", "L/V3", "(SR-V0)/(L-V0)", "XS/X1"):
                if key in rel:
                    print("  {:<16} {:.3f}".format(key, rel[key]))
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    return report


if __name__ == "__main__":
    main()
