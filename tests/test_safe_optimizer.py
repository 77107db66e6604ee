"""SafeOptimizer: clip_and_apply semantics behind minimize / compute_gradients / apply_gradients."""

import inspect
import os
import pydoc
import re

import numpy as np
import pytest

import safegrad
from safegrad._keras_compat import optimizer_base
from safegrad._tf import TF_VERSION_STRING, tf, tf1

from helpers import KERAS_VERSION, OPTIMIZERS, TF2, LinearModel, named_in, optimizer_variables, snapshot

NAN = np.nan
X = np.array([3.0, 0.0, 4.0], np.float32)
Y = np.array([12.0], np.float32)
BAD = np.array([NAN, 1.0, 1.0], np.float32)


def minimize_step(mode, model, optimizer, **kwargs):
    """run(x, y) performing optimizer.minimize(loss, var_list, **kwargs)."""
    return mode.step(
        lambda x, y: optimizer.minimize(model.loss(x, y), var_list=model.variables, **kwargs), model.x0, model.y0
    )


def test_minimize_clips_like_numpy(mode):
    model = LinearModel(mode)
    optimizer = safegrad.SafeOptimizer(tf1.train.GradientDescentOptimizer(0.1), clip_norm=2.6)
    run = minimize_step(mode, model, optimizer)
    w0, b0 = model.values()
    run(X, Y)
    w1, b1 = model.values()
    np.testing.assert_allclose(w1, w0 - 0.1 * X * 0.2, rtol=1e-6)
    np.testing.assert_allclose(b1, b0 - 0.1 * Y * 0.2, rtol=1e-6)


def test_compute_then_apply_gradients(mode):
    model = LinearModel(mode)
    optimizer = safegrad.SafeOptimizer(
        tf1.train.GradientDescentOptimizer(0.1), per_variable_clip_norm=1.0, on_nonfinite="skip"
    )

    def body(x, y):
        grads_and_vars = optimizer.compute_gradients(model.loss(x, y), var_list=model.variables)
        doubled = [(2.0 * g, v) for g, v in grads_and_vars]  # user code between the two calls
        return optimizer.apply_gradients(doubled)

    run = mode.step(body, model.x0, model.y0)
    w0, b0 = model.values()
    run(X, Y)
    w1, b1 = model.values()
    np.testing.assert_allclose(w1, w0 - 0.1 * X / 5.0, rtol=1e-6)
    np.testing.assert_allclose(b1, b0 - 0.1 * 1.0, rtol=1e-6)
    run(BAD, Y)
    w2, b2 = model.values()
    assert w2.tobytes() == w1.tobytes() and b2.tobytes() == b1.tobytes()


def test_minimize_raise_names_variable_and_keeps_state(mode):
    inner = tf1.train.AdamOptimizer(0.01)
    model = LinearModel(mode, w_name="poisoned_weight")
    global_step = mode.variable(0, "global_step", dtype=tf.int64, trainable=False)
    optimizer = safegrad.SafeOptimizer(inner, clip_norm=1.0)
    run = minimize_step(mode, model, optimizer, global_step=global_step)
    run(X, Y)
    tracked = model.variables + optimizer_variables(inner) + [global_step]
    before = snapshot(mode, tracked)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(BAD, Y)
    assert named_in(info.value) == ["poisoned_weight (NaN)"]
    assert snapshot(mode, tracked) == before


def test_skip_with_global_step_and_slots(mode):
    inner = tf1.train.MomentumOptimizer(0.1, momentum=0.9)
    model = LinearModel(mode)
    global_step = mode.variable(0, "global_step", dtype=tf.int64, trainable=False)
    optimizer = safegrad.SafeOptimizer(inner, on_nonfinite="skip", max_consecutive_skips=3)
    run = minimize_step(mode, model, optimizer, global_step=global_step)
    run(X, Y)
    momentum_before = snapshot(mode, [inner.get_slot(model.w, "momentum")])
    run(BAD, Y)
    assert snapshot(mode, [optimizer.get_slot(model.w, "momentum")]) == momentum_before
    run(X, Y)
    assert mode.read(global_step) == 2
    state = optimizer.step_state
    assert mode.read([state.total_skips, state.consecutive_skips]) == [1, 0]


def test_attributes_pass_through():
    class Custom(tf1.train.GradientDescentOptimizer):
        schedule_name = "cosine"

    inner = Custom(0.1)
    optimizer = safegrad.SafeOptimizer(inner, clip_norm=1.0)
    assert optimizer.optimizer is inner
    assert optimizer.schedule_name == "cosine"
    assert optimizer.get_name() == "SafeGradientDescent"
    assert optimizer.policy.clip_norm == 1.0
    assert "SafeOptimizer(" in repr(optimizer)
    with pytest.raises(AttributeError):
        optimizer._not_forwarded  # noqa: B018  (private names are never forwarded)


def test_get_slot_names_are_the_inner_ones(graph_mode):
    model = LinearModel(graph_mode)
    inner = tf1.train.AdamOptimizer(0.01)
    optimizer = safegrad.SafeOptimizer(inner)
    minimize_step(graph_mode, model, optimizer)
    assert sorted(optimizer.inner_optimizer.get_slot_names()) == ["m", "v"]
    assert optimizer.get_slot_names() == []  # see SafeOptimizer: checkpoints must see slots once
    assert optimizer.get_slot(model.w, "m") is inner.get_slot(model.w, "m")
    names = [v.op.name for v in optimizer.variables()]
    assert any(n.endswith("total_skips") for n in names)


def test_rejects_what_it_cannot_wrap_naming_what_this_tensorflow_supports():
    with pytest.raises(TypeError) as info:
        safegrad.SafeOptimizer("sgd")
    message = str(info.value)
    assert message.startswith(
        "`optimizer` must be, with TensorFlow {}, a tf.compat.v1.train.Optimizer".format(TF_VERSION_STRING)
    ), message
    assert message.endswith("Received: optimizer='sgd' (a string; pass an optimizer object)"), message
    if not TF2:
        assert "Keras" not in message
    elif KERAS_VERSION == 3:
        assert "Optimizer or a Keras 3 optimizer (tf.keras.optimizers.*)." in message
    elif "keras-legacy-sgd" in OPTIMIZERS:
        assert (
            "Optimizer, a Keras 2.11+ optimizer (tf.keras.optimizers.*) or a Keras OptimizerV2 "
            "(tf.keras.optimizers.legacy.*)." in message
        )
    else:
        assert "Optimizer or a Keras OptimizerV2 (tf.keras.optimizers.*)." in message
    with pytest.raises(TypeError, match="`optimizer` must be, with TensorFlow"):
        safegrad.clip_and_apply(object(), lambda: 0.0)


@pytest.mark.skipif(TF2, reason="the Keras OptimizerV2 of TF 1.x")
def test_tf1_keras_optimizer_is_refused_as_such(graph_mode):
    w = tf1.Variable([1.0])
    expected = (
        "`optimizer` is a Keras OptimizerV2 of TensorFlow 1.x (tf.keras.optimizers), which safegrad "
        "does not support: on TensorFlow {} use a tf.compat.v1.train.Optimizer (e.g. "
        "tf.compat.v1.train.AdamOptimizer). Received: optimizer=<".format(TF_VERSION_STRING)
    )
    with pytest.raises(TypeError, match=re.escape(expected)):
        safegrad.SafeOptimizer(tf1.keras.optimizers.Adam())
    with pytest.raises(TypeError, match=re.escape(expected)):
        safegrad.clip_and_apply(tf1.keras.optimizers.Adam(), tf.reduce_sum(w), [w])


def test_double_wrapping_is_refused():
    inner = tf1.train.GradientDescentOptimizer(0.1)
    wrapped = safegrad.SafeOptimizer(inner)
    assert wrapped.inner_optimizer is inner and wrapped.optimizer is inner
    expected = "already a safegrad.SafeOptimizer, which checks and clips by itself; wrapping it twice"
    with pytest.raises(TypeError, match=expected):
        safegrad.SafeOptimizer(wrapped)
    with pytest.raises(ValueError, match="already wrapped by another safegrad.SafeOptimizer"):
        safegrad.SafeOptimizer(inner)
    with pytest.raises(TypeError, match="pass its `inner_optimizer` to clip_and_apply"):
        w = tf1.Variable(1.0) if not TF2 else tf.Variable(1.0)
        safegrad.clip_and_apply(wrapped, lambda: w * 2.0, [w])
    with pytest.raises(ValueError, match="`clip_norm` must be > 0 and finite. Received: clip_norm=0"):
        safegrad.SafeOptimizer(tf1.train.GradientDescentOptimizer(0.1), clip_norm=0)


def test_help_shows_the_real_signature_and_both_apis():
    assert list(inspect.signature(safegrad.SafeOptimizer).parameters) == [
        "optimizer", "clip_norm", "per_variable_clip_norm", "clip_value", "on_nonfinite",
        "max_consecutive_skips", "tf_compatible_norm", "name",
    ]
    text = pydoc.render_doc(safegrad.SafeOptimizer, renderer=pydoc.plaintext)
    assert "SafeOptimizer(optimizer, clip_norm=None, per_variable_clip_norm=None" in text
    assert "use_locking" not in text  # none of TF's inherited Optimizer docstring
    assert "tf.compat.v1.train.Optimizer" in text and "tf.keras" in text


@pytest.mark.skipif(not TF2, reason="Keras optimizers: TF2")
def test_keras_optimizer_gets_a_keras_optimizer_back():
    inner = tf.keras.optimizers.SGD(0.1)
    wrapped = safegrad.SafeOptimizer(inner, clip_norm=1.0)
    assert isinstance(wrapped, optimizer_base(type(inner)))  # what compile() requires
    assert not isinstance(wrapped, safegrad.SafeOptimizer)
    assert wrapped.inner_optimizer is inner


# Saving and restoring ----------------------------------------------------------------------------


def _train_graph(checkpoint_dir, steps):
    """A TF1 training graph with SafeOptimizer(skip); returns (graph, fetches)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [3])
        w = tf1.Variable([1.0, 2.0, 3.0], name="w")
        global_step = tf1.train.get_or_create_global_step()
        optimizer = safegrad.SafeOptimizer(tf1.train.AdamOptimizer(0.1), on_nonfinite="skip")
        train_op = optimizer.minimize(tf.reduce_sum(w * x), global_step=global_step)
        state = optimizer.step_state
    return graph, x, w, global_step, train_op, state


def test_saver_saves_and_restores_counters(tmp_path):
    graph, x, w, global_step, train_op, state = _train_graph(None, 0)
    path = str(tmp_path / "model.ckpt")
    with graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for feed in (X, BAD, BAD, X):
            sess.run(train_op, {x: feed})
        saved = sess.run([w, global_step, state.total_skips, state.consecutive_skips])
        tf1.train.Saver().save(sess, path)
    assert saved[1:] == [2, 2, 0]
    graph2, x2, w2, global_step2, train_op2, state2 = _train_graph(None, 0)
    with graph2.as_default(), tf1.Session() as sess:
        tf1.train.Saver().restore(sess, path)
        restored = sess.run([w2, global_step2, state2.total_skips, state2.consecutive_skips])
    np.testing.assert_array_equal(restored[0], saved[0])
    assert restored[1:] == saved[1:]


def test_monitored_training_session(tmp_path):
    graph, x, w, global_step, train_op, state = _train_graph(None, 0)
    with graph.as_default():
        hooks = [tf1.train.StopAtStepHook(last_step=4)]
        feeds = iter([X, BAD, X, BAD, BAD, X, X, X])
        runs = 0
        with tf1.train.MonitoredTrainingSession(checkpoint_dir=str(tmp_path), hooks=hooks) as sess:
            while not sess.should_stop():
                sess.run(train_op, {x: next(feeds)})
                runs += 1
    assert runs == 7  # 4 applied steps + 3 skipped ones
    checkpoint = tf1.train.latest_checkpoint(str(tmp_path))
    assert tf1.train.load_variable(checkpoint, "global_step") == 4
    names = dict(tf1.train.list_variables(checkpoint))
    total = [n for n in names if n.endswith("total_skips")]
    assert total and tf1.train.load_variable(checkpoint, total[0]) == 3


@pytest.mark.skipif(not TF2, reason="tf.train.Checkpoint object graphs: TF2")
def test_tf2_checkpoint_tracks_counters_and_inner_slots(tmp_path):
    w = tf.Variable([1.0, 2.0, 3.0])
    optimizer = safegrad.SafeOptimizer(tf1.train.AdamOptimizer(0.1), on_nonfinite="skip")
    for feed in (X, BAD, X):
        optimizer.minimize(lambda feed=feed: tf.reduce_sum(w * feed), var_list=[w])
    path = tf.train.Checkpoint(w=w, optimizer=optimizer).save(os.path.join(str(tmp_path), "ckpt"))

    w2 = tf.Variable([0.0, 0.0, 0.0])
    optimizer2 = safegrad.SafeOptimizer(tf1.train.AdamOptimizer(0.1), on_nonfinite="skip")
    optimizer2.minimize(lambda: tf.reduce_sum(w2 * X), var_list=[w2])  # create slots to restore into
    tf.train.Checkpoint(w=w2, optimizer=optimizer2).restore(path)
    assert int(optimizer2.step_state.total_skips.numpy()) == 1
    np.testing.assert_array_equal(w2.numpy(), w.numpy())
    np.testing.assert_array_equal(
        optimizer2.get_slot(w2, "m").numpy(), optimizer.get_slot(w, "m").numpy()
    )


@pytest.mark.skipif(not TF2, reason="tf.train.Checkpoint object graphs: TF2")
def test_tf2_checkpoint_of_keras_optimizer_keeps_clip_and_apply_counters(tmp_path):
    w = tf.Variable([1.0, 2.0, 3.0])
    optimizer = tf.keras.optimizers.SGD(0.1)
    for feed in (X, BAD, BAD):
        safegrad.clip_and_apply(optimizer, lambda feed=feed: tf.reduce_sum(w * feed), [w], on_nonfinite="skip")
    path = tf.train.Checkpoint(optimizer=optimizer).save(os.path.join(str(tmp_path), "ckpt"))
    optimizer2 = tf.keras.optimizers.SGD(0.1)
    safegrad.step_state(optimizer2)  # exists before restore (else restored lazily on creation)
    tf.train.Checkpoint(optimizer=optimizer2).restore(path)
    state = safegrad.step_state(optimizer2)
    assert [int(state.total_skips.numpy()), int(state.consecutive_skips.numpy())] == [2, 2]


def _traces_of_a_step(optimizer):
    """How many times a tf.function step applying with ``optimizer`` is traced over 3 calls."""
    w = tf.Variable([1.0, 2.0, 3.0], name="w")
    traces = []

    @tf.function
    def step(x):
        traces.append(1)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w * x)
        optimizer.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
        return loss

    for _ in range(3):
        step(tf.constant([1.0, 2.0, 3.0]))
    return len(traces)


@pytest.mark.skipif(not TF2, reason="tf.function: TF2")
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_a_function_using_safe_optimizer_is_traced_no_more_than_without(opt_name):
    # safegrad's counters are created with the wrapper (eagerly), not in the function's first
    # call: no extra trace. (Optimizers that create their own slots in the first call - v1 Adam,
    # Keras 2.11+ - cost themselves one retrace, with or without safegrad.)
    plain = _traces_of_a_step(OPTIMIZERS[opt_name]())
    safe = _traces_of_a_step(safegrad.SafeOptimizer(OPTIMIZERS[opt_name](), clip_norm=1.0))
    assert safe == plain, (safe, plain)
    if opt_name == "v1-sgd":  # no variable of its own: one trace
        assert safe == 1
