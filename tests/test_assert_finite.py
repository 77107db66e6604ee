"""assert_finite: names every offending variable and no other, in every execution mode."""


import numpy as np
import pytest

import safegrad
from safegrad._tf import tf, tf1

from helpers import named_in

NAN, INF = np.nan, np.inf


def guarded(grads_and_vars, message=None):
    """The documented pattern: make something depend on the check."""
    check = safegrad.assert_finite(grads_and_vars, message=message)
    with tf.control_dependencies([check] if check is not None else []):
        return tf.constant(1.0) * 1.0


def test_passes_when_finite(mode):
    w = mode.variable([1.0, 2.0], "w")
    run = mode.step(lambda g: guarded([(g, w)]), np.zeros(2, np.float32))
    assert run(np.array([1e30, -3.0], np.float32)) == 1.0


def test_names_every_offender_and_no_other(mode):
    names = ["layer{}/kernel".format(i) for i in range(12)]
    variables = [mode.variable(np.zeros(3), n.replace("/", "_")) for n in names]
    labels = [n.replace("/", "_") for n in names]

    def body(*grads):
        return guarded(list(zip(grads, variables)))

    grads = [np.ones(3, np.float32) for _ in variables]
    run = mode.step(body, *grads)
    assert run(*grads) == 1.0
    grads[3] = np.array([1.0, NAN, 2.0], np.float32)
    grads[7] = np.array([INF, 1.0, 2.0], np.float32)
    grads[10] = np.array([NAN, -INF, 2.0], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(*grads)
    assert named_in(info.value) == [
        labels[3] + " (NaN)",
        labels[7] + " (Inf)",
        labels[10] + " (NaN and Inf)",
    ]
    assert "safegrad: non-finite gradient for: {} (NaN)".format(labels[3]) in str(info.value)


def test_example_message(mode):
    w = mode.variable([1.0], "poisoned_weight")
    v = mode.variable([1.0], "healthy")
    run = mode.step(lambda a, b: guarded([(a, w), (b, v)]), np.ones(1, np.float32), np.ones(1, np.float32))
    expected = r"safegrad: non-finite gradient for: poisoned_weight \(NaN\)"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        run(np.array([NAN], np.float32), np.ones(1, np.float32))


def test_overflowing_squares_are_not_nonfinite(mode):
    w = mode.variable(np.zeros(1000), "w")
    run = mode.step(lambda g: guarded([(g, w)]), np.zeros(1000, np.float32))
    assert run(np.full(1000, 3e38, np.float32)) == 1.0


def test_sparse_gradient_checked_as_dense(mode):
    w = mode.variable(np.zeros([4, 2]), "embedding")

    def body(values):
        return guarded([(tf.IndexedSlices(values, tf.constant([1, 3]), tf.constant([4, 2])), w)])

    run = mode.step(body, np.zeros([2, 2], np.float32))
    assert run(np.ones([2, 2], np.float32)) == 1.0
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(np.array([[1.0, 1.0], [INF, 1.0]], np.float32))
    assert named_in(info.value) == ["embedding (Inf)"]


def test_none_gradients_ignored_and_all_none_is_noop(mode):
    w = mode.variable([1.0], "w")
    v = mode.variable([1.0], "v")
    assert mode.run(lambda: guarded([(None, w), (None, v)])) == 1.0
    run = mode.step(lambda g: guarded([(None, w), (g, v)]), np.ones(1, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(np.array([NAN], np.float32))
    assert named_in(info.value) == ["v (NaN)"]


def test_message_prefix_and_bare_gradient_list(mode):
    run = mode.step(lambda a, b: guarded([a, b], message="step 7:"), np.ones(1, np.float32), np.ones(1, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(np.ones(1, np.float32), np.array([INF], np.float32))
    assert "step 7: safegrad: non-finite gradient for: gradient #1 (Inf)" in str(info.value)


def test_duplicate_names_are_disambiguated(tf2_mode):
    a = tf.Variable([1.0])  # both named "Variable"
    b = tf.Variable([1.0])
    run = tf2_mode.step(lambda x, y: guarded([(x, a), (y, b)]), np.ones(1, np.float32), np.ones(1, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(np.ones(1, np.float32), np.array([NAN], np.float32))
    assert named_in(info.value) == ["Variable (#1) (NaN)"]


def test_eager_checks_at_once():
    if not tf.executing_eagerly():
        pytest.skip("TF2 eager only")
    w = tf.Variable([1.0], name="w")
    assert safegrad.assert_finite([(tf.constant([1.0]), w)]) is None
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        safegrad.assert_finite([(tf.constant([NAN]), w)])
    assert str(info.value.message) == "safegrad: non-finite gradient for: w (NaN)"


def test_graph_has_one_assert_op_whatever_the_variable_count(graph_mode):
    for count in (3, 40):
        with tf.Graph().as_default() as graph:
            variables = [tf1.Variable(np.zeros(2, np.float32), name="v{}".format(i)) for i in range(count)]
            grads = [tf.ones([2]) for _ in variables]
            safegrad.assert_finite(list(zip(grads, variables)))
            types = [op.type for op in graph.get_operations()]
        assert types.count("Assert") == 1
