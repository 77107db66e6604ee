"""Graph build time and op count of clip_and_apply as the number of variables grows.

For N small variables (shape [4]) it builds, in a fresh tf.compat.v1 graph, the training step of
plain SGD without clipping (V0), with tf.clip_by_global_norm (V1), and with safegrad's
clip_and_apply in raise and skip mode; and (TF2) traces the same as a tf.function. It reports
seconds and ops, and the ops added per variable over V0 - constant per variable means linear.

Usage:  python benchmarks/bench_scale.py [--sizes 100,1000,3000,10000] [--json out.json]
"""

import argparse
import json
import time

import numpy as np

import safegrad
from safegrad._tf import TF_VERSION, TF_VERSION_STRING, tf, tf1


def _step(kind, variables, loss_fn):
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    if kind == "V0":
        return optimizer.minimize(loss_fn(), var_list=variables)
    if kind == "V1":
        grads = tf.gradients(loss_fn(), variables)
        clipped, _ = tf.clip_by_global_norm(grads, 1.0)
        return optimizer.apply_gradients(zip(clipped, variables))
    policy = {"SR": "raise", "SS": "skip"}[kind]
    return safegrad.clip_and_apply(optimizer, loss_fn(), variables, clip_norm=1.0, on_nonfinite=policy)


def graph_build(kind, count):
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf1.Variable(np.ones(4, np.float32), name="v{}".format(i)) for i in range(count)]
        x = tf.constant(np.ones(4, np.float32))
        loss_fn = lambda: tf.add_n([tf.reduce_sum(v * x) for v in variables])  # noqa: E731
        before = len(graph.get_operations())
        start = time.perf_counter()
        _step(kind, variables, loss_fn)
        seconds = time.perf_counter() - start
        return seconds, len(graph.get_operations()) - before


def function_trace(kind, count):
    variables = [tf.Variable(np.ones(4, np.float32), name="v{}".format(i)) for i in range(count)]
    x = tf.constant(np.ones(4, np.float32))
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    policy = {"SR": "raise", "SS": "skip"}.get(kind)

    def loss():
        return tf.add_n([tf.reduce_sum(v * x) for v in variables])

    def step():
        if policy:
            safegrad.clip_and_apply(optimizer, loss, variables, clip_norm=1.0, on_nonfinite=policy)
            return
        with tf.GradientTape() as tape:
            value = loss()
        grads = tape.gradient(value, variables)
        if kind == "V1":
            grads, _ = tf.clip_by_global_norm(grads, 1.0)
        optimizer.apply_gradients(zip(grads, variables))

    start = time.perf_counter()
    concrete = tf.function(step).get_concrete_function()
    seconds = time.perf_counter() - start
    return seconds, len(concrete.graph.get_operations())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,3000,10000")
    parser.add_argument("--modes", default="graph,function", help="graph and/or function (TF2)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if TF_VERSION < (2, 0):
        tf1.disable_eager_execution()
    sizes = [int(s) for s in args.sizes.split(",")]
    wanted = args.modes.split(",")
    modes = [("graph", graph_build)] if "graph" in wanted else []
    if "function" in wanted and TF_VERSION >= (2, 0):
        modes.append(("function", function_trace))
    report = {"tensorflow": TF_VERSION_STRING, "safegrad": safegrad.__version__, "results": []}
    print("safegrad {} build-scale benchmark on TensorFlow {}".format(safegrad.__version__, TF_VERSION_STRING))
    for mode, measure in modes:
        print("\n{}: seconds to build / ops, and safegrad ops per variable over V0".format(mode))
        print("  {:>6} | {:>13} | {:>13} | {:>13} | {:>13} | {:>8} {:>8}".format(
            "vars", "V0", "V1", "SR (raise)", "SS (skip)", "SR-V0/N", "SS-V0/N"))
        for count in sizes:
            row = {kind: measure(kind, count) for kind in ("V0", "V1", "SR", "SS")}
            per_var = {k: (row[k][1] - row["V0"][1]) / float(count) for k in ("SR", "SS")}
            report["results"].append({"mode": mode, "variables": count, "build": row, "ops_per_variable": per_var})
            cells = "{:>6.2f}s {:>6d} | " * 4
            print(("  {:>6} | " + cells + "{:>8.2f} {:>8.2f}").format(
                count, *(row["V0"] + row["V1"] + row["SR"] + row["SS"]), per_var["SR"], per_var["SS"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    return report


if __name__ == "__main__":
    main()
