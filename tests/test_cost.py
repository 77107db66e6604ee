"""The finite check is O(1) on the success path: counted in executed ops, not timed.

A traced ``Session.run`` reports every op that actually ran. On a finite step, safegrad runs no
per-variable NaN/Inf test at all - two IsFinite on scalars and (raise mode) one Assert - however
many variables there are; the per-variable diagnosis runs only when the step is non-finite.
(Timings live in benchmarks/, not in unit tests.)
"""

import collections

import numpy as np
import pytest

import safegrad
from safegrad._compat import tf, tf1

CHECK_OPS = ("IsFinite", "IsNan", "IsInf", "All", "Any", "Assert")


def _build(count, on_nonfinite):
    graph = tf.Graph()
    with graph.as_default():
        xs = [tf1.placeholder(tf.float32, [4]) for _ in range(count)]
        ws = [tf1.Variable(np.ones(4, np.float32), name="w{}".format(i)) for i in range(count)]
        loss = tf.add_n([tf.reduce_sum(w * x) for w, x in zip(ws, xs)])
        train_op = safegrad.clip_and_apply(
            tf1.train.GradientDescentOptimizer(0.1), loss, clip_norm=1.0, on_nonfinite=on_nonfinite
        )
        sess = tf1.Session(graph=graph)
        sess.run(tf1.global_variables_initializer())
    return graph, sess, train_op, xs


def _executed(sess, train_op, xs, poison):
    feed = {x: np.ones(4, np.float32) for x in xs}
    if poison:
        feed[xs[1]] = np.array([np.nan, 1.0, 1.0, 1.0], np.float32)
    metadata = tf1.RunMetadata()
    sess.run(train_op, feed, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE), run_metadata=metadata)
    counts = collections.Counter()
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            label = node.timeline_label
            counts[label.split(" = ")[1].split("(")[0] if " = " in label else node.node_name] += 1
    return {op: counts.get(op, 0) for op in CHECK_OPS}


@pytest.mark.parametrize("count", [10, 80])
def test_raise_mode_success_path_runs_a_constant_number_of_check_ops(count):
    graph, sess, train_op, xs = _build(count, "raise")
    with sess:
        executed = _executed(sess, train_op, xs, poison=False)
    assert executed == {"IsFinite": 2, "IsNan": 0, "IsInf": 0, "All": 0, "Any": 0, "Assert": 1}
    assert [op.type for op in graph.get_operations()].count("Assert") == 1


@pytest.mark.parametrize("count", [10, 80])
def test_skip_mode_diagnoses_only_on_failure(count):
    _, sess, train_op, xs = _build(count, "skip")
    with sess:
        healthy = _executed(sess, train_op, xs, poison=False)
        poisoned = _executed(sess, train_op, xs, poison=True)
    assert healthy == {"IsFinite": 2, "IsNan": 0, "IsInf": 0, "All": 0, "Any": 0, "Assert": 0}
    # The failure branch does look at every gradient: one finiteness test per variable.
    assert poisoned["IsFinite"] >= count and poisoned["All"] >= count
