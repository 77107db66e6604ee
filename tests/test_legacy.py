"""Legacy TF1 code adopts safegrad without breaking what is around it.

Variable names (so checkpoints), the ``train_op`` collection, meta graph round trips,
``MonitoredTrainingSession`` restarts, checkpoints written before safegrad was added (and
rollback), this step's norm in the same ``Session.run``, the gradient options of
``compute_gradients``, callable losses with ref variables, and TensorFlow's own norm of
IndexedSlices for exact reproduction. Every test builds a TF1-style graph (every env).
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import safegrad
from safegrad._tf import tf, tf1

from helpers import OPTIMIZERS, TF2, V1_OPTIMIZERS, new_optimizer, np_norm, runs_in_v1_graph

GRAPH_OPTIMIZERS = V1_OPTIMIZERS + [
    n for n in sorted(OPTIMIZERS) if n.startswith("keras") and runs_in_v1_graph(OPTIMIZERS[n]())
]
X = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
IDS = np.array([0, 0, 3], np.int32)  # repeated id: embeddings' IndexedSlices gradient


class Model:
    """A small TF1-style model in its own graph: a dense weight and an embedding table, built in
    a name scope as legacy code does; ``x`` and ``ids`` are fed."""

    def __init__(self, ref=False):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = tf1.placeholder(tf.float32, [None, 2], name="x")
            self.ids = tf1.placeholder(tf.int32, [None], name="ids")
            with tf1.variable_scope("model"):
                kwargs = {"use_resource": False} if ref else {}
                self.w = tf1.get_variable("w", initializer=np.array([[0.5], [-0.5]], np.float32), **kwargs)
                self.table = tf1.get_variable("table", initializer=np.ones([5, 2], np.float32), **kwargs)
            self.global_step = tf1.train.get_or_create_global_step()

    def loss(self):
        embedded = tf.reduce_sum(tf.gather(self.table, self.ids))
        return tf.reduce_sum(tf.square(tf.matmul(self.x, self.w))) + embedded

    def feed(self, x=X, ids=IDS):
        return {self.x: x, self.ids: ids}


def build(model, optimizer_name, how, **kwargs):
    """The train op of ``model``, built in name scope "train" as a legacy script would."""
    with model.graph.as_default(), tf1.name_scope("train"):
        optimizer = new_optimizer(optimizer_name, 0.1)
        v1 = isinstance(optimizer, tf1.train.Optimizer)
        step = {"global_step": model.global_step} if v1 else {}
        if how == "plain":
            if v1:
                return optimizer.minimize(model.loss(), **step), optimizer
            variables = [model.w, model.table]
            return optimizer.apply_gradients(zip(tf.gradients(model.loss(), variables), variables)), optimizer
        if how == "clip_and_apply":
            return safegrad.clip_and_apply(optimizer, model.loss(), clip_norm=5.0, **step, **kwargs), optimizer
        wrapped = safegrad.SafeOptimizer(optimizer, clip_norm=5.0, **kwargs)
        if v1:
            return wrapped.minimize(model.loss(), **step), wrapped
        variables = [model.w, model.table]
        return wrapped.apply_gradients(zip(tf.gradients(model.loss(), variables), variables)), wrapped


def variable_names(graph):
    return sorted(v.op.name for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES))


@pytest.mark.parametrize("policy", ["raise", "skip"])
@pytest.mark.parametrize("how", ["clip_and_apply", "SafeOptimizer"])
@pytest.mark.parametrize("optimizer_name", GRAPH_OPTIMIZERS)
def test_adding_safegrad_renames_no_variable(optimizer_name, how, policy):
    plain = Model()
    build(plain, optimizer_name, "plain")
    safe = Model()
    build(safe, optimizer_name, how, on_nonfinite=policy)
    before, after = variable_names(plain.graph), variable_names(safe.graph)
    assert len(before) >= 3  # the model, global_step and the optimizer's own variables (SGD: none)
    assert [n for n in after if not n.startswith("safegrad_state/")] == before
    assert {n.rsplit("/", 1)[1] for n in after if n.startswith("safegrad_state/")} == {
        "consecutive_skips", "total_skips", "global_norm", "clipped", "skipped", "steps",
        "clipped_steps", "global_norm_sum", "overflow_skips",
    }


@pytest.mark.parametrize("how", ["clip_and_apply", "SafeOptimizer"])
def test_the_train_op_collection_holds_the_returned_op_and_nothing_inside_the_cond(how):
    model = Model()
    with model.graph.as_default():
        earlier = tf.no_op(name="earlier")
        tf1.add_to_collection(tf1.GraphKeys.TRAIN_OP, earlier)
    train_op, _ = build(model, "v1-adam", how, on_nonfinite="skip")
    assert model.graph.get_collection(tf1.GraphKeys.TRAIN_OP) == [earlier, train_op]


def test_meta_graph_round_trip_finds_the_train_op_state_and_outputs(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    model = Model()
    train_op, optimizer = build(model, "v1-adam", "clip_and_apply", on_nonfinite="skip")
    with model.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        sess.run(train_op, model.feed())
        sess.run(train_op, model.feed(x=np.full_like(X, np.nan)))  # skipped
        saver = tf1.train.Saver()
        saver.save(sess, prefix)  # writes model.ckpt.meta too
        expected = sess.run([model.w, safegrad.step_state(optimizer).total_skips])

    with tf.Graph().as_default() as graph, tf1.Session() as sess:
        restorer = tf1.train.import_meta_graph(prefix + ".meta")
        restorer.restore(sess, prefix)
        (train_op,) = graph.get_collection(tf1.GraphKeys.TRAIN_OP)
        state = safegrad.find_step_state()
        assert state.scope == "safegrad_state/Adam"
        (w,) = [v for v in tf1.global_variables() if v.op.name == "model/w"]
        np.testing.assert_array_equal(sess.run(w), expected[0])
        assert sess.run(state.total_skips) == expected[1] == 1
        feed = {graph.get_tensor_by_name("x:0"): X, graph.get_tensor_by_name("ids:0"): IDS}
        outputs = safegrad.step_outputs(train_op)
        _, norm, applied = sess.run([train_op, outputs.global_norm, outputs.applied], feed)
        assert applied and np.isfinite(norm)
        assert sess.run([state.steps, state.total_skips, state.consecutive_skips]) == [3, 1, 0]


def test_find_step_state_says_what_the_graph_has():
    model = Model()
    with model.graph.as_default():
        with pytest.raises(ValueError, match=r"The graph has no safegrad state: no clip_and_apply"):
            safegrad.find_step_state()
    build(model, "v1-adam", "clip_and_apply")
    build(model, "v1-momentum", "SafeOptimizer")
    with model.graph.as_default():
        with pytest.raises(ValueError, match=re.escape(
            "The graph has several safegrad states, one per optimizer: ['safegrad_state/Adam', "
            "'safegrad_state/SafeMomentum']. Pass scope= to choose one."
        )):
            safegrad.find_step_state()
        with pytest.raises(ValueError, match=re.escape("Received: scope='Adam'")):
            safegrad.find_step_state("Adam")
        assert safegrad.find_step_state("safegrad_state/SafeMomentum").scope == "safegrad_state/SafeMomentum"


def _monitored_steps(checkpoint_dir, feeds, saver=None):
    """Builds the model with safegrad, runs ``feeds`` in a MonitoredTrainingSession; returns the
    counters and w at the end."""
    model = Model()
    train_op, optimizer = build(model, "v1-adam", "clip_and_apply", on_nonfinite="skip")
    with model.graph.as_default():
        state = safegrad.step_state(optimizer)
        scaffold = tf1.train.Scaffold(saver=saver()) if saver else None
        with tf1.train.MonitoredTrainingSession(
            checkpoint_dir=checkpoint_dir, scaffold=scaffold, save_checkpoint_steps=1,
            save_summaries_steps=None, log_step_count_steps=None,
        ) as sess:
            for feed in feeds:
                sess.run(train_op, model.feed(**feed))
            return sess.run([state.total_skips, state.steps, model.global_step]), sess.run(model.w)


def test_monitored_training_session_restart_continues_the_counters(tmp_path):
    nan = {"x": np.full_like(X, np.nan)}
    (skips, steps, global_step), _ = _monitored_steps(str(tmp_path), [{}, nan, {}])
    assert (skips, steps, global_step) == (1, 3, 2)
    (skips, steps, global_step), _ = _monitored_steps(str(tmp_path), [nan, {}])
    assert (skips, steps, global_step) == (2, 5, 3)


def _plain_checkpoint(prefix, optimizer_name="v1-adam", steps=2):
    """A checkpoint written by the model WITHOUT safegrad; returns w after ``steps`` steps."""
    model = Model()
    train_op, _ = build(model, optimizer_name, "plain")
    with model.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for _ in range(steps):
            sess.run(train_op, model.feed())
        tf1.train.Saver().save(sess, prefix)
        return sess.run(model.w)


def test_resume_from_a_checkpoint_written_before_safegrad(tmp_path):
    prefix = str(tmp_path / "before.ckpt")
    w_before = _plain_checkpoint(prefix)
    model = Model()
    train_op, optimizer = build(model, "v1-adam", "clip_and_apply", on_nonfinite="skip")
    with model.graph.as_default(), tf1.Session() as sess:
        state = safegrad.step_state(optimizer)
        with pytest.raises(tf.errors.NotFoundError, match="safegrad_state/Adam"):
            tf1.train.Saver().restore(sess, prefix)  # what a plain Saver says
        safegrad.Saver().restore(sess, prefix)
        np.testing.assert_array_equal(sess.run(model.w), w_before)
        assert sess.run([state.total_skips, state.steps, model.global_step]) == [0, 0, 2]
        (adam_m,) = [v for v in tf1.global_variables() if v.op.name == "model/w/Adam"]
        assert np.any(sess.run(adam_m) != 0)  # the optimizer's slots came from the checkpoint
        sess.run(train_op, model.feed())
        assert sess.run([state.steps, model.global_step]) == [1, 3]


def test_monitored_training_session_resumes_a_checkpoint_written_before_safegrad(tmp_path):
    w_before = _plain_checkpoint(os.path.join(str(tmp_path), "model.ckpt-2"))
    with open(os.path.join(str(tmp_path), "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt-2"\n')
    nan = {"x": np.full_like(X, np.nan)}
    (skips, steps, global_step), w = _monitored_steps(str(tmp_path), [nan], saver=safegrad.Saver)
    assert (skips, steps, global_step) == (1, 1, 2)  # counters from zero, global_step restored
    np.testing.assert_array_equal(w, w_before)  # the skipped step changed nothing
    # (A skipped step does not advance global_step, so no checkpoint was written for it.)
    (skips, steps, global_step), _ = _monitored_steps(str(tmp_path), [nan, {}], saver=safegrad.Saver)
    assert (skips, steps, global_step) == (1, 2, 3)
    (skips, steps, global_step), _ = _monitored_steps(str(tmp_path), [{}], saver=safegrad.Saver)
    assert (skips, steps, global_step) == (1, 3, 4)  # now the checkpoints carry the counters


def test_supervisor_resumes_a_checkpoint_written_before_safegrad(tmp_path):
    # tf.train.Supervisor: what the PTB model's main() uses.
    w_before = _plain_checkpoint(os.path.join(str(tmp_path), "model.ckpt-2"))
    with open(os.path.join(str(tmp_path), "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt-2"\n')
    model = Model()
    train_op, optimizer = build(model, "v1-adam", "clip_and_apply", on_nonfinite="skip")
    with model.graph.as_default():
        state = safegrad.step_state(optimizer)
        supervisor = tf1.train.Supervisor(logdir=str(tmp_path), saver=safegrad.Saver(), save_model_secs=0,
                                          save_summaries_secs=0)
        with supervisor.managed_session() as sess:
            np.testing.assert_array_equal(sess.run(model.w), w_before)
            assert sess.run([state.total_skips, model.global_step]) == [0, 2]
            sess.run(train_op, model.feed())
            assert sess.run([state.steps, model.global_step]) == [1, 3]


def test_rollback_a_checkpoint_written_with_safegrad_restores_without_it(tmp_path):
    prefix = str(tmp_path / "with.ckpt")
    model = Model()
    train_op, _ = build(model, "v1-adam", "SafeOptimizer", on_nonfinite="skip")
    with model.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        sess.run(train_op, model.feed())
        tf1.train.Saver().save(sess, prefix)
        w_with = sess.run(model.w)
    plain = Model()
    build(plain, "v1-adam", "plain")
    with plain.graph.as_default(), tf1.Session() as sess:
        tf1.train.Saver().restore(sess, prefix)
        np.testing.assert_array_equal(sess.run(plain.w), w_with)
        assert sess.run(plain.global_step) == 1


def test_this_steps_norm_is_fetched_in_the_same_run():
    model = Model()
    train_op, _ = build(model, "v1-sgd", "clip_and_apply", on_nonfinite="skip")
    outputs = safegrad.step_outputs(train_op)
    with model.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for _ in range(3):
            w = sess.run(model.w)
            _, norm, applied, clipped = sess.run(
                [train_op, outputs.global_norm, outputs.applied, outputs.clipped], model.feed()
            )
            grad_w = 2 * X.T @ (X @ w)  # d/dw sum((Xw)^2)
            dense_table = np.zeros([5, 2])
            np.add.at(dense_table, IDS, 1.0)
            np.testing.assert_allclose(norm, np_norm(grad_w, dense_table), rtol=1e-5)
            assert applied and clipped == (norm > 5.0)
        _, norm, applied, clipped = sess.run(
            [train_op, outputs.global_norm, outputs.applied, outputs.clipped], model.feed(x=np.full_like(X, np.inf))
        )
        assert not applied and not clipped and not np.isfinite(norm)


def test_step_outputs_refuses_what_is_not_a_graph_step():
    model = Model()
    with model.graph.as_default():
        with pytest.raises(TypeError, match="was not built by safegrad.clip_and_apply"):
            safegrad.step_outputs(tf.no_op())
    with pytest.raises(TypeError, match="must be the op a safegrad step returned in a tf.compat.v1 graph"):
        safegrad.step_outputs(tf.constant(True))


GATE = tf1.train.Optimizer


@pytest.mark.parametrize("options", [
    {"colocate_gradients_with_ops": True},
    {"gate_gradients": GATE.GATE_GRAPH},
    {"gate_gradients": GATE.GATE_NONE, "aggregation_method": tf.AggregationMethod.EXPERIMENTAL_TREE},
    {"grad_loss": 2.0},
], ids=["colocate", "gate_graph", "aggregation", "grad_loss"])
@pytest.mark.parametrize("optimizer_name", ["v1-sgd"] + [n for n in GRAPH_OPTIMIZERS if n.endswith("keras-sgd")])
def test_gradient_options_of_compute_gradients_pass_through(optimizer_name, options):
    model = Model()
    train_op, _ = build(model, optimizer_name, "clip_and_apply", on_nonfinite="skip", **options)
    with model.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        w0 = sess.run(model.w)
        _, norm = sess.run([train_op, safegrad.step_outputs(train_op).global_norm], model.feed())
        factor = options.get("grad_loss", 1.0)
        grad_w = factor * 2 * X.T @ (X @ w0)
        dense_table = np.zeros([5, 2])
        np.add.at(dense_table, IDS, factor)
        expected = np_norm(grad_w, dense_table)
        np.testing.assert_allclose(norm, expected, rtol=1e-5)
        scale = min(1.0, 5.0 / expected)
        np.testing.assert_allclose(sess.run(model.w), w0 - 0.1 * scale * grad_w, rtol=1e-5)


def test_gradient_options_are_validated(graph_mode):
    w = tf1.Variable([1.0])
    loss = tf.reduce_sum(w * w)
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    before = len(tf1.get_default_graph().get_operations())
    for kwargs, error, message in [
        ({"gate_gradients": True}, ValueError, "`gate_gradients` must be tf.compat.v1.train.Optimizer.GATE_NONE"),
        ({"gate_gradients": 7}, ValueError, "Received: gate_gradients=7"),
        ({"aggregation_method": "tree"}, ValueError, "`aggregation_method` must be one of tf.AggregationMethod"),
        ({"colocate_gradients_with_ops": 1}, TypeError, "`colocate_gradients_with_ops` must be a bool or None"),
        ({"grad_loss": "2"}, TypeError, "`grad_loss` must be a tensor"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            safegrad.clip_and_apply(optimizer, loss, [w], **kwargs)
    assert len(tf1.get_default_graph().get_operations()) == before


@pytest.mark.skipif(not TF2, reason="GradientTape: TF2")
def test_tape_gradients_refuse_the_options_of_tf_gradients_but_take_grad_loss():
    w = tf.Variable([1.0, 2.0])
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    with pytest.raises(ValueError, match=re.escape(
        "`colocate_gradients_with_ops` is an option of tf.gradients: it applies to a loss tensor in a "
        "graph, but here the gradients come from a GradientTape"
    )):
        safegrad.clip_and_apply(optimizer, lambda: tf.reduce_sum(w * w), [w], colocate_gradients_with_ops=True)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w * w)
    safegrad.clip_and_apply(optimizer, loss, [w], tape=tape, grad_loss=tf.constant(3.0))
    np.testing.assert_allclose(w.numpy(), [1.0 - 0.1 * 3 * 2.0, 2.0 - 0.1 * 3 * 4.0], rtol=1e-6)


REF_VARIABLES_SCRIPT = """
import numpy as np
import tensorflow.compat.v1 as tf
if tf.__version__.startswith("2."):
    tf.disable_v2_behavior()  # the TF2 way to run TF1 code: ref variables, TF1 control flow
import safegrad

x = tf.placeholder(tf.float32, [2])
w = tf.Variable([1.0, 2.0], name="w")
assert "Ref" in type(w).__name__, type(w)
for optimizer in (tf.train.GradientDescentOptimizer(0.1), tf.train.AdamOptimizer(0.1)):
    train_op = safegrad.clip_and_apply(optimizer, lambda: tf.reduce_sum(w * x), [w], on_nonfinite="skip")
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(train_op, {x: [1.0, 1.0]})
        moved = sess.run(w)
        sess.run(train_op, {x: [np.nan, 1.0]})
        assert np.array_equal(sess.run(w), moved) and not np.array_equal(moved, [1.0, 2.0]), moved
print("ok")
"""


def test_callable_loss_with_ref_variables_in_a_graph():
    # TF 1.15's default tf.Variable, and TF 2.x after disable_v2_behavior(): a fresh process.
    result = subprocess.run(
        [sys.executable, "-c", REF_VARIABLES_SCRIPT], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.skipif(not TF2, reason="TF2 control flow")
@pytest.mark.parametrize("optimizer_name", ["v1-sgd", "v1-adam", "v1-momentum"])
def test_ref_variables_skip_under_tf2_control_flow(optimizer_name):
    # A Session graph's skip decision captures nothing, so ref variables (use_resource=False)
    # work with TF2 control flow on (a tf.cond branch function could not take them).
    assert tf1.control_flow_v2_enabled()
    model = Model(ref=True)
    train_op, optimizer = build(model, optimizer_name, "clip_and_apply", on_nonfinite="skip")
    with model.graph.as_default(), tf1.Session() as sess:
        state = safegrad.step_state(optimizer)
        sess.run(tf1.global_variables_initializer())
        before = sess.run([model.w, model.table])
        sess.run(train_op, model.feed())
        moved = sess.run([model.w, model.table])
        assert not np.array_equal(moved[0], before[0]) and not np.array_equal(moved[1], before[1])
        sess.run(train_op, model.feed(x=[[np.nan, 1.0]]))
        after = sess.run([model.w, model.table])
        assert all(np.array_equal(a, b) for a, b in zip(after, moved))
        assert sess.run([state.total_skips, model.global_step]) == [1, 1]


@pytest.mark.parametrize("optimizer_name", [n for n in sorted(OPTIMIZERS) if not runs_in_v1_graph(OPTIMIZERS[n]())])
def test_safe_optimizer_refuses_keras_optimizers_that_cannot_run_in_a_graph(optimizer_name, graph_mode):
    optimizer = OPTIMIZERS[optimizer_name]()
    with pytest.raises(ValueError, match=r"`optimizer` is a Keras (3|2\.11\+) optimizer: .*tf\.compat\.v1 graph"):
        safegrad.SafeOptimizer(optimizer)


# TensorFlow's own norm of IndexedSlices, for exact reproduction ----------------------------------


def _trajectory(optimizer_name, how, steps=4, **kwargs):
    """w and table after each step, with TF's own clipping ("tf") or safegrad."""
    model = Model()
    with model.graph.as_default():
        optimizer = new_optimizer(optimizer_name, 0.1)
        loss = model.loss()
        variables = [model.w, model.table]
        if how == "tf":
            grads, _ = tf.clip_by_global_norm(tf.gradients(loss, variables), 2.0)
            train_op = optimizer.apply_gradients(zip(grads, variables))
        else:
            train_op = safegrad.clip_and_apply(optimizer, loss, variables, clip_norm=2.0, **kwargs)
        out = []
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            for _ in range(steps):
                sess.run(train_op, model.feed())
                out.append([v.tobytes() for v in sess.run(variables)])
        return out


@pytest.mark.parametrize("optimizer_name", ["v1-sgd", "v1-adam", "v1-momentum"])
def test_tf_compatible_norm_reproduces_tf_clip_by_global_norm_bit_for_bit(optimizer_name):
    reference = _trajectory(optimizer_name, "tf")
    assert _trajectory(optimizer_name, "safegrad", tf_compatible_norm=True) == reference
    # The default counts the embedding's repeated id as the dense gradient does: another norm.
    assert _trajectory(optimizer_name, "safegrad")[0] != reference[0]


def test_tf_compatible_norm_of_the_building_blocks(mode):
    slices = (np.ones([2, 1], np.float32), np.array([0, 0], np.int32))

    def body(values, indices):
        g = tf.IndexedSlices(values, indices, tf.constant([3, 1]))
        clipped, norm = safegrad.clip_by_global_norm([g], 1.0, tf_compatible_norm=True)
        tf_clipped, tf_norm = tf.clip_by_global_norm([g], 1.0)
        return (safegrad.global_norm([g]), safegrad.global_norm([g], tf_compatible_norm=True), norm, tf_norm,
                clipped[0].values, tf_clipped[0].values)

    dense, compatible, norm, tf_norm, clipped, tf_clipped = mode.run(body, *slices)
    np.testing.assert_allclose(dense, 2.0, rtol=1e-6)  # the dense gradient [2]
    assert compatible == norm == tf_norm == np.float32(np.sqrt(2.0))  # TF counts each slice
    assert clipped.tobytes() == tf_clipped.tobytes()
    expected = "`tf_compatible_norm` must be True or False. Received: tf_compatible_norm='yes'"
    with pytest.raises(TypeError, match=re.escape(expected)):
        safegrad.global_norm([tf.constant([1.0])], tf_compatible_norm="yes")


# The Session graph's skip decision (graph_cond) ----------------------------------------------


class _CountingSGD(tf1.train.GradientDescentOptimizer):
    """Gradient descent whose update also counts itself with an op that reads no gradient."""

    def __init__(self, counter):
        super().__init__(0.1)
        self.counter = counter

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        update = super().apply_gradients(grads_and_vars, global_step, name)
        return tf.group(update, self.counter.assign_add(1))


@pytest.mark.parametrize("limit", [None, 1])
def test_a_skipped_step_runs_none_of_the_update_even_ops_that_read_no_gradient(limit):
    model = Model()
    with model.graph.as_default():
        counter = tf1.Variable(0, dtype=tf.int64, name="updates", use_resource=True)
        optimizer = _CountingSGD(counter)
        train_op = safegrad.clip_and_apply(
            optimizer, model.loss(), clip_norm=5.0, global_step=model.global_step, on_nonfinite="skip",
            max_consecutive_skips=limit,
        )
        state = safegrad.step_state(optimizer)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(train_op, model.feed())
            moved = sess.run(model.w)
            sess.run(train_op, model.feed(x=[[np.nan, 1.0]]))
            assert np.array_equal(sess.run(model.w), moved)
            assert sess.run([counter, model.global_step, state.total_skips]) == [1, 1, 1]
            sess.run(train_op, model.feed())
            assert sess.run([counter, model.global_step, state.total_skips, state.consecutive_skips]) == [2, 2, 1, 0]
