"""Per-step statistics: this step's outputs in the same Session.run, TensorBoard summaries in TF1
and TF2 (read back from the event files), per-batch Keras logs, and the explanation of a Keras
epoch whose loss is nan because a skipped step's loss was."""

import logging

import numpy as np
import pytest

import safegrad
from helpers import TF2, np_norm, read_scalars
from safegrad._tf import tf, tf1

NAN = np.float32(np.nan)
# Gradients of loss = sum(w * x): x itself. Three steps: clipped, skipped (NaN), not clipped.
BATCHES = [np.array([3.0, 4.0], np.float32), np.array([1.0, NAN], np.float32), np.array([0.3, 0.4], np.float32)]
CLIP = 1.0


def expected_rows():
    rows, skips = [], 0
    for x in BATCHES:
        finite = bool(np.all(np.isfinite(x)))
        skips += not finite
        norm = np_norm(x)
        rows.append((norm, 1.0 if not finite else min(1.0, CLIP / norm), not finite, skips))
    return rows


def check_rows(rows):
    for (norm, ratio, skipped, skips), want in zip(rows, expected_rows()):
        if np.isfinite(want[0]):
            np.testing.assert_allclose(norm, want[0], rtol=1e-6)
        else:
            assert np.isnan(norm)
        np.testing.assert_allclose(ratio, want[1], rtol=1e-6)
        assert (bool(skipped), int(skips)) == (want[2], want[3]), (rows, expected_rows())


def test_step_outputs_fetched_with_the_train_op_are_this_steps(graph_mode):
    x = tf1.placeholder(tf.float32, [2])
    w = tf1.Variable([1.0, 1.0], name="w")
    train_op = safegrad.clip_and_apply(
        tf1.train.GradientDescentOptimizer(0.1), tf.reduce_sum(w * x), clip_norm=CLIP, on_nonfinite="skip"
    )
    outputs = safegrad.step_outputs(train_op)
    graph_mode.sess.run(tf1.global_variables_initializer())
    rows = []
    for batch in BATCHES:
        _, norm, ratio, skipped, skips, applied = graph_mode.sess.run(
            [train_op, outputs.global_norm, outputs.clip_ratio, outputs.skipped, outputs.total_skips,
             outputs.applied], {x: batch}
        )
        assert applied == (not skipped)
        rows.append((norm, ratio, skipped, skips))
    check_rows(rows)
    state = safegrad.step_state(tf1.get_collection(tf1.GraphKeys.TRAIN_OP)[0]) if False else None
    del state
    # Fetched alone (e.g. with evaluation data), they change nothing.
    before = graph_mode.sess.run(w)
    graph_mode.sess.run([outputs.global_norm, outputs.skipped, outputs.total_skips], {x: BATCHES[0]})
    np.testing.assert_array_equal(before, graph_mode.sess.run(w))


def test_tf1_summaries_merge_with_the_users_and_reach_the_event_file(graph_mode, tmp_path):
    x = tf1.placeholder(tf.float32, [2])
    w = tf1.Variable([1.0, 1.0], name="w")
    loss = tf.reduce_sum(w * x)
    tf1.summary.scalar("loss", loss)  # the user's own summary
    train_op = safegrad.clip_and_apply(
        tf1.train.GradientDescentOptimizer(0.1), loss, clip_norm=CLIP, on_nonfinite="skip"
    )
    ours = safegrad.add_summaries(train_op)
    merged = tf1.summary.merge_all()
    assert ours is not None
    writer = tf1.summary.FileWriter(str(tmp_path))
    graph_mode.sess.run(tf1.global_variables_initializer())
    for step, batch in enumerate(BATCHES):
        _, summary = graph_mode.sess.run([train_op, merged], {x: batch})
        writer.add_summary(summary, step)
    writer.close()
    scalars = read_scalars(tmp_path)
    assert sorted(scalars) == [
        "loss", "safegrad/clip_ratio", "safegrad/global_norm", "safegrad/skipped", "safegrad/total_skips"
    ]
    rows = list(zip(*[[v for _, v in scalars["safegrad/" + k]] for k in
                      ("global_norm", "clip_ratio", "skipped", "total_skips")]))
    check_rows(rows)
    assert [s for s, _ in scalars["safegrad/global_norm"]] == [0, 1, 2]


def test_add_summaries_refuses_what_it_cannot_summarize(graph_mode):
    w = tf1.Variable([1.0], name="w")
    train_op = safegrad.clip_and_apply(tf1.train.GradientDescentOptimizer(0.1), tf.reduce_sum(w))
    with pytest.raises(TypeError, match=r"`step_number` is for TF2 summaries"):
        safegrad.add_summaries(train_op, step_number=3)
    with pytest.raises(ValueError, match=r"`family` must be a non-empty string. Received: family=''"):
        safegrad.add_summaries(train_op, family="")
    with pytest.raises(TypeError, match=r"must be the train op a safegrad step returned"):
        safegrad.add_summaries(tf1.train.GradientDescentOptimizer(0.1))
    plain = tf1.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_sum(w))
    with pytest.raises(TypeError, match=r"not built by safegrad"):
        safegrad.add_summaries(plain)


@pytest.mark.skipif(not TF2, reason="TF2 summaries")
def test_tf2_summaries_reach_the_default_writer(tf2_mode, tmp_path):
    w = tf.Variable([1.0, 1.0], name="w")
    optimizer = tf.keras.optimizers.SGD(0.1)
    safegrad.step_state(optimizer)
    writer = tf.summary.create_file_writer(str(tmp_path))

    def step(x):
        safegrad.clip_and_apply(optimizer, lambda: tf.reduce_sum(w * x), [w], clip_norm=CLIP, on_nonfinite="skip")
        return safegrad.add_summaries(optimizer)

    step = tf.function(step) if tf2_mode.name == "function" else step
    with writer.as_default():
        for batch in BATCHES:
            assert bool(step(tf.constant(batch)))
    writer.flush()
    scalars = read_scalars(tmp_path)
    rows = list(zip(*[[v for _, v in scalars["safegrad/" + k]] for k in
                      ("global_norm", "clip_ratio", "skipped", "total_skips")]))
    check_rows(rows)
    assert [s for s, _ in scalars["safegrad/total_skips"]] == [0, 1, 2]  # numbered as in the skip log


def _keras_model():
    keras = tf.keras
    model = keras.Sequential([keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)])
    model.compile(
        optimizer=safegrad.SafeOptimizer(keras.optimizers.SGD(0.01), clip_norm=CLIP, on_nonfinite="skip"),
        loss="mse",
    )
    return model


class LogLayer(tf.keras.layers.Layer if TF2 else object):
    def call(self, inputs):
        return tf.math.log(inputs)


def _batches(bad_row=None):
    x = np.ones([8, 2], np.float32)
    if bad_row is not None:
        x[bad_row] = NAN
    return x, np.zeros([8, 1], np.float32)


class _BatchLogs(tf.keras.callbacks.Callback if TF2 else object):
    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.rows.append({k: float(v) for k, v in logs.items() if k.startswith("safegrad_")})


@pytest.mark.skipif(not TF2, reason="Keras fit: TF2")
def test_step_stats_callback_per_batch_and_the_nan_epoch_explained(caplog):
    model = _keras_model()
    x, y = _batches(bad_row=5)
    recorder = _BatchLogs()
    with caplog.at_level(logging.WARNING, logger="safegrad"):
        history = model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0,
                            callbacks=[safegrad.StepStatsCallback(per_batch=True), recorder])
    assert [r["safegrad_skipped"] for r in recorder.rows] == [0, 0, 1, 0]
    assert [r["safegrad_total_skips"] for r in recorder.rows] == [0, 0, 1, 1]
    assert all(0 < r["safegrad_clip_ratio"] <= 1 for r in recorder.rows)
    assert np.isnan(recorder.rows[2]["safegrad_global_norm"])
    assert np.isnan(history.history["loss"][0]) and history.history["safegrad_skipped_steps"] == [1]
    messages = [r.getMessage() for r in caplog.records if r.name == "safegrad"]
    assert "safegrad: skipped step 2: non-finite gradient for: " in messages[0], messages
    assert messages[-1] == (
        "safegrad: epoch 1: 1 of 4 steps were skipped (non-finite gradients; they changed nothing); "
        "the epoch's loss (nan) averages their losses too"
    ), messages
    with pytest.raises(TypeError, match=r"`per_batch` must be a bool. Received: per_batch='yes'"):
        safegrad.StepStatsCallback(per_batch="yes")


@pytest.mark.skipif(not TF2, reason="Keras fit: TF2")
def test_explain_callback_reports_the_first_skipped_batch_of_fit(caplog):
    keras = tf.keras
    model = keras.Sequential([keras.layers.Dense(2, kernel_initializer="ones"), LogLayer(), keras.layers.Dense(1)])
    model.compile(optimizer=safegrad.SafeOptimizer(keras.optimizers.SGD(0.01), on_nonfinite="skip"), loss="mse")
    x = np.ones([8, 3], np.float32)
    x[5] = -1.0  # log of a negative in the batch [4:6]
    y = np.zeros([8, 1], np.float32)
    callback = safegrad.ExplainCallback()
    with caplog.at_level(logging.WARNING, logger="safegrad"):
        model.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    report = callback.report
    assert report.op_type == "Log", str(report)
    assert report.source.endswith("test_observe.py:{}".format(LogLayer.call.__code__.co_firstlineno + 1))
    assert "log of a value <= 0" in report.cause and "negatives" in str(report), str(report)
    assert len(callback.reports) == 1  # the first skipped batch only
    assert sum("first NaN/Inf: Log" in r.getMessage() for r in caplog.records) == 1
    assert safegrad.step_state(model.optimizer).total_skips.numpy() == 2  # the replay counted nothing
    # The model trains normally afterwards, without the wrapper.
    assert "train_step" not in vars(model)
    model.fit(np.ones([4, 3], np.float32), y[:4], batch_size=2, verbose=0)


@pytest.mark.skipif(not TF2, reason="Keras fit: TF2")
def test_explain_callback_traces_the_step_once_across_fit_calls():
    keras = tf.keras
    model = keras.Sequential([keras.layers.Dense(2, kernel_initializer="ones"), LogLayer(), keras.layers.Dense(1)])
    x, y = np.ones([4, 3], np.float32), np.zeros([4, 1], np.float32)
    callback = safegrad.ExplainCallback()
    functions = []

    class Seen(keras.callbacks.Callback):  # the train function fit runs (a new one is traced anew)
        def on_train_batch_begin(self, batch, logs=None):
            functions.append(self.model.train_function)

    def fit(inputs):
        model.fit(inputs, y, batch_size=2, shuffle=False, verbose=0, callbacks=[callback, Seen()])

    model.compile(optimizer=safegrad.SafeOptimizer(keras.optimizers.SGD(0.01), on_nonfinite="skip"), loss="mse")
    fit(x)
    fit(x)
    fit(x)
    assert len(functions) == 6 and all(f is functions[0] for f in functions)  # reused, not traced again
    assert callback.report is None
    model.fit(x, y, verbose=0)
    assert model.train_function is not functions[0]  # without the callback: the model's own
    # A recompile (new optimizer, loss) builds it again, and it explains with the new compilation.
    model.compile(optimizer=safegrad.SafeOptimizer(keras.optimizers.SGD(0.01), on_nonfinite="skip"), loss="mae")
    bad = x.copy()
    bad[3] = -1.0
    fit(bad)
    assert callback.report is not None and callback.report.op_type == "Log", str(callback.report)
    assert safegrad.step_state(model.optimizer).total_skips.numpy() == 1


@pytest.mark.skipif(not TF2, reason="Keras fit: TF2")
def test_explain_callback_explains_an_epochs_last_batch_at_its_end_and_changes_no_history():
    # The epoch's last batch is skipped: it is explained when the epoch ends (after the
    # validation pass; no later batch begins), and what fit reports is what it reports without
    # the callback.
    keras = tf.keras
    x, y = np.ones([8, 3], np.float32), np.zeros([8, 1], np.float32)
    x[7] = -1.0  # log of a negative: the batch [6:8]
    validation = (np.ones([4, 3], np.float32), np.zeros([4, 1], np.float32))
    seen_at_epoch_end = []

    class Probe(keras.callbacks.Callback):  # runs after ExplainCallback
        def on_epoch_end(self, epoch, logs=None):
            seen_at_epoch_end.append(explain.report is not None)

    def fit(callbacks):
        model = keras.Sequential([keras.layers.Dense(2, kernel_initializer="ones"), LogLayer(),
                                  keras.layers.Dense(1, kernel_initializer="ones")])
        optimizer = safegrad.SafeOptimizer(keras.optimizers.SGD(0.01), on_nonfinite="skip")
        model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
        history = model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0,
                            validation_data=validation, callbacks=callbacks)
        return history.history, model

    plain, _ = fit([])
    explain = safegrad.ExplainCallback()
    explained, model = fit([explain, Probe()])
    assert seen_at_epoch_end == [True]
    assert explain.report.op_type == "Log" and len(explain.reports) == 1, str(explain.report)
    assert sorted(explained) == sorted(plain)
    for key in plain:  # (the training loss averages the skipped batch's NaN, with or without it)
        np.testing.assert_allclose(explained[key], plain[key], rtol=1e-6)
    assert np.isfinite(explained["val_loss"]).all()
    assert safegrad.step_state(model.optimizer).total_skips.numpy() == 1


@pytest.mark.skipif(not TF2, reason="Keras fit: TF2")
def test_explain_callback_leaves_keras_batch_end_callbacks_asynchronous():
    # A batch-END hook would make every step wait for its logs as Python numbers: Keras 2 converts
    # the logs for a callback that does not take tensors, Keras 3 dispatches batch-end callbacks
    # synchronously (where it would dispatch them asynchronously). The callback explains a kept
    # batch before the next one instead.
    keras = tf.keras
    callback = safegrad.ExplainCallback()
    callbacks = keras.callbacks.CallbackList([callback])
    if hasattr(callbacks, "_async_train"):  # Keras 3
        if not keras.callbacks.CallbackList([])._async_train:
            pytest.skip("this Keras 3 calls batch-end hooks synchronously whatever the callbacks (its "
                        "TensorFlow backend is not marked thread-safe)")
        assert callbacks._async_train
    else:  # Keras 2: batch hooks are given the logs as tensors
        assert callback._supports_tf_logs
        assert getattr(callbacks, "_batch_hooks_support_tf_logs", True)  # (TF 2.5+)


@pytest.mark.skipif(not TF2, reason="Keras fit: TF2")
def test_explain_callback_needs_a_safe_optimizer():
    keras = tf.keras
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    with pytest.raises(ValueError, match=r"ExplainCallback explains the steps a safegrad.SafeOptimizer skipped"):
        model.fit(np.ones([2, 3]), np.ones([2, 1]), verbose=0, callbacks=[safegrad.ExplainCallback()])
