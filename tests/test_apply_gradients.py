"""safegrad.apply_gradients: clip_and_apply's semantics for gradients you already have, in every
mode and with every optimizer API; and what SafeOptimizer.apply_gradients returns per API."""

import re

import numpy as np
import pytest

import safegrad
from safegrad._adapters import Keras2OptimizerAdapter, Keras3OptimizerAdapter, adapter_for
from safegrad._tf import tf, tf1

from helpers import OPTIMIZERS, TF2, LinearModel, make_optimizer, named_in, optimizer_variables, snapshot

X = np.array([3.0, 0.0, 4.0], np.float32)
Y = np.array([12.0], np.float32)  # |(X, Y)| = 13
SGDS = [n for n in OPTIMIZERS if n.endswith("-sgd")]
RETURN_ITERATIONS = (Keras2OptimizerAdapter, Keras3OptimizerAdapter)


def step(mode, model, optimizer, **kwargs):
    """``run(gx, gy)``: one ``apply_gradients`` with the given gradients for w and b."""
    return mode.step(
        lambda gx, gy: safegrad.apply_gradients(optimizer, [(gx, model.w), (gy, model.b)], **kwargs),
        X, Y,
    )


@pytest.mark.parametrize("opt_name", SGDS)
def test_clips_and_applies_like_numpy_and_returns_applied(mode, opt_name):
    model = LinearModel(mode)
    holder = {}

    def body(gx, gy):
        result = safegrad.apply_gradients(make_optimizer(opt_name, mode) if not holder else holder["opt"],
                                          [(gx, model.w), (gy, model.b)], clip_norm=2.6, on_nonfinite="skip")
        holder["type"] = type(result)
        return result

    holder["opt"] = make_optimizer(opt_name, mode)
    run = mode.step(body, X, Y)
    w0, b0 = model.values()
    out = run(X, Y)
    w1, b1 = model.values()
    np.testing.assert_allclose(w1, w0 - 0.1 * X * 0.2, rtol=1e-6)  # scale 2.6 / 13
    np.testing.assert_allclose(b1, b0 - 0.1 * Y * 0.2, rtol=1e-6)
    skipped = run(np.array([np.nan, 0, 0], np.float32), Y)
    np.testing.assert_array_equal(model.values()[0], w1)
    if mode.name == "graph":
        assert issubclass(holder["type"], tf1.Operation) and out is None and skipped is None
    else:
        assert bool(out) is True and bool(skipped) is False  # on every Keras too
    state = safegrad.step_state(holder["opt"])
    assert mode.read([state.total_skips, state.steps]) == [1, 2]


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_raise_names_the_variable_and_changes_nothing(mode, opt_name):
    optimizer = make_optimizer(opt_name, mode)
    model = LinearModel(mode, w_name="poisoned_weight", b_name="bias")
    run = step(mode, model, optimizer, clip_norm=1.0)
    run(X, Y)
    tracked = model.variables + optimizer_variables(optimizer)
    before = snapshot(mode, tracked)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(np.array([np.nan, 0, 0], np.float32), Y)
    assert named_in(info.value) == ["poisoned_weight (NaN)"]
    assert snapshot(mode, tracked) == before


def test_global_step_advances_only_on_applied_updates(mode):
    model = LinearModel(mode)
    global_step = mode.variable(0, "global_step", dtype=tf.int64, trainable=False)
    run = step(mode, model, tf1.train.GradientDescentOptimizer(0.1), on_nonfinite="skip", global_step=global_step)
    for gx in (X, np.array([np.inf, 0, 0], np.float32), X):
        run(gx, Y)
    assert mode.read(global_step) == 2


@pytest.mark.parametrize("opt_name", SGDS)
def test_accumulated_micro_batches_are_checked_and_clipped_once(tf2_mode, opt_name):
    w = tf.Variable([0.0, 0.0], name="w")
    optimizer = OPTIMIZERS[opt_name]()  # SGD, learning rate 0.1

    def train(x1, x2):
        accumulated = tf.zeros_like(w)
        for x in (x1, x2):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(w * x) / 2.0
            accumulated += tape.gradient(loss, w)
        return safegrad.apply_gradients(optimizer, [(accumulated, w)], clip_norm=1.0, on_nonfinite="skip")

    run = tf2_mode.step(train, np.zeros(2, np.float32), np.zeros(2, np.float32))
    assert run(np.array([6.0, 0.0], np.float32), np.array([0.0, 8.0], np.float32))
    # The mean gradient [3, 4] (norm 5) clipped once to norm 1: [0.6, 0.8]. Clipping each
    # micro-batch ([3, 0] and [0, 4], each to norm 1, then averaged) would give [0.5, 0.5].
    np.testing.assert_allclose(w.numpy(), [-0.06, -0.08], rtol=1e-6)
    assert not run(np.array([6.0, 0.0], np.float32), np.array([np.nan, 8.0], np.float32))
    np.testing.assert_allclose(w.numpy(), [-0.06, -0.08], rtol=1e-6)  # the whole update skipped


def test_bad_arguments_are_refused_at_the_call(graph_mode):
    w = tf1.Variable([1.0], name="w")
    g = tf.constant([1.0])
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    before = len(tf1.get_default_graph().get_operations())
    for kwargs, error, message in [
        (dict(clip_norm=-1), ValueError, "`clip_norm` must be > 0 and finite. Received: clip_norm=-1"),
        (dict(on_nonfinite="skipp"), ValueError, "Received: on_nonfinite='skipp'"),
        (dict(global_step=w), TypeError, "`global_step` must be an integer variable"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            safegrad.apply_gradients(optimizer, [(g, w)], **kwargs)
    with pytest.raises(TypeError, match=re.escape("`grads_and_vars` must be a list of (gradient, variable) pairs")):
        safegrad.apply_gradients(optimizer, [g])
    with pytest.raises(ValueError, match=re.escape("No gradients provided for any variable: ['w']")):
        safegrad.apply_gradients(optimizer, [(None, w)])
    with pytest.raises(TypeError, match=re.escape("pass its `inner_optimizer` to safegrad.apply_gradients")):
        safegrad.apply_gradients(safegrad.SafeOptimizer(optimizer), [(g, w)])
    assert len(tf1.get_default_graph().get_operations()) == before


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_safe_optimizer_apply_gradients_returns_what_the_wrapped_api_returns(mode, opt_name):
    inner = make_optimizer(opt_name, mode)
    optimizer = safegrad.SafeOptimizer(inner)
    model = LinearModel(mode)
    seen = {}

    def body(gx, gy):
        seen["result"] = optimizer.apply_gradients([(gx, model.w), (gy, model.b)])
        return seen["result"] if mode.name == "graph" else tf.constant(0)  # (a Session runs what it fetches)

    mode.run(body, X, Y)
    result = seen["result"]
    if isinstance(adapter_for(inner), RETURN_ITERATIONS):
        assert result is optimizer.iterations
    else:  # v1 and Keras OptimizerV2: an op, None eagerly
        assert (result is None) if mode.eager else isinstance(result, tf1.Operation), result
    assert mode.read(safegrad.step_state(optimizer).steps) == 1


@pytest.mark.skipif(not TF2, reason="TF2")
def test_minimize_of_the_keras_2_11_and_keras_3_wrappers_returns_applied():
    # (They have no minimize of their own; OptimizerV2's returns what its apply_gradients does.)
    names = [n for n in OPTIMIZERS if n.endswith("sgd") and isinstance(adapter_for(OPTIMIZERS[n]()), RETURN_ITERATIONS)]
    for name in names:
        w = tf.Variable([1.0])
        optimizer = safegrad.SafeOptimizer(OPTIMIZERS[name](), on_nonfinite="skip")
        assert bool(optimizer.minimize(lambda w=w: tf.reduce_sum(w * 2.0), [w])) is True
