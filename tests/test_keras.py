"""SafeOptimizer with Keras optimizers: compile/fit, custom loops, save/load, History/TensorBoard.

Runs on every TF2 env, for every Keras optimizer API the env has: Keras 2 OptimizerV2 (TF 2.4,
2.10, and `legacy` in 2.15/tf-keras), the Keras 2.11+ optimizer (2.15, tf-keras) and Keras 3.
"""

import functools
import glob
import os
import re

import numpy as np
import pytest

import safegrad
from safegrad import _keras_compat
from safegrad._adapters import Keras2OptimizerAdapter, adapter_class_for, adapter_for
from safegrad._tf import tf

from helpers import KERAS_VERSION, OPTIMIZERS, TF2, as_bytes, named_in, new_optimizer, optimizer_variables

pytestmark = pytest.mark.skipif(not TF2, reason="Keras optimizers: TF2 envs")


def _factories():
    """Adam(0.05) and SGD(0.1) of every Keras optimizer API of this env (``keras-*``, and
    ``keras-legacy-*`` where Keras 2.11-2.15 / tf-keras keep OptimizerV2)."""
    rates = {"adam": 0.05, "sgd": 0.1}
    return {
        name: functools.partial(new_optimizer, name, rates[name.rpartition("-")[2]])
        for name in OPTIMIZERS
        if name.startswith("keras-") and name.rpartition("-")[2] in rates
    }


FACTORIES = _factories()
ADAMS = [name for name in FACTORIES if name.endswith("adam")]
SGDS = [name for name in FACTORIES if name.endswith("sgd")]


def api(name):
    """The adapter class safegrad drives this optimizer with."""
    return type(adapter_for(FACTORIES[name]()))


def make_data(nan_batches=(), batch=16, batches=4, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(batch * batches, 4).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)).astype(np.float32)
    y_bad = y.copy()
    for b in nan_batches:
        y_bad[b * batch + 3] = np.nan
    return x, y, y_bad


def make_model(seed=1):
    kernel = np.random.RandomState(seed).randn(4, 1).astype(np.float32)
    model = tf.keras.Sequential([tf.keras.Input(shape=(4,)), tf.keras.layers.Dense(1, name="dense")])
    model.layers[0].set_weights([kernel, np.zeros(1, np.float32)])
    return model


def clean_loss(model, x, y):
    return float(np.mean((model.predict(x, verbose=0) - y) ** 2))


@pytest.mark.parametrize("opt_name", ADAMS)
def test_nan_labels_skip_trains_while_plain_keras_breaks(opt_name):
    x, y, y_bad = make_data(nan_batches=(1, 3))
    plain = make_model()
    plain.compile(optimizer=FACTORIES[opt_name](), loss="mse")
    plain.fit(x, y_bad, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert np.all(np.isnan(plain.layers[0].kernel.numpy()))

    model = make_model()
    start = clean_loss(model, x, y)
    optimizer = safegrad.SafeOptimizer(FACTORIES[opt_name](), clip_norm=5.0, on_nonfinite="skip")
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y_bad, batch_size=16, epochs=15, shuffle=False, verbose=0)
    assert np.all(np.isfinite(model.layers[0].kernel.numpy()))
    assert clean_loss(model, x, y) < start / 2
    state = optimizer.step_state.snapshot()
    assert (state["total_skips"], state["steps"]) == (30, 60)
    assert int(optimizer.iterations.numpy()) == 30  # iterations count applied updates only


@pytest.mark.parametrize("opt_name", SGDS)
def test_one_step_full_batch_sgd_fit_matches_numpy(opt_name):
    x, y, _ = make_data(batches=1, batch=8)
    model = make_model()
    w0 = model.layers[0].kernel.numpy().astype(np.float64)
    model.compile(optimizer=safegrad.SafeOptimizer(FACTORIES[opt_name](), clip_norm=0.5), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    error = x @ w0 - y  # bias starts at 0
    grad_w = 2.0 / len(x) * x.T.astype(np.float64) @ error
    grad_b = 2.0 / len(x) * np.sum(error, axis=0)
    norm = np.sqrt(np.sum(grad_w ** 2) + np.sum(grad_b ** 2))
    scale = min(1.0, 0.5 / norm)
    assert scale < 1.0  # the bound is active
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), w0 - 0.1 * scale * grad_w, rtol=1e-5)
    np.testing.assert_allclose(model.layers[0].bias.numpy(), -0.1 * scale * grad_b, rtol=1e-5)


@pytest.mark.parametrize("opt_name", ADAMS)
def test_raise_mode_fit_stops_naming_the_weight(opt_name):
    x, _, y_bad = make_data(nan_batches=(2,))
    model = make_model()
    optimizer = safegrad.SafeOptimizer(FACTORIES[opt_name](), clip_norm=5.0)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x[:32], y_bad[:32], batch_size=16, epochs=1, shuffle=False, verbose=0)
    before = as_bytes(model.trainable_variables + optimizer_variables(optimizer.inner_optimizer))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        model.fit(x, y_bad, batch_size=16, epochs=1, shuffle=False, verbose=0)
    labels = named_in(info.value)
    assert any(re.match(r"^(sequential(_\d+)?/)?dense/kernel \(NaN\)$", label) for label in labels), labels
    assert any(re.match(r"^(sequential(_\d+)?/)?dense/bias \(NaN\)$", label) for label in labels), labels
    # The two batches before the poisoned one were applied; the poisoned one changed nothing.
    assert as_bytes(model.trainable_variables + optimizer_variables(optimizer.inner_optimizer)) != before
    assert int(optimizer.iterations.numpy()) == 4


@pytest.mark.parametrize("opt_name", ADAMS)
def test_custom_loop_skips_a_poisoned_batch_bit_exactly(tf2_mode, opt_name):
    x, y, y_bad = make_data(nan_batches=(1,))
    batches = [(x[i * 16:(i + 1) * 16], y_bad[i * 16:(i + 1) * 16]) for i in range(3)]

    def train(batch_list):
        model = make_model()
        optimizer = safegrad.SafeOptimizer(FACTORIES[opt_name](), clip_norm=5.0, on_nonfinite="skip")

        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xb) - yb))
            grads = tape.gradient(loss, model.trainable_variables)
            return optimizer.apply_gradients(zip(grads, model.trainable_variables))

        run = tf2_mode.step(step, batches[0][0], batches[0][1])
        snapshots = []
        for xb, yb in batch_list:
            run(xb, yb)
            snapshots.append(as_bytes(model.trainable_variables + optimizer_variables(optimizer.inner_optimizer)))
        return snapshots, optimizer

    with_bad, optimizer = train(batches)
    without_bad, _ = train([batches[0], batches[2]])
    assert with_bad[1] == with_bad[0]  # the poisoned batch changed nothing (slots, iterations too)
    assert with_bad[2] == without_bad[1]
    assert int(optimizer.iterations.numpy()) == 2
    assert optimizer.step_state.snapshot()["total_skips"] == 1


def _save_formats():
    """Formats in which Keras itself restores optimizer state (measured: Keras 2's SavedModel
    restores none, even for an unwrapped optimizer; `.keras` restores Keras 2.11+ optimizers but not
    the `legacy` ones)."""
    cases = []
    for name in ADAMS:
        if KERAS_VERSION == 3:
            cases.append((name, ".keras"))
            continue
        cases.append((name, ".h5"))
        if api(name) is Keras2OptimizerAdapter:
            cases.append((name, ".keras"))
    return cases


@pytest.mark.parametrize("opt_name, extension", _save_formats())
def test_save_load_and_continue_training(tmp_path, opt_name, extension):
    x, y, y_bad = make_data(nan_batches=(1,))
    model = make_model()
    optimizer = safegrad.SafeOptimizer(FACTORIES[opt_name](), clip_norm=5.0, on_nonfinite="skip")
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y_bad, batch_size=16, epochs=1, shuffle=False, verbose=0)
    optimizer = model.optimizer
    saved_inner = [v.numpy() for v in optimizer_variables(optimizer.inner_optimizer)]
    assert optimizer.step_state.snapshot()["total_skips"] == 1

    path = str(tmp_path / ("model" + extension))
    model.save(path)
    loaded = tf.keras.models.load_model(path)  # no custom_objects
    restored = loaded.optimizer
    assert getattr(type(restored), "_safegrad_wrapper", False), type(restored)
    assert restored.policy == optimizer.policy
    assert type(restored.inner_optimizer) is type(optimizer.inner_optimizer)
    loaded_inner = [v.numpy() for v in optimizer_variables(restored.inner_optimizer)]
    assert len(loaded_inner) == len(saved_inner)
    for a, b in zip(saved_inner, loaded_inner):
        np.testing.assert_array_equal(a, b)
    assert restored.step_state.snapshot()["total_skips"] == 1
    np.testing.assert_array_equal(loaded.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())

    kernel = loaded.layers[0].kernel.numpy()
    loaded.fit(x, y_bad, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert not np.array_equal(loaded.layers[0].kernel.numpy(), kernel)  # it trains
    assert np.all(np.isfinite(loaded.layers[0].kernel.numpy()))  # and still skips the NaN batch
    assert restored.step_state.snapshot()["total_skips"] == 2


def test_history_and_tensorboard_show_the_statistics(tmp_path):
    x, y, y_bad = make_data(nan_batches=(2,))
    y_epochs = np.concatenate([y_bad, y])  # epoch 1: one NaN batch; epoch 2: clean
    x_epochs = np.concatenate([x, x])
    model = make_model()
    optimizer = safegrad.SafeOptimizer(FACTORIES["keras-sgd"](), clip_norm=1.0, on_nonfinite="skip")
    model.compile(optimizer=optimizer, loss="mse")
    logdir = str(tmp_path / "logs")
    history = model.fit(
        x_epochs, y_epochs, batch_size=16, epochs=2, steps_per_epoch=4, shuffle=False, verbose=0,
        callbacks=[safegrad.StepStatsCallback(), tf.keras.callbacks.TensorBoard(logdir)],
    )
    stats = history.history
    assert stats["safegrad_skipped_steps"] == [1, 0]
    assert stats["safegrad_total_skips"] == [1, 1]
    assert stats["safegrad_consecutive_skips"] == [0, 0]
    assert 0.0 <= stats["safegrad_clipped_fraction"][0] <= 0.75 and stats["safegrad_clipped_fraction"][0] > 0
    assert all(np.isfinite(stats["safegrad_global_norm"]))

    tags = set()
    for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert {"epoch_safegrad_skipped_steps", "epoch_safegrad_global_norm", "epoch_safegrad_clipped_fraction"} <= tags


def test_callback_needs_a_safegrad_optimizer():
    x, y, _ = make_data()
    model = make_model()
    model.compile(optimizer=FACTORIES["keras-sgd"](), loss="mse")
    with pytest.raises(ValueError, match="StepStatsCallback reports a safegrad.SafeOptimizer"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[safegrad.StepStatsCallback()])


@pytest.mark.parametrize("opt_name", sorted(FACTORIES))
def test_exposes_inner_learning_rate_and_iterations(opt_name):
    inner = FACTORIES[opt_name]()
    optimizer = safegrad.SafeOptimizer(inner, on_nonfinite="skip")
    assert optimizer.inner_optimizer is inner and optimizer.optimizer is inner
    assert optimizer.iterations is inner.iterations
    optimizer.learning_rate = 0.25
    np.testing.assert_allclose(float(tf.convert_to_tensor(inner.learning_rate)), 0.25)
    np.testing.assert_allclose(float(tf.convert_to_tensor(optimizer.learning_rate)), 0.25)


@pytest.mark.parametrize("opt_name", SGDS)
def test_learning_rate_scheduler_callback_reaches_the_inner_optimizer(opt_name):
    x, y, _ = make_data()
    inner = FACTORIES[opt_name]()
    model = make_model()
    model.compile(optimizer=safegrad.SafeOptimizer(inner), loss="mse")
    schedule = tf.keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 * (epoch + 1))
    model.fit(x, y, epochs=2, verbose=0, callbacks=[schedule])
    np.testing.assert_allclose(float(tf.convert_to_tensor(inner.learning_rate)), 0.02, rtol=1e-6)


@pytest.mark.parametrize("argument", ["clipnorm", "clipvalue", "global_clipnorm"])
@pytest.mark.parametrize("opt_name", SGDS)
def test_rejects_the_inner_optimizers_own_clipping(opt_name, argument):
    with pytest.raises(ValueError, match=r"clips gradients by itself \({}=1\.0\)".format(argument)):
        safegrad.SafeOptimizer(FACTORIES[opt_name](**{argument: 1.0}), clip_norm=1.0)


@pytest.mark.parametrize("opt_name", ADAMS)
def test_rejects_double_wrapping(opt_name):
    inner = FACTORIES[opt_name]()
    wrapped = safegrad.SafeOptimizer(inner)
    with pytest.raises(TypeError, match="already a safegrad.SafeOptimizer"):
        safegrad.SafeOptimizer(wrapped)
    with pytest.raises(ValueError, match="already wrapped by another safegrad.SafeOptimizer"):
        safegrad.SafeOptimizer(inner)
    w = tf.Variable([1.0])
    with pytest.raises(TypeError, match="already a safegrad.SafeOptimizer"):
        safegrad.clip_and_apply(wrapped, lambda: tf.reduce_sum(w), [w])
    with pytest.raises(ValueError, match="`on_nonfinite` must be one of"):
        safegrad.SafeOptimizer(FACTORIES[opt_name](), on_nonfinite="nope")


@pytest.mark.parametrize("opt_name", SGDS)
def test_compute_gradients_and_minimize_helpers(tf2_mode, opt_name):
    w = tf.Variable([3.0, 4.0], name="w")
    optimizer = safegrad.SafeOptimizer(FACTORIES[opt_name](), clip_norm=1.0)

    def step(x):
        loss = lambda: tf.reduce_sum(w * x)  # noqa: E731  (gradient = x)
        raw = optimizer.compute_gradients(loss, [w])
        with tf.GradientTape() as tape:
            taped = tf.reduce_sum(w * x)
        raw_taped = optimizer.compute_gradients(taped, [w], tape=tape)
        optimizer.minimize(loss, [w])
        return raw[0][0], raw_taped[0][0]

    raw, raw_taped = tf2_mode.run(step, np.array([6.0, 8.0], np.float32))
    np.testing.assert_array_equal(raw, [6.0, 8.0])  # compute_gradients: raw, unclipped
    np.testing.assert_array_equal(raw_taped, [6.0, 8.0])
    np.testing.assert_allclose(w.numpy(), [3.0 - 0.1 * 0.6, 4.0 - 0.1 * 0.8], rtol=1e-6)


def test_every_keras_api_of_this_env_is_covered():
    installed = {adapter_class_for(base) for base, _ in _keras_compat.optimizer_base_classes()}
    assert {api(name) for name in FACTORIES} == installed
    assert len(installed) == (2 if KERAS_VERSION == 2 and "keras-legacy-adam" in FACTORIES else 1)


def _keras_jit():
    import inspect

    return TF2 and "jit_compile" in inspect.signature(tf.keras.Model.compile).parameters


@pytest.mark.skipif(not _keras_jit(), reason="Model.compile(jit_compile=...) needs TF >= 2.5")
@pytest.mark.parametrize("opt_name", ADAMS)
def test_fit_with_jit_compile_skips_and_refuses_raise(opt_name):
    x, _, y_bad = make_data(nan_batches=(1,))
    model = make_model()
    optimizer = safegrad.SafeOptimizer(FACTORIES[opt_name](), clip_norm=5.0, on_nonfinite="skip")
    model.compile(optimizer=optimizer, loss="mse", jit_compile=True)
    model.fit(x, y_bad, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert np.all(np.isfinite(model.layers[0].kernel.numpy()))
    assert optimizer.step_state.snapshot()["total_skips"] == 1

    strict = make_model()
    strict.compile(optimizer=safegrad.SafeOptimizer(FACTORIES[opt_name]()), loss="mse", jit_compile=True)
    with pytest.raises(ValueError, match="XLA"):
        strict.fit(x, y_bad, batch_size=16, epochs=1, verbose=0)
