"""The finite check is O(1) on the success path: counted in executed ops, not timed.

A traced ``Session.run`` reports every op that actually ran (inside function calls too). On a
finite step, safegrad runs no per-variable NaN/Inf test at all - two IsFinite on scalars and (raise
mode) one Assert - however many variables there are; the diagnosis (segment reductions over all
gradients, NaN/Inf flags, the names) runs only when the step is non-finite. A Session step does
not even call the diagnosis ``If``; a ``tf.function`` step calls it once and runs only its
healthy branch (traced the same way, by calling the function from a Session graph).
(Timings live in benchmarks/, not in unit tests.)
"""

import collections

import numpy as np
import pytest

import safegrad
from safegrad._tf import TF_VERSION, tf, tf1

CHECK_OPS = ("IsFinite", "IsNan", "IsInf", "All", "Assert", "UnsortedSegmentMin", "UnsortedSegmentMax",
             "StringJoin", "AsString", "If", "StatelessIf")
# (the error message's string ops, too, run only on the diagnosis path)
QUIET = {"IsFinite": 2, "IsNan": 0, "IsInf": 0, "All": 0, "UnsortedSegmentMin": 0, "UnsortedSegmentMax": 0,
         "StringJoin": 0, "AsString": 0, "If": 0, "StatelessIf": 0}


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
    assert executed == dict(QUIET, Assert=1)
    assert [op.type for op in graph.get_operations()].count("Assert") == 1


@pytest.mark.parametrize("count", [10, 80])
def test_skip_mode_diagnoses_only_on_failure(count):
    _, sess, train_op, xs = _build(count, "skip")
    with sess:
        healthy = _executed(sess, train_op, xs, poison=False)
        poisoned = _executed(sess, train_op, xs, poison=True)
    assert healthy == dict(QUIET, Assert=0)
    # The failure branch diagnoses every gradient at once, in one function call: segment
    # reductions and NaN/Inf flags.
    assert poisoned["UnsortedSegmentMin"] >= 1 and poisoned["UnsortedSegmentMax"] >= 3
    assert poisoned["IsNan"] >= 1 and poisoned["IsInf"] >= 1
    assert poisoned["If"] + poisoned["StatelessIf"] == 1


@pytest.mark.skipif(TF_VERSION < (2, 0), reason="tf.function needs TF2")
@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_a_tf_function_step_diagnoses_only_on_failure(on_nonfinite):
    # (a tf.function builds its conds differently from a Session graph: the If alone, called on
    # every step, whose untaken diagnosis branch runs nothing)
    graph = tf.Graph()
    with graph.as_default():
        xs = [tf1.placeholder(tf.float32, [4]) for _ in range(10)]
        ws = [tf.Variable(np.ones(4, np.float32), name="w{}".format(i)) for i in range(10)]
        optimizer = tf1.train.GradientDescentOptimizer(0.1)
        safegrad.step_state(optimizer)

        @tf.function
        def step(*inputs):
            def loss():
                return tf.add_n([tf.reduce_sum(w * x) for w, x in zip(ws, inputs)])

            safegrad.clip_and_apply(optimizer, loss, ws, clip_norm=1.0, on_nonfinite=on_nonfinite)
            return tf.constant(0)

        train_op = step(*xs)
        sess = tf1.Session(graph=graph)
        sess.run(tf1.global_variables_initializer())
    with sess:
        healthy = _executed(sess, train_op, xs, poison=False)
        calls = healthy.pop("If") + healthy.pop("StatelessIf")
        assert calls == 1
        quiet = {op: n for op, n in QUIET.items() if op not in ("If", "StatelessIf")}
        assert healthy == dict(quiet, Assert=1 if on_nonfinite == "raise" else 0)
        if on_nonfinite == "raise":
            with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite gradient for: w1 \\(NaN\\)"):
                _executed(sess, train_op, xs, poison=True)
            return
        poisoned = _executed(sess, train_op, xs, poison=True)
    assert poisoned["UnsortedSegmentMin"] >= 1 and poisoned["IsNan"] >= 1
    assert poisoned["If"] + poisoned["StatelessIf"] == 1


def test_raise_mode_builds_its_error_message_only_for_a_failing_step():
    _, sess, train_op, xs = _build(10, "raise")
    feed = {x: np.ones(4, np.float32) for x in xs}
    feed[xs[1]] = np.array([np.nan, 1.0, 1.0, 1.0], np.float32)
    with sess:
        assert _executed(sess, train_op, xs, poison=False)["StringJoin"] == 0
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            sess.run(train_op, feed)
    # the message the diagnosis branch built: the variable, its NaN, this step's number (the
    # second step: 1), how to find the cause
    assert "safegrad: non-finite gradient for: w1 (NaN); at safegrad step 1" in str(raised.value)
    assert "safegrad.explain_session" in str(raised.value)


def test_assert_finite_builds_its_message_only_for_a_failing_check():
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [3])
        v = tf1.Variable(np.ones(3, np.float32), name="v")
        check = safegrad.assert_finite(list(zip(tf.gradients(tf.reduce_sum(v * x), [v]), [v])), message="epoch 3:")
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            metadata = tf1.RunMetadata()
            sess.run(check, {x: np.ones(3)}, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE),
                     run_metadata=metadata)
            labels = [n.timeline_label for d in metadata.step_stats.dev_stats for n in d.node_stats]
            assert not [label for label in labels if "StringJoin" in label]
            assert [label for label in labels if "Assert" in label]  # (the trace does list ops)
            with pytest.raises(tf.errors.InvalidArgumentError, match="epoch 3: safegrad: non-finite gradient for: v"):
                sess.run(check, {x: [1.0, np.inf, 1.0]})


def test_graph_grows_linearly_with_a_small_constant_per_variable():
    sizes = {}
    for count in (10, 110):
        graph, sess, _, _ = _build(count, "raise")
        sess.close()
        sizes[count] = len(graph.get_operations())
    per_variable = (sizes[110] - sizes[10]) / 100.0
    # model (Variable, read, mul, sum, ...), its gradient, the SGD update, and safegrad's share:
    # one l2_loss plus one capture; measured 16 ops per variable in all on TF 2.21.
    assert per_variable <= 20, per_variable
