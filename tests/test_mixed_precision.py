"""Loss scaling: the check and the clip act on UNSCALED gradients, the scale keeps its schedule.

The numbers: kernel [0.4, 0.4], input [1, 1], target 0, mean squared error, SGD learning rate
0.01, clip_norm 1. The gradient is [1.6, 1.6] (norm 2.26): clipped to norm 1, every entry moves by
-0.0070711, whatever the loss scale. With input [4, 4] the float16 gradient (25.6 per entry, times
the scale) overflows at scales above 2559: a dynamic scale drops 32768 -> 16384 -> 8192 -> 4096
-> 2048 over 4 skipped steps, then the same clipped update is applied.
"""

import re

import numpy as np
import pytest

import safegrad
from safegrad._tf import tf, tf1

from helpers import KERAS_VERSION, OPTIMIZERS, TF2, loss_scale_optimizer

X1 = np.array([[1.0, 1.0]], np.float32)
X_OVERFLOW = np.array([[4.0, 4.0]], np.float32)
Y = np.zeros((1, 1), np.float32)
UPDATE = -0.01 * 1.6 / np.sqrt(2 * 1.6 ** 2)  # -0.0070711: the clipped step of each entry


def clipped_step(kernel, x):
    """numpy: one SGD(0.01) step with the gradient of mean((x @ kernel)^2) clipped to norm 1."""
    grad = 2.0 * (x @ kernel) * x.T
    return kernel - 0.01 * grad * min(1.0, 1.0 / np.linalg.norm(grad))


# Keras: every LossScaleOptimizer of this env ------------------------------------------------------

KERAS_LSO = [n for n in ("keras-sgd", "keras-legacy-sgd") if n in OPTIMIZERS] if TF2 else []


def keras_model():
    policy = tf.keras.mixed_precision.Policy("mixed_float16")
    return tf.keras.Sequential([
        tf.keras.Input((2,)),
        tf.keras.layers.Dense(1, use_bias=False, dtype=policy, kernel_initializer=tf.keras.initializers.Constant(0.4)),
    ])


def keras_step(how, model, optimizer):
    """``run(x)``: one training step written the way ``how`` says."""

    def loss_of(x):
        return tf.reduce_mean(tf.square(tf.cast(model(x), tf.float32) - Y))

    if how == "clip_and_apply":
        return tf.function(lambda x: safegrad.clip_and_apply(
            optimizer, lambda: loss_of(x), model.trainable_variables, clip_norm=1.0, on_nonfinite="skip"))
    safe = safegrad.SafeOptimizer(optimizer, clip_norm=1.0, on_nonfinite="skip")
    if how == "fit":
        model.compile(optimizer=safe, loss="mse")
        return lambda x: model.fit(x, Y, epochs=1, verbose=0)
    @tf.function
    def custom_loop_step(x):
        safe.minimize(lambda: loss_of(x), model.trainable_variables)  # (returns per API: not used)

    return custom_loop_step


def minimize_step(model, optimizer):
    @tf.function
    def run(x):
        optimizer.minimize(lambda: tf.reduce_mean(tf.square(tf.cast(model(x), tf.float32))), model.trainable_variables)

    return run


@pytest.mark.skipif(not KERAS_LSO, reason="Keras LossScaleOptimizer: TF2")
@pytest.mark.parametrize("how", ["SafeOptimizer", "clip_and_apply", "fit"])
@pytest.mark.parametrize("name", KERAS_LSO)
def test_keras_loss_scaling_clips_unscaled_and_lowers_the_scale_as_alone(name, how):
    model = keras_model()
    lso = loss_scale_optimizer(name)
    run = keras_step(how, model, lso)
    owner = lso if how == "clip_and_apply" else model.optimizer if how == "fit" else None
    kernel = model.layers[0].kernel
    scales, moved = [], []
    for x in [X1] + [X_OVERFLOW] * 6:
        before = kernel.numpy().copy()
        run(x)
        if x is X1 and not np.array_equal(kernel.numpy(), before):
            np.testing.assert_allclose(kernel.numpy() - before, [[UPDATE], [UPDATE]], rtol=1e-5)
        scales.append(float(tf.convert_to_tensor(lso.loss_scale if hasattr(lso, "loss_scale") else lso.dynamic_scale)))
        moved.append(not np.array_equal(kernel.numpy(), before))
        if moved[-1]:
            np.testing.assert_allclose(kernel.numpy(), clipped_step(before.astype(np.float64), x), rtol=1e-5)
    if how == "fit" and KERAS_VERSION == 2:
        # Keras 2's fit computes the loss in float16: its first step overflows with the
        # LossScaleOptimizer alone too (checked in the next test); the schedule is the same.
        assert scales == [16384.0, 8192.0, 4096.0, 2048.0, 2048.0, 2048.0, 2048.0]
        assert moved == [False, False, False, False, True, True, True]
    else:
        assert scales == [32768.0, 16384.0, 8192.0, 4096.0, 2048.0, 2048.0, 2048.0]
        assert moved == [True, False, False, False, False, True, True]
    if owner is not None:
        state = safegrad.step_state(owner).snapshot()
        assert state["overflow_skips"] == state["total_skips"] == moved.count(False)


@pytest.mark.skipif(not KERAS_LSO or KERAS_VERSION == 3, reason="Keras 2's fit")
@pytest.mark.parametrize("name", KERAS_LSO)
def test_keras2_fit_first_step_overflows_with_the_loss_scale_optimizer_alone_too(name):
    model = keras_model()
    lso = loss_scale_optimizer(name)
    model.compile(optimizer=lso, loss="mse")
    model.fit(X1, Y, epochs=1, verbose=0)
    assert float(lso.loss_scale) == 16384.0 and np.all(model.layers[0].kernel.numpy() == 0.4)


@pytest.mark.skipif(not KERAS_LSO, reason="Keras LossScaleOptimizer: TF2")
@pytest.mark.parametrize("name", KERAS_LSO)
def test_raise_mode_skips_routine_overflows_and_raises_at_the_floor_of_the_scale(name):
    model = keras_model()
    lso = loss_scale_optimizer(name)
    safe = safegrad.SafeOptimizer(lso, clip_norm=1.0)  # on_nonfinite="raise"
    nan = np.array([[np.nan, 1.0]], np.float32)

    @tf.function
    def run(x):
        safe.minimize(lambda: tf.reduce_mean(tf.square(tf.cast(model(x), tf.float32))), model.trainable_variables)

    for _ in range(15):  # 32768 = 2**15: halved 15 times down to the floor, 1, never raised
        run(nan)
    assert safe.step_state.snapshot()["overflow_skips"] == 15
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(nan)
    assert re.search(r"non-finite gradient for: \S*kernel \(NaN\)", str(info.value))
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.full((2, 1), 0.4, np.float32))


@pytest.mark.skipif(not KERAS_LSO or KERAS_VERSION == 3, reason="a fixed loss scale: Keras 2")
@pytest.mark.parametrize("name", KERAS_LSO)
def test_a_fixed_scale_cannot_be_lowered_so_raise_mode_raises(name):
    model = keras_model()
    safe = safegrad.SafeOptimizer(loss_scale_optimizer(name, dynamic=False, initial_scale=32768), clip_norm=1.0)
    run = minimize_step(model, safe)
    run(X1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite gradient for"):
        run(X_OVERFLOW)


@pytest.mark.skipif(not KERAS_LSO, reason="Keras LossScaleOptimizer: TF2")
def test_max_consecutive_skips_counts_overflow_steps_too():
    model = keras_model()
    safe = safegrad.SafeOptimizer(loss_scale_optimizer(KERAS_LSO[0]), on_nonfinite="skip", max_consecutive_skips=3)
    run = minimize_step(model, safe)
    for _ in range(3):
        run(X_OVERFLOW)
    expected = "4 non-finite steps in a row, more than max_consecutive_skips=3"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        run(X_OVERFLOW)


@pytest.mark.skipif(not KERAS_LSO, reason="Keras LossScaleOptimizer: TF2")
@pytest.mark.parametrize("name", KERAS_LSO)
def test_safegrad_inside_the_loss_scaling_is_refused_with_the_order_to_use(name):
    inside = "must wrap the loss scaling, not be wrapped by it"
    with pytest.raises((ValueError, AttributeError), match=inside):
        loss_scale_optimizer(name, inner=safegrad.SafeOptimizer(OPTIMIZERS[name](0.01)))
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
        with pytest.raises((ValueError, AttributeError), match=inside):  # compile() wraps it
            model.compile(optimizer=safegrad.SafeOptimizer(OPTIMIZERS[name](0.01)), loss="mse")
        safe = safegrad.SafeOptimizer(loss_scale_optimizer(name), clip_norm=1.0)
        model.compile(optimizer=safe, loss="mse")  # a LossScaleOptimizer: compile keeps it
        assert model.optimizer is safe
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


@pytest.mark.skipif(not KERAS_LSO, reason="Keras LossScaleOptimizer: TF2")
@pytest.mark.parametrize("name", KERAS_LSO)
def test_the_wrapper_is_a_loss_scale_optimizer_with_its_public_api(name):
    lso = loss_scale_optimizer(name)
    safe = safegrad.SafeOptimizer(lso, clip_norm=1.0)
    assert isinstance(safe, type(lso)) and safe.inner_optimizer is lso
    assert type(safe).__name__.startswith("SafeLossScaleOptimizer")
    assert float(safe.initial_scale) == 32768.0
    with pytest.raises(ValueError, match="`on_nonfinite` cannot be 'ignore' with a loss-scale optimizer"):
        safegrad.SafeOptimizer(loss_scale_optimizer(name), on_nonfinite="ignore")


@pytest.mark.skipif(not KERAS_LSO, reason="Keras LossScaleOptimizer: TF2")
@pytest.mark.parametrize("name", KERAS_LSO)
def test_save_and_load_keep_the_counters_and_the_scale_where_keras_saves_it(tmp_path, name):
    model = keras_model()
    model.compile(optimizer=safegrad.SafeOptimizer(loss_scale_optimizer(name), clip_norm=1.0,
                                                   on_nonfinite="skip"), loss="mse")
    model.fit(np.concatenate([X1, X_OVERFLOW]), np.zeros((2, 1), np.float32), batch_size=1, epochs=1, verbose=0)
    path = str(tmp_path / ("model.keras" if KERAS_VERSION == 3 or "legacy" not in name else "model.h5"))
    model.save(path)
    restored = tf.keras.models.load_model(path)
    assert type(restored.optimizer) is type(model.optimizer)
    assert restored.optimizer.step_state.snapshot() == model.optimizer.step_state.snapshot()
    scale = lambda o: float(tf.convert_to_tensor(o.inner_optimizer.loss_scale if KERAS_VERSION == 2  # noqa: E731
                                                 else o.inner_optimizer.dynamic_scale))
    assert scale(model.optimizer) < 32768.0
    if KERAS_VERSION == 3:
        assert scale(restored.optimizer) == scale(model.optimizer)
    else:  # Keras 2's .h5/.keras files do not save a LossScaleOptimizer's scale, wrapped or not
        assert scale(restored.optimizer) == 32768.0


@pytest.mark.skipif(KERAS_VERSION != 3 or not TF2, reason="gradient_accumulation_steps: Keras 3")
def test_keras3_gradient_accumulation_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match=re.escape(
        "`optimizer` accumulates gradients by itself (gradient_accumulation_steps=2)"
    )) as info:
        safegrad.SafeOptimizer(tf.keras.optimizers.SGD(0.01, gradient_accumulation_steps=2))
    assert "safegrad.apply_gradients(optimizer, accumulated_grads_and_vars" in str(info.value)


# TF1: MixedPrecisionLossScaleOptimizer, in graphs (every env) and eagerly ------------------------


def v1_loss_scale_optimizer(optimizer, loss_scale="dynamic"):
    mixed = getattr(getattr(tf1, "mixed_precision", None), "MixedPrecisionLossScaleOptimizer", None)
    mixed = mixed or tf1.train.experimental.MixedPrecisionLossScaleOptimizer  # TF 1.15
    return mixed(optimizer, loss_scale)


@pytest.mark.parametrize("how", ["clip_and_apply", "SafeOptimizer"])
def test_v1_mixed_precision_loss_scale_optimizer(mode, how):
    w = mode.variable([[0.4], [0.4]], "w")
    optimizer = v1_loss_scale_optimizer(tf1.train.GradientDescentOptimizer(0.01))
    owner = optimizer
    if how == "SafeOptimizer":
        owner = safegrad.SafeOptimizer(optimizer, clip_norm=1.0, on_nonfinite="skip")

    def step(x):
        def loss():
            prediction = tf.matmul(tf.cast(x, tf.float16), tf.cast(w, tf.float16))
            return tf.reduce_mean(tf.square(tf.cast(prediction, tf.float32)))

        loss = loss() if mode.name == "graph" else loss
        if how == "clip_and_apply":
            return safegrad.clip_and_apply(optimizer, loss, [w], clip_norm=1.0, on_nonfinite="skip")
        return owner.minimize(loss, var_list=[w])

    run = mode.step(step, X1)
    state = safegrad.step_state(owner)
    scales = []
    for x in [X1] + [X_OVERFLOW] * 5:
        before = mode.read(w)
        run(x)
        scales.append(float(mode.read(optimizer._loss_scale())))
        if not np.array_equal(mode.read(w), before):
            np.testing.assert_allclose(mode.read(w), clipped_step(before.astype(np.float64), x), rtol=1e-5)
    assert scales == [32768.0, 16384.0, 8192.0, 4096.0, 2048.0, 2048.0]
    assert mode.read([state.total_skips, state.overflow_skips, state.steps]) == [4, 4, 6]


GRAPH_REWRITE_SCRIPT = """
import numpy as np
import tensorflow.compat.v1 as tf
if tf.__version__.startswith("2."):
    tf.disable_v2_behavior()
import safegrad
rewrite = getattr(getattr(tf, "mixed_precision", None), "enable_mixed_precision_graph_rewrite", None)
rewrite = rewrite or tf.train.experimental.enable_mixed_precision_graph_rewrite  # TF 1.15
x = tf.placeholder(tf.float32, [2])
w = tf.Variable([0.0, 0.0])
optimizer = rewrite(tf.train.GradientDescentOptimizer(1e-36))
train_op = safegrad.clip_and_apply(optimizer, tf.reduce_sum(w * x), [w], on_nonfinite="raise")
scale = optimizer._loss_scale()
with tf.Session() as sess:
    sess.run(tf.global_variables_initializer())
    for _ in range(5):  # a float32 gradient of 1e35: times 32768 it overflows; times 2048 it does not
        sess.run(train_op, {x: [1e35, 0.0]})
        print(sess.run(scale), sess.run(w)[0])
"""


def test_the_graph_rewrite_optimizer_keeps_its_schedule_and_raises_not():
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", GRAPH_REWRITE_SCRIPT], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.strip().splitlines()[-5:]]
    assert [float(r[0]) for r in rows] == [16384.0, 8192.0, 4096.0, 2048.0, 2048.0]
    assert [float(r[1]) for r in rows][:4] == [0.0] * 4 and float(rows[4][1]) == pytest.approx(-0.1, rel=1e-5)
