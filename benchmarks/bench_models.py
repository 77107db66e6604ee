"""Real models, loss scaling and observability: safegrad against what users write without it.

Like ``bench_step.py``: every variant of a case is built in ONE process, warmed up, and timed
round-robin; the median time per step over rounds gives the ratios.

Cases (``--cases``):
  LM   the legacy LSTM language model of ``examples/ptb_like_lm.py`` at the sizes of the PTB
       model's "small" configuration (vocabulary 10,000, 2 x 200 LSTM units unrolled 20 steps,
       batch 20, gradient descent at 1.0, max_grad_norm 5), fed and fetched as the PTB loop does
       (cost and final state every step):
         H   the original: ``tf.clip_by_global_norm(tf.gradients(cost, tvars), 5)`` +
             ``apply_gradients(global_step=...)``
         SR  the full migration, ``safegrad.clip_and_apply(..., global_step=...)``, raise mode
         SS  the same in skip mode with ``max_consecutive_skips=10`` (the example's migration)
       Session (TF 1.15 and 2.x) and tf.function (TF2: the same model, v1 optimizer).
  MLP  an MLP 784-512-512-10 with Adam, batch 128:
         H   hand-clipped: gradients, ``tf.clip_by_global_norm(grads, 1)``, ``apply_gradients``
         SR  ``safegrad.SafeOptimizer(adam, clip_norm=1.0)``, raise mode (the default)
         SS  the same in skip mode
         HR  the floor of any raise: H stopped by ``tf.debugging.check_numerics`` on the global norm
             (the cheapest hand-written check; it names no variable and counts nothing)
         HS  the floor of any skip: H with ``apply_gradients`` in a ``tf.cond`` on the global
             norm being finite (counts nothing)
       Session: ``tf.compat.v1.train.AdamOptimizer`` and ``SafeOptimizer.minimize``; tf.function:
       a Keras model, the Keras Adam and ``SafeOptimizer.apply_gradients``.
  FIX  the MLP's step at 8-4-4-2 units, next to no arithmetic: what each MLP variant costs per
       step whatever the model (its time beyond H, in microseconds; no target of its own), and
         SRn, SSn  SR, SS built without safegrad's ``StepState`` counters (patched out while they
                   are built, in this process only - an ablation): what the documented counters cost
  LSO  (tf.function, Keras's LossScaleOptimizer) the MLP 784-2048-2048-10 with Adam under the
       ``mixed_float16`` policy, batch 128:
         K   ``LossScaleOptimizer(Adam(global_clipnorm=1.0))``: Keras's own clipping
         S   ``safegrad.SafeOptimizer(LossScaleOptimizer(Adam()), clip_norm=1.0, on_nonfinite="skip")``
  OBS  the explain issue's additions on a healthy step, on the LM (Session: a
       MonitoredSession; tf.function) and the MLP (Keras ``fit``):
         B   safegrad in skip mode WITHOUT them: built with the step number (raise message),
             the skip log and the eager ``clip_ratio`` taken out (patched out of safegrad in
             this process only - an ablation), no hook, no callback
         E   safegrad in skip mode as shipped, with the ``safegrad`` logger at INFO and, in a
             Session, ``safegrad.ExplainHook``; in ``fit``, ``safegrad.ExplainCallback``

Every variant is built several times (``BUILD_FACTOR`` x ``--copies``: 15 builds of LM and LSO
steps and FIX's, 30 of the MLP's and OBS's by default), the copies interleaved, each copy's variants
in a rotated order (built and timed: H, SR, SS, then SR, SS, H, ...), and a variant's time
is the median over its copies of each copy's median: two builds of the SAME step differ by up to
8 % here (25 % on the few-ms MLP steps; where TensorFlow placed their buffers and threads; printed
as "builds spread", the first variant's slowest copy over its fastest), more than the 1-5 %
bounds. ``A/A`` is the noise a ratio is read against: the first variant's builds split in two
halves (even and odd builds), the median of one half over the other's (with 5 builds it read
1.02-1.04 on LM, LSO and OBS; with 10, 1.03-1.06 on the MLP). The MLP cases (a step takes a few
ms) time 8 x ``--steps`` steps per sample, FIX 64 x; OBS cases (a 1 % bound) take 2 x
``--rounds`` samples and 30 builds (with 15, TF 2.21's LM Session E/B read 1.0101 against an
A/A of 1.008; with 30, 1.005).

Usage:  python benchmarks/bench_models.py [--cases LM,MLP,FIX,LSO,OBS] [--rounds 9] [--copies 5]
                                          [--json out.json]
"""

import argparse
import collections
import contextlib
import json
import logging
import os
import platform
import statistics
import sys

import numpy as np

import safegrad
from safegrad._tf import TF_VERSION, TF_VERSION_STRING, tf, tf1

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import round_robin  # noqa: E402

VOCAB, HIDDEN, LAYERS, NUM_STEPS, BATCH, MAX_GRAD_NORM = 10000, 200, 2, 20, 20, 5.0

# --------------------------------------------------------------------------------------------
# The LSTM language model (the example's model, PTB "small" sizes)
# --------------------------------------------------------------------------------------------


def lm_weights():
    rng = np.random.RandomState(0)
    uniform = lambda *shape: rng.uniform(-0.1, 0.1, shape).astype(np.float32)  # noqa: E731
    weights = {"embedding": uniform(VOCAB, HIDDEN)}
    for layer in range(LAYERS):
        weights["lstm{}_kernel".format(layer)] = uniform(2 * HIDDEN, 4 * HIDDEN)
        weights["lstm{}_bias".format(layer)] = np.zeros(4 * HIDDEN, np.float32)
    weights["softmax_w"] = uniform(HIDDEN, VOCAB)
    weights["softmax_b"] = np.zeros(VOCAB, np.float32)
    return weights


def lm_batch():
    rng = np.random.RandomState(1)
    ids = rng.randint(0, VOCAB, (BATCH, NUM_STEPS + 1)).astype(np.int32)
    zero = np.zeros((LAYERS, 2, BATCH, HIDDEN), np.float32)
    return ids[:, :-1], ids[:, 1:], zero


def lm_cost(v, ids, targets, state):
    """The PTB model's forward pass: cost (summed over time, averaged over the batch), final state."""
    inputs = tf.nn.embedding_lookup(v["embedding"], ids)
    layers = [(state[k, 0], state[k, 1]) for k in range(LAYERS)]
    outputs = []
    for t in range(NUM_STEPS):
        x = inputs[:, t, :]
        for k in range(LAYERS):
            c, h = layers[k]
            i, j, f, o = tf.split(tf.matmul(tf.concat([x, h], 1), v["lstm{}_kernel".format(k)])
                                  + v["lstm{}_bias".format(k)], 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(j)
            h = tf.sigmoid(o) * tf.tanh(c)
            layers[k] = (c, h)
            x = h
        outputs.append(x)
    logits = tf.matmul(tf.reshape(tf.stack(outputs, axis=1), [-1, HIDDEN]), v["softmax_w"]) + v["softmax_b"]
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.reshape(targets, [-1]), logits=logits)
    return tf.reduce_sum(losses) / BATCH, tf.stack([tf.stack(layer) for layer in layers])


def _policy(variant):
    """safegrad's ``on_nonfinite`` for a variant: SR raises; SS (and OBS's B and E) skip."""
    return "raise" if variant == "SR" else "skip"


def _lm_migration(variant):
    """``clip_and_apply``'s arguments in the example's migration of the LM step."""
    policy = _policy(variant)
    return {"clip_norm": MAX_GRAD_NORM, "on_nonfinite": policy,
            "max_consecutive_skips": 10 if policy == "skip" else None}


def _lm_train_op(variant, cost, tvars, optimizer, global_step):
    if variant == "H":
        grads, _ = tf.clip_by_global_norm(tf.gradients(cost, tvars), MAX_GRAD_NORM)
        return optimizer.apply_gradients(zip(grads, tvars), global_step=global_step)
    return safegrad.clip_and_apply(optimizer, cost, tvars, global_step=global_step, **_lm_migration(variant))


class LMSession:
    """The PTB loop: placeholders fed each step, cost and final state fetched with the train op."""

    def __init__(self, variant, hook=False):
        self.graph = tf.Graph()
        with self.graph.as_default():
            ids = tf1.placeholder(tf.int32, [BATCH, NUM_STEPS])
            targets = tf1.placeholder(tf.int32, [BATCH, NUM_STEPS])
            state = tf1.placeholder(tf.float32, [LAYERS, 2, BATCH, HIDDEN])
            with tf1.variable_scope("Model"):
                v = {name: tf1.get_variable(name, initializer=value) for name, value in lm_weights().items()}
            cost, final = lm_cost(v, ids, targets, state)
            global_step = tf1.train.get_or_create_global_step()
            optimizer = tf1.train.GradientDescentOptimizer(1.0)
            train_op = _lm_train_op(variant, cost, tf1.trainable_variables(), optimizer, global_step)
            self.fetches = [train_op, cost, final]
            x, y, zero = lm_batch()
            self.feed = {ids: x, targets: y, state: zero}
            if hook:
                hooks = [safegrad.ExplainHook(train_op)] if variant == "E" else []
                self.sess = tf1.train.MonitoredSession(hooks=hooks)
            else:
                self.sess = tf1.Session(graph=self.graph)
                self.sess.run(tf1.global_variables_initializer())

    def __call__(self):
        self.sess.run(self.fetches, self.feed)


class LMFunction:
    """The same model and step migrated to a tf.function (TF2)."""

    def __init__(self, variant):
        v = {name: tf.Variable(value, name=name) for name, value in lm_weights().items()}
        tvars = list(v.values())
        optimizer = tf1.train.GradientDescentOptimizer(1.0)
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        if variant != "H":
            safegrad.step_state(optimizer)  # as documented: counters before the first call
        x, y, zero = (tf.constant(a) for a in lm_batch())
        self.traces = 0

        @tf.function
        def step(ids, targets, state):
            self.traces += 1
            if variant == "H":
                with tf.GradientTape() as tape:
                    cost, final = lm_cost(v, ids, targets, state)
                grads, _ = tf.clip_by_global_norm(tape.gradient(cost, tvars), MAX_GRAD_NORM)
                optimizer.apply_gradients(zip(grads, tvars), global_step=global_step)
                return cost, final
            out = {}

            def loss():
                out["cost"], out["final"] = lm_cost(v, ids, targets, state)
                return out["cost"]

            safegrad.clip_and_apply(optimizer, loss, tvars, global_step=global_step, **_lm_migration(variant))
            return out["cost"], out["final"]

        self.step, self.args = step, (x, y, zero)
        self()  # the first call: traced here (self.traces)

    def __call__(self):
        cost, final = self.step(*self.args)
        cost.numpy(), final.numpy()  # the PTB loop reads both each step


# --------------------------------------------------------------------------------------------
# MLPs
# --------------------------------------------------------------------------------------------


def mlp_data(sizes):
    rng = np.random.RandomState(2)
    x = rng.rand(128, sizes[0]).astype(np.float32)
    y = np.eye(sizes[-1], dtype=np.float32)[rng.randint(0, sizes[-1], 128)]
    return x, y


def mlp_weights(sizes):
    rng = np.random.RandomState(3)
    out = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        out += [(rng.randn(a, b) * np.sqrt(2.0 / a)).astype(np.float32), np.zeros(b, np.float32)]
    return out


MLP_SIZES = [784, 512, 512, 10]
FIX_SIZES = [8, 4, 4, 2]  # (FIX: the MLP's step with next to no arithmetic, its fixed cost)
LSO_SIZES = [784, 2048, 2048, 10]


HAND_CLIPPED = ("H", "HR", "HS")


def _hand_clipped_apply(variant, norm, apply):
    """H's ``apply()``; HR: after a check of ``norm``; HS: only when ``norm`` is finite."""
    if variant == "HR":
        with tf.control_dependencies([tf.debugging.check_numerics(norm, "non-finite gradient")]):
            return apply()
    if variant == "HS":
        def applied():
            with tf.control_dependencies([apply()]):
                return tf.constant(True)

        return tf.cond(tf.math.is_finite(norm), applied, lambda: tf.constant(False))
    return apply()


class MLPSession:
    def __init__(self, variant, sizes=MLP_SIZES):
        self.graph = tf.Graph()
        with self.graph.as_default():
            x, y = mlp_data(sizes)
            weights = [tf1.Variable(w, name="w{}".format(i)) for i, w in enumerate(mlp_weights(sizes))]
            h = tf.constant(x)
            for i in range(0, len(weights), 2):
                h = tf.matmul(h, weights[i]) + weights[i + 1]
                h = tf.nn.relu(h) if i + 2 < len(weights) else h
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=h))
            global_step = tf1.train.get_or_create_global_step()
            adam = tf1.train.AdamOptimizer(1e-3)
            if variant in HAND_CLIPPED:
                grads, norm = tf.clip_by_global_norm(tf.gradients(loss, weights), 1.0)
                self.op = _hand_clipped_apply(variant, norm, lambda: adam.apply_gradients(
                    zip(grads, weights), global_step=global_step))
            else:
                optimizer = safegrad.SafeOptimizer(adam, clip_norm=1.0, on_nonfinite=_policy(variant))
                self.op = optimizer.minimize(loss, global_step=global_step, var_list=weights)
            self.fetches = [self.op, loss]
            self.sess = tf1.Session(graph=self.graph)
            self.sess.run(tf1.global_variables_initializer())

    def __call__(self):
        self.sess.run(self.fetches)


def keras_mlp(sizes, dtype=None):
    keras = tf.keras
    layers = [keras.layers.Dense(sizes[1], activation="relu", input_shape=(sizes[0],), dtype=dtype)]
    layers += [keras.layers.Dense(n, activation="relu", dtype=dtype) for n in sizes[2:-1]]
    layers += [keras.layers.Dense(sizes[-1], dtype=dtype)]
    model = keras.Sequential(layers)
    for variable, value in zip(model.weights, mlp_weights(sizes)):
        variable.assign(value)
    return model


def _xent(y, logits):
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=tf.cast(logits, tf.float32)))


class MLPFunction:
    def __init__(self, variant, sizes=MLP_SIZES):
        model = keras_mlp(sizes)
        x, y = (tf.constant(a) for a in mlp_data(sizes))
        adam = tf.keras.optimizers.Adam(1e-3)
        if variant in HAND_CLIPPED:
            optimizer = adam
        else:
            optimizer = safegrad.SafeOptimizer(adam, clip_norm=1.0, on_nonfinite=_policy(variant))
        variables = model.trainable_variables
        self.traces = 0

        @tf.function
        def step():
            self.traces += 1
            with tf.GradientTape() as tape:
                loss = _xent(y, model(x))
            grads = tape.gradient(loss, variables)
            if variant in HAND_CLIPPED:
                grads, norm = tf.clip_by_global_norm(grads, 1.0)
                _hand_clipped_apply(variant, norm, lambda: optimizer.apply_gradients(zip(grads, variables)))
            else:
                optimizer.apply_gradients(zip(grads, variables))
            return loss

        self.step = step
        self()  # the first call: traced here (self.traces)

    def __call__(self):
        self.step().numpy()


class LSOFunction:
    """Keras's LossScaleOptimizer under mixed_float16: Keras's own clipping or safegrad's."""

    def __init__(self, variant):
        keras = tf.keras
        model = keras_mlp(LSO_SIZES, dtype="mixed_float16")
        x, y = (tf.constant(a) for a in mlp_data(LSO_SIZES))
        if variant == "K":
            optimizer = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(1e-4, global_clipnorm=1.0))
        else:
            optimizer = safegrad.SafeOptimizer(
                keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(1e-4)),
                clip_norm=1.0, on_nonfinite="skip",
            )
        variables = model.trainable_variables
        scale = optimizer.scale_loss if hasattr(optimizer, "scale_loss") else optimizer.get_scaled_loss

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = _xent(y, model(x))
                scaled = scale(loss)
            grads = tape.gradient(scaled, variables)
            if not hasattr(optimizer, "scale_loss"):  # Keras 2: the custom loop unscales
                grads = optimizer.get_unscaled_gradients(grads)
            optimizer.apply_gradients(zip(grads, variables))
            return loss

        self.step = step

    def __call__(self):
        self.step().numpy()


class MLPFit:
    """One ``fit`` epoch of 20 batches (SafeOptimizer skip mode), with or without ExplainCallback."""

    def __init__(self, variant):
        model = keras_mlp(MLP_SIZES)
        x, y = mlp_data(MLP_SIZES)
        with _ablated() if variant == "B" else contextlib.nullcontext():
            model.compile(optimizer=safegrad.SafeOptimizer(tf.keras.optimizers.Adam(1e-3), clip_norm=1.0,
                                                           on_nonfinite="skip"),
                          loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))
            self.data = tf.data.Dataset.from_tensor_slices((x, y)).repeat(20).batch(128).cache()
            self.callbacks = [safegrad.ExplainCallback()] if variant == "E" else []
            self.model = model
            self()  # the train function is built and traced here, ablated for B

    def __call__(self):
        self.model.fit(self.data, epochs=1, verbose=0, callbacks=self.callbacks)


# --------------------------------------------------------------------------------------------
# The ablation: safegrad without the explain issue's per-step additions
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _ablated():
    """safegrad as before the explain issue, while steps are built: no step number in the error
    message, no skip log, no eager ``clip_ratio`` (a benchmark-only patch of safegrad's internals)."""
    from safegrad import _safe_apply, _state

    saved = (_safe_apply._where, _safe_apply.log_skipped_step, _safe_apply.inspect_gradients,
             _state.StepState.record_applied)

    def inspect(values, **kwargs):
        kwargs["step_number"] = None
        return saved[2](values, **kwargs)

    def record_applied(self, global_norm, clipped, reset_streak, clip_ratio=None):
        kept, self.clip_ratio = self.clip_ratio, None
        try:
            return saved[3](self, global_norm, clipped, reset_streak)
        finally:
            self.clip_ratio = kept

    _safe_apply._where = lambda step: tf.constant("")
    _safe_apply.log_skipped_step = lambda *args, **kwargs: []
    _safe_apply.inspect_gradients = inspect
    _state.StepState.record_applied = record_applied
    try:
        yield
    finally:
        (_safe_apply._where, _safe_apply.log_skipped_step, _safe_apply.inspect_gradients,
         _state.StepState.record_applied) = saved


@contextlib.contextmanager
def _without_counters():
    """safegrad with its ``StepState`` counters never updated (an ablation of the steps built
    meanwhile, in this process only): what the documented counters cost a step."""
    from safegrad import _state

    saved = _state.StepState.record_applied, _state.StepState.record_skipped
    _state.StepState.record_applied = _state.StepState.record_skipped = lambda self, *args, **kwargs: []
    try:
        yield
    finally:
        _state.StepState.record_applied, _state.StepState.record_skipped = saved


class FixedCost:
    """FIX: the MLP step at FIX_SIZES; SRn/SSn: SR/SS built without the counters."""

    def __init__(self, build, variant):
        with _without_counters() if variant.endswith("n") else contextlib.nullcontext():
            self.step = build(variant.rstrip("n"), FIX_SIZES)
        self.sess, self.fetches = getattr(self.step, "sess", None), getattr(self.step, "fetches", None)

    def __call__(self):
        self.step()


class Observed:
    """OBS: a step built ablated (B) or as shipped (E); built and traced here."""

    def __init__(self, build, variant):
        with _ablated() if variant == "B" else contextlib.nullcontext():
            self.step = build()
            self.step()

    def __call__(self):
        self.step()


# --------------------------------------------------------------------------------------------


FIX_VARIANTS = ("H", "SR", "SS", "HR", "HS", "SRn", "SSn")
# Builds of each variant: --copies x this (see the module docstring). (FIX's steps do next to no
# arithmetic, yet 5 of their builds spread 1.2 x on TF 2.21; OBS: its bound is 1 %.)
BUILD_FACTOR = {"LM": 3, "MLP": 6, "FIX": 3, "LSO": 3, "OBS": 6}


def cases():
    tf2 = TF_VERSION >= (2, 0)
    out = [
        ("LM", "session", ("H", "SR", "SS"), lambda v: LMSession(v)),
        ("MLP", "session", ("H", "SR", "SS", "HR", "HS"), lambda v: MLPSession(v)),
        ("OBS", "LM session", ("B", "E"), lambda v: Observed(lambda: LMSession(v, hook=True), v)),
        ("FIX", "session", FIX_VARIANTS, lambda v: FixedCost(MLPSession, v)),
    ]
    if tf2:
        out[2:2] = [
            ("LM", "function", ("H", "SR", "SS"), lambda v: LMFunction(v)),
            ("MLP", "function", ("H", "SR", "SS", "HR", "HS"), lambda v: MLPFunction(v)),
            ("LSO", "function", ("K", "S"), lambda v: LSOFunction(v)),
        ]
        out.append(("FIX", "function", FIX_VARIANTS, lambda v: FixedCost(MLPFunction, v)))
        out += [
            ("OBS", "LM function", ("B", "E"), lambda v: Observed(lambda: LMFunction("SS"), v)),
            ("OBS", "MLP fit", ("B", "E"), lambda v: MLPFit(v)),
        ]
    return out


def executed_ops(step):
    """Op type -> times it ran in one call of ``step`` (a built variant), or None where it cannot
    be counted: a Session step is run once traced (``FULL_TRACE``: every op that ran, inside
    function calls too). Counted, not timed: it tells deterministically what a variant runs
    beyond another. (A ``tf.function`` step is not counted: the profiler's trace of a call mixes
    the thread pool's own events with the kernels', differently from run to run.)"""
    if not isinstance(getattr(step, "sess", None), tf1.Session):
        return None
    counts = collections.Counter()
    metadata = tf1.RunMetadata()
    step.sess.run(step.fetches, getattr(step, "feed", None),
                  options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE), run_metadata=metadata)
    for device in metadata.step_stats.dev_stats:
        if "/device:" not in device.device:  # (TF 1.15 adds the host's trace events: not ops)
            continue
        for node in device.node_stats:  # (labels are "name = Type(inputs)")
            label = node.timeline_label
            counts[label.split(" = ")[1].split("(")[0] if " = " in label else node.node_name] += 1
    return dict(counts)


def ops_beyond(ops, base):
    """``ops`` minus ``base`` by op type: only the types that differ, in name order."""
    diff = {k: ops.get(k, 0) - base.get(k, 0) for k in sorted(set(ops) | set(base))}
    return {k: d for k, d in diff.items() if d}


def rotated(variants, copy):
    """``variants`` rotated left by ``copy`` places: the order copy number ``copy`` is built and
    timed in."""
    k = copy % len(variants)
    return tuple(variants[k:]) + tuple(variants[:k])


def a_a(copies):
    """The A/A ratio of a variant's builds: the median of its even-numbered builds against that of
    its odd-numbered ones (larger over smaller) - how far apart two medians over builds of the SAME
    step fall, with half as many builds each as a ratio's medians have. 1.0 for a single build."""
    if len(copies) < 2:
        return 1.0
    halves = statistics.median(copies[0::2]), statistics.median(copies[1::2])
    return max(halves) / min(halves)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="LM,MLP,FIX,LSO,OBS")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--copies", type=int, default=5, help="builds of each variant")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.copies < 1:
        parser.error("--copies must be >= 1 (builds of each variant); received {}".format(args.copies))
    if TF_VERSION < (2, 0):
        tf1.disable_eager_execution()
    logging.getLogger("safegrad").setLevel(logging.INFO)  # E variants: the logger on (B builds none)
    wanted = args.cases.split(",")
    report = {"tensorflow": TF_VERSION_STRING, "safegrad": safegrad.__version__,
              "python": platform.python_version(), "results": []}
    print("safegrad {} model benchmark on TensorFlow {} (Python {}); median of {} rounds x {} steps".format(
        safegrad.__version__, TF_VERSION_STRING, platform.python_version(), args.rounds, args.steps))
    for case, mode, variants, make in cases():
        if case not in wanted:
            continue
        # (copies interleaved: H, SR, SS, SR, SS, H, ... - no variant is built all first or last)
        # (a few ms per MLP step: more steps per sample, so each sample lasts tens of ms, and more
        # builds, their spread being what limits the ratio's resolution)
        copies = args.copies * BUILD_FACTOR[case]
        # (each copy's variants in a rotated order, which is also the order they are timed in: no
        # variant is always built, or timed, first in its copy)
        built = {(v, c): make(v) for c in range(copies) for v in rotated(variants, c)}
        steps = args.steps * (8 if case == "MLP" else 64 if case == "FIX" else 1)
        rounds = args.rounds * (2 if case == "OBS" else 1)  # a 1 % bound: more samples
        timed = round_robin(built, rounds, steps, args.warmup)
        times = {}
        for v in variants:
            each = [timed[v, c]["median_s"] for c in range(copies)]
            times[v] = {"median_s": statistics.median(each), "copies_s": each}
            if hasattr(built[v, 0], "traces"):  # tf.function steps: traces of the first call
                times[v]["traces"] = max(built[v, c].traces for c in range(copies))
        median = {v: t["median_s"] for v, t in times.items()}
        ratios = {"{}/{}".format(v, variants[0]): median[v] / median[variants[0]] for v in variants[1:]}
        base = times[variants[0]]["copies_s"]
        spread = max(base) / min(base)  # the same step built again: the noise of one build
        aa = a_a(base)
        # (after the timing: a traced run is slower and must not be among the samples)
        ops = {v: executed_ops(built[v, 0]) for v in variants} if case in ("MLP", "FIX") else {}
        entry = {"case": case, "mode": mode, "times": times, "ratios": ratios, "aa": aa, "spread": spread}
        if ops and all(o is not None for o in ops.values()):
            entry["ops_run"] = {v: sum(o.values()) for v, o in ops.items()}
            entry["ops_beyond_first"] = {v: ops_beyond(ops[v], ops[variants[0]]) for v in variants[1:]}
        report["results"].append(entry)
        print("\n{} ({}): ".format(case, mode) + "  ".join(
            "{} {:.2f} ms".format(v, 1e3 * median[v]) for v in variants)
            + "  |  " + "  ".join("{} {:.3f}".format(k, r) for k, r in ratios.items())
            + "  |  A/A {:.3f} (builds spread {:.3f})".format(aa, spread)
            + ("  |  traces " + " ".join("{} {}".format(v, t["traces"]) for v, t in times.items())
               if all("traces" in t for t in times.values()) else ""))
        if case == "FIX":
            print("  per step beyond {}: ".format(variants[0]) + "  ".join(
                "{} {:+.0f} us".format(v, 1e6 * (median[v] - median[variants[0]])) for v in variants[1:]))
        if "ops_run" in entry:
            print("  ops run in one step: " + "  ".join("{} {}".format(v, n) for v, n in entry["ops_run"].items()))
            for v, diff in entry["ops_beyond_first"].items():
                print("  {} beyond {}: {}".format(v, variants[0], ", ".join(
                    "{} {:+d}".format(k, d) for k, d in diff.items()) or "nothing"))
        sys.stdout.flush()
        del built
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    return report


if __name__ == "__main__":
    main()
