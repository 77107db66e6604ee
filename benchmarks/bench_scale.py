"""Graph build time and op count of a training step as the number of variables grows.

For N small variables (shape [4]) it builds, in a fresh tf.compat.v1 graph, and (TF2) traces as
a ``tf.function``, the training step of plain SGD:

  V0  ``optimizer.minimize`` without clipping (the reference)
  V1  ``tf.clip_by_global_norm`` then ``apply_gradients``
  VC  the hand-written skip: V1 with the apply in ``tf.cond(is_finite(global_norm), ...)`` - what
      any step that decides in the graph whether to update costs to build
  VB  V1 plus a ``tf.cond`` branch that reads every gradient (one sum each) when the norm is not
      finite - the least a step that can name the non-finite gradients costs to build
  VD  VB's reading branch and VC's skip together: the apply in ``tf.cond`` on a predicate that
      waits for the reading branch - the least a step that can both skip and name the non-finite
      gradients (what SS does) costs to build
  SR  ``safegrad.clip_and_apply`` in raise mode
  SS  ``safegrad.clip_and_apply`` in skip mode

It reports seconds and ops, the ops added per variable over V0, the build ratios to V0, and (for
``tf.function``) how many times each step was traced on its first call. Every variant is first
built once at 50 variables (the first build of a process pays one-time costs: 1.2 x on V0's
trace), then in turn, in the order given by ``--order``, each size ``--repeats`` times (median:
with single builds, round 5 read TF 1.15's 3,000-variable SR and SS at 1.21 and 1.13 x V0 where
the 1,000- and 10,000-variable rows read 0.86-1.01).

Usage:  python benchmarks/bench_scale.py [--sizes 1000,3000,10000] [--repeats 3] [--json out.json]
"""

import argparse
import gc
import json
import statistics
import time

import numpy as np

import safegrad
from safegrad._tf import TF_VERSION, TF_VERSION_STRING, tf, tf1

KINDS = ("V0", "V1", "VB", "VC", "VD", "SR", "SS")
DEFAULT_ORDER = ("V0", "VB", "VC", "VD", "SR", "SS")  # V1: --order


def _hand_written(kind, optimizer, grads, variables):
    if kind == "V0":
        return optimizer.apply_gradients(zip(grads, variables))
    norm = tf.linalg.global_norm(grads)
    clipped, _ = tf.clip_by_global_norm(grads, 1.0, use_norm=norm)
    if kind == "V1":
        return optimizer.apply_gradients(zip(clipped, variables))
    finite = tf.math.is_finite(norm)
    if kind in ("VB", "VD"):
        read = tf.cond(finite, lambda: tf.constant(0.0), lambda: tf.add_n([tf.reduce_sum(g) for g in grads]))
        if kind == "VB":
            with tf.control_dependencies([read]):
                return optimizer.apply_gradients(zip(clipped, variables))
        finite = tf.math.is_finite(norm + read)  # (0.0 on a finite step: the decision waits for the read)

    def apply():
        with tf.control_dependencies([optimizer.apply_gradients(zip(clipped, variables))]):
            return tf.constant(True)

    return tf.cond(finite, apply, lambda: tf.constant(False))


def _graph_step(kind, variables, loss_fn):
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    if kind == "V0":
        return optimizer.minimize(loss_fn(), var_list=variables)
    if kind in ("V1", "VB", "VC", "VD"):
        return _hand_written(kind, optimizer, tf.gradients(loss_fn(), variables), variables)
    policy = {"SR": "raise", "SS": "skip"}[kind]
    return safegrad.clip_and_apply(optimizer, loss_fn(), variables, clip_norm=1.0, on_nonfinite=policy)


def graph_build(kind, count):
    """(seconds, ops, traces) to build the step in a fresh graph (traces: always 1)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf1.Variable(np.ones(4, np.float32), name="v{}".format(i)) for i in range(count)]
        x = tf.constant(np.ones(4, np.float32))
        loss_fn = lambda: tf.add_n([tf.reduce_sum(v * x) for v in variables])  # noqa: E731
        before = len(graph.get_operations())
        start = time.perf_counter()
        _graph_step(kind, variables, loss_fn)
        seconds = time.perf_counter() - start
        return seconds, len(graph.get_operations()) - before, 1


def function_trace(kind, count):
    """(seconds, ops, traces) of the first call's tracing of the step as a tf.function."""
    variables = [tf.Variable(np.ones(4, np.float32), name="v{}".format(i)) for i in range(count)]
    x = tf.constant(np.ones(4, np.float32))
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    policy = {"SR": "raise", "SS": "skip"}.get(kind)
    if policy:
        safegrad.step_state(optimizer)  # as documented: the counters exist before the first call
    traces = []

    def loss():
        return tf.add_n([tf.reduce_sum(v * x) for v in variables])

    def step():
        traces.append(1)
        if policy:
            safegrad.clip_and_apply(optimizer, loss, variables, clip_norm=1.0, on_nonfinite=policy)
            return
        with tf.GradientTape() as tape:
            value = loss()
        _hand_written(kind, optimizer, tape.gradient(value, variables), variables)

    start = time.perf_counter()
    concrete = tf.function(step).get_concrete_function()
    seconds = time.perf_counter() - start
    return seconds, len(concrete.graph.get_operations()), len(traces)


def timed(measure, kind, count):
    """``measure(kind, count)`` with the garbage of earlier builds collected first and the
    collector paused while it runs: a collection of a previous graph's objects is no part of
    this build's cost (without this, single builds varied by 30 %)."""
    gc.collect()
    gc.disable()
    try:
        return measure(kind, count)
    finally:
        gc.enable()


def summarize(mode, count, samples):
    """The report entry of one mode and size from ``samples`` (variant -> the (seconds, ops,
    traces) of each build): median seconds, ops, most traces, and the ratios to V0's median."""
    row = {kind: [statistics.median(r[0] for r in runs), runs[0][1], max(r[2] for r in runs)]
           for kind, runs in samples.items()}
    others = [k for k in samples if k != "V0"]
    return {"mode": mode, "variables": count, "build": row,
            "ratio_to_V0": {k: row[k][0] / row["V0"][0] for k in others},
            "ops_per_variable": {k: (row[k][1] - row["V0"][1]) / float(count) for k in others},
            "builds_s": {k: [r[0] for r in runs] for k, runs in samples.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,3000,10000")
    parser.add_argument("--modes", default="graph,function", help="graph and/or function (TF2)")
    parser.add_argument("--order", default=",".join(DEFAULT_ORDER), help="the variants, built in this order")
    parser.add_argument("--repeats", type=int, default=3, help="builds per variant and size (median)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1. Received: --repeats {}".format(args.repeats))
    if TF_VERSION < (2, 0):
        tf1.disable_eager_execution()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k for k in args.order.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or "V0" not in kinds:
        parser.error("--order must list V0 and only {}; received {}".format(", ".join(KINDS), args.order))
    wanted = args.modes.split(",")
    modes = [("graph", graph_build)] if "graph" in wanted else []
    if "function" in wanted and TF_VERSION >= (2, 0):
        modes.append(("function", function_trace))
    report = {"tensorflow": TF_VERSION_STRING, "safegrad": safegrad.__version__, "repeats": args.repeats,
              "results": []}
    print("safegrad {} build-scale benchmark on TensorFlow {}".format(safegrad.__version__, TF_VERSION_STRING))
    for mode, measure in modes:
        print("\n{}: seconds to build (median of {} builds), ops; ratios to V0 (build time); traces on the "
              "first call".format(mode, args.repeats))
        print("  {:>6} | ".format("vars") + " | ".join("{:>15}".format(k) for k in kinds)
              + " | " + " ".join("{:>6}".format(k + "/V0") for k in kinds if k != "V0") + " | traces")
        for kind in kinds:
            measure(kind, 50)  # warm-up, not reported
        for count in sizes:
            samples = {kind: [] for kind in kinds}
            for _ in range(args.repeats):
                for kind in kinds:
                    samples[kind].append(timed(measure, kind, count))
            entry = summarize(mode, count, samples)
            report["results"].append(entry)
            row, ratio = entry["build"], entry["ratio_to_V0"]
            print("  {:>6} | ".format(count)
                  + " | ".join("{:>6.2f}s {:>7d}".format(row[k][0], row[k][1]) for k in kinds)
                  + " | " + " ".join("{:>6.3f}".format(ratio[k]) for k in kinds if k != "V0")
                  + " | " + ",".join(str(row[k][2]) for k in kinds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    return report


if __name__ == "__main__":
    main()
