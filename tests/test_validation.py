"""Bad arguments fail when the call is made, naming the argument and echoing the value."""

import re

import numpy as np
import pytest

import safegrad
from safegrad._tf import tf, tf1

from helpers import TF2


@pytest.fixture
def setup(graph_mode):
    w = tf1.Variable([1.0, 2.0], name="w")
    loss = tf.reduce_sum(w * w)
    return tf1.train.GradientDescentOptimizer(0.1), loss, w


def ops_now():
    return len(tf1.get_default_graph().get_operations())


def refused_without_a_trace(error, message, call):
    """``call()`` raises ``error`` matching ``message`` and leaves no op in the graph."""
    before = ops_now()
    with pytest.raises(error, match=re.escape(message)):
        call()
    assert ops_now() == before, [op.name for op in tf1.get_default_graph().get_operations()[before:]]


STEP_CASES = [
    (dict(clip_norm=-1), ValueError, "`clip_norm` must be > 0 and finite. Received: clip_norm=-1"),
    (dict(clip_norm=0.0), ValueError, "Received: clip_norm=0.0"),
    (dict(clip_norm=float("inf")), ValueError, "Received: clip_norm=inf"),
    (dict(clip_norm=float("nan")), ValueError, "Received: clip_norm=nan"),
    (dict(clip_norm=1e300), ValueError, "`clip_norm` must be at most 3.4e38: norms are float32. Received: clip_norm=1e+300"),
    (dict(clip_norm="1.0"), TypeError, "`clip_norm` must be a number or a scalar tensor. Received: clip_norm='1.0'"),
    (dict(clip_norm=True), TypeError, "Received: clip_norm=True"),
    (dict(per_variable_clip_norm=-2), ValueError, "`per_variable_clip_norm` must be > 0 and finite. Received: per_variable_clip_norm=-2"),
    (dict(clip_value=(2.0, -2.0)), ValueError, "`clip_value` must have min <= max. Received: clip_value=(2.0, -2.0)"),
    (dict(clip_value=0), ValueError, "`clip_value` must be > 0"),
    (dict(clip_value=(1, 2, 3)), ValueError, "Received: clip_value=(1, 2, 3)"),
    (dict(clip_value=(float("nan"), 1.0)), ValueError, "`clip_value` must not be NaN"),
    (dict(on_nonfinite="skipp"), ValueError, "`on_nonfinite` must be one of 'raise', 'skip', 'ignore'. Received: on_nonfinite='skipp'"),
    (dict(on_nonfinite=None), ValueError, "Received: on_nonfinite=None"),
    (dict(on_nonfinite="skip", max_consecutive_skips=-1), ValueError, "`max_consecutive_skips` must be >= 0. Received: max_consecutive_skips=-1"),
    (dict(on_nonfinite="skip", max_consecutive_skips=1.5), TypeError, "Received: max_consecutive_skips=1.5"),
    (dict(max_consecutive_skips=3), ValueError, "only applies with on_nonfinite='skip'. Received: max_consecutive_skips=3, on_nonfinite='raise'"),
    (dict(name=3), TypeError, "`name` must be a string or None. Received: name=3"),
]


@pytest.mark.parametrize("kwargs, error, message", STEP_CASES, ids=[repr(c[0]) for c in STEP_CASES])
def test_clip_and_apply_arguments(setup, kwargs, error, message):
    optimizer, loss, w = setup
    refused_without_a_trace(error, message, lambda: safegrad.clip_and_apply(optimizer, loss, [w], **kwargs))


@pytest.mark.parametrize("kwargs, error, message", STEP_CASES, ids=[repr(c[0]) for c in STEP_CASES])
def test_safe_optimizer_arguments(kwargs, error, message):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=re.escape(message)):
        safegrad.SafeOptimizer(tf1.train.GradientDescentOptimizer(0.1), **kwargs)


def test_not_an_optimizer(setup):
    _, loss, w = setup
    refused_without_a_trace(
        TypeError, "Received: optimizer='adam' (a string; pass an optimizer object)",
        lambda: safegrad.clip_and_apply("adam", loss, [w]),
    )


def test_bad_loss_var_list_global_step(setup):
    optimizer, loss, w = setup
    cases = [
        (TypeError, "`loss` must be a scalar tensor or a zero-argument callable", lambda: safegrad.clip_and_apply(optimizer, 3.0, [w])),
        (TypeError, "(for gradients you already have, use safegrad.apply_gradients)", lambda: safegrad.clip_and_apply(optimizer, [loss], [w])),
        (ValueError, "`var_list` must not be empty. Received: var_list=[]", lambda: safegrad.clip_and_apply(optimizer, loss, [])),
        (TypeError, "`var_list[1]` must be a variable. Received: var_list[1]='b'", lambda: safegrad.clip_and_apply(optimizer, loss, [w, "b"])),
        (TypeError, "`var_list` must be a list of variables", lambda: safegrad.clip_and_apply(optimizer, loss, w)),
        (TypeError, "`global_step` must be an integer variable", lambda: safegrad.clip_and_apply(optimizer, loss, [w], global_step=w)),
        (TypeError, "`tape` must be the tf.GradientTape that recorded `loss`", lambda: safegrad.clip_and_apply(optimizer, loss, [w], tape="tape")),
    ]
    for error, message, call in cases:
        refused_without_a_trace(error, message, call)


def test_the_same_variable_twice_is_refused(setup):
    optimizer, loss, w = setup
    refused_without_a_trace(
        ValueError, "`var_list` lists the variable 'w' twice (at 0 and 1); it would be updated twice.",
        lambda: safegrad.clip_and_apply(optimizer, loss, [w, w]),
    )
    gradient = tf.constant([1.0, 1.0])
    safe = safegrad.SafeOptimizer(tf1.train.GradientDescentOptimizer(0.1))
    refused_without_a_trace(
        ValueError, "`grads_and_vars` lists the variable 'w' twice (at 0 and 1)",
        lambda: safe.apply_gradients([(gradient, w), (gradient, w)]),
    )


def test_only_integer_variables_is_a_clear_error(setup):
    optimizer, loss, _ = setup
    counter = tf1.Variable(0, name="counter")
    steps = tf1.Variable(0, dtype=tf.int64, name="steps")
    refused_without_a_trace(
        ValueError,
        "`var_list` has no floating-point variable, so no gradient can be computed: counter (int32), "
        "steps (int64). Received: var_list=[",
        lambda: safegrad.clip_and_apply(optimizer, loss, [counter, steps]),
    )


@pytest.mark.skipif(not TF2, reason="TF2 eager")
def test_callable_loss_with_tape_is_ambiguous():
    w = tf.Variable([1.0])
    with tf.GradientTape() as tape:
        pass
    with pytest.raises(ValueError, match="`tape` must be None"):
        safegrad.clip_and_apply(tf1.train.GradientDescentOptimizer(0.1), lambda: w * 2.0, [w], tape=tape)


@pytest.mark.skipif(not TF2, reason="TF2 eager")
def test_eager_tensor_loss_without_tape():
    w = tf.Variable([1.0])
    with pytest.raises(ValueError, match=re.escape("`loss` is a tensor but TensorFlow is executing eagerly")):
        safegrad.clip_and_apply(tf.keras.optimizers.SGD(0.1), tf.reduce_sum(w), [w])


def test_building_blocks_refuse_bad_input_without_a_trace(graph_mode):
    g = tf.constant([1.0])
    refused_without_a_trace(TypeError, "`grads[0]` must be a Tensor, IndexedSlices or None. Received: 'a'", lambda: safegrad.global_norm(["a"]))
    refused_without_a_trace(TypeError, "`grads[1]` must have a floating-point dtype. Received: dtype int64", lambda: safegrad.global_norm([[1.0], [2]]))
    refused_without_a_trace(TypeError, "`grads_and_vars[0][0]` must have a floating-point dtype", lambda: safegrad.assert_finite([(np.array([1]), None)]))
    with pytest.raises(TypeError, match=re.escape("`grads` must be a list of gradients")):
        safegrad.global_norm(g)
    with pytest.raises(TypeError, match=re.escape("`grads` must be a list of gradients")):
        safegrad.clip_by_global_norm({"a": g}, 1.0)
    with pytest.raises(ValueError, match=re.escape("Received: clip_norm=None")):
        safegrad.clip_by_global_norm([g], None)
    with pytest.raises(ValueError, match=re.escape("Received: clip_norm=-3")):
        safegrad.clip_by_global_norm([g], -3)
    with pytest.raises(ValueError, match=re.escape("`clip_norm` must be a scalar. Received: clip_norm with shape (2,)")):
        safegrad.clip_by_global_norm([g], tf.constant([1.0, 2.0]))
    with pytest.raises(ValueError, match=re.escape("needs `clip_norm` or `clip_value`")):
        safegrad.clip_per_variable([g])
    with pytest.raises(TypeError, match=re.escape("`grads[0]` must have a floating-point dtype. Received: dtype int32")):
        safegrad.clip_per_variable([tf.constant([1])], clip_norm=1.0)
    with pytest.raises(TypeError, match=re.escape("mixes (gradient, variable) pairs with bare gradients")):
        safegrad.global_norm([g, (g, None)])
    with pytest.raises(TypeError, match=re.escape("`message` must be a string or None. Received: message=5")):
        safegrad.assert_finite([g], message=5)


def test_runtime_clip_norm_checked_when_not_static(graph_mode):
    c = tf1.placeholder(tf.float32, [])
    clipped, _ = safegrad.clip_by_global_norm([tf.constant([3.0, 4.0])], c)
    np.testing.assert_allclose(graph_mode.sess.run(clipped[0], {c: 1.0}), [0.6, 0.8], rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`clip_norm` must be > 0"):
        graph_mode.sess.run(clipped[0], {c: 0.0})
