"""Why did it go NaN: the replay report (first op, its type, this file's line, inputs, cause),
the skip log, and the step number in raise errors - in a Session, tf.function and eagerly."""

import io
import logging
import os

import numpy as np
import pytest

import safegrad
from helpers import TF2
from safegrad._tf import tf, tf1

HERE = os.path.basename(__file__)


# Each scenario: a loss of (x, w) whose first NaN/Inf is born at the function's second line.


def log_of_zero(x, w):
    return tf.reduce_sum(tf.math.log(x * w))


def division_by_zero(x, w):
    return tf.reduce_sum(w / x)


def sqrt_of_negative(x, w):
    return tf.reduce_sum(tf.sqrt(x * w))


def sqrt_at_zero_gradient(x, w):
    return tf.reduce_sum(tf.sqrt(x * w)) + 1.0  # finite loss; d/dw sqrt(0) is Inf


def exp_overflow(x, w):
    return tf.reduce_sum(tf.exp(x * w))


def log_in_cond(x, w):
    return tf.reduce_sum(tf.cond(tf.reduce_sum(x) > -1e9,
                                 lambda: tf.math.log(x * w),  # the branch's own line is named
                                 lambda: x * w))


def sqrt_in_while_loop(x, w):
    return tf.reduce_sum(tf.while_loop(lambda i, h: i < 3,
                                       lambda i, h: (i + 1, tf.sqrt(h - 2.0)),  # the body's line
                                       [0, x * w])[1])


def squared_weights(x, w):
    return tf.reduce_sum(w * w * x)


def cross_entropy_on_data(x, w):
    labels = tf.one_hot([0, 1], 3)
    return tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=x + w))


W0 = np.ones([2, 3], np.float32)
SCENARIOS = {
    # name: (loss, bad input x, expected op type, backward?, words expected in the cause)
    "log": (log_of_zero, [[1, 0, 1], [1, 1, 1]], "Log", False, "log of a value <= 0"),
    "div": (division_by_zero, [[1, 0, 1], [1, 1, 1]], "RealDiv", False, "division by zero"),
    "sqrt": (sqrt_of_negative, [[1, -4, 1], [1, 1, 1]], "Sqrt", False, "sqrt of a negative"),
    "sqrt-grad": (sqrt_at_zero_gradient, [[1, 0, 1], [1, 1, 1]], "SqrtGrad", True, "gradient of sqrt"),
    "exp": (exp_overflow, [[1, 200, 1], [1, 1, 1]], "Exp", False, "overflow"),
    "cond": (log_in_cond, [[1, 0, 1], [1, 1, 1]], "Log", False, "log of a value <= 0"),
    "while": (sqrt_in_while_loop, [[1, 0.5, 1], [1, 1, 1]], "Sqrt", False, "sqrt of a negative"),
    "data": (cross_entropy_on_data, [[1, 1, 1], [1, np.nan, 1]], None, False, "input data"),
}


def expected_line(loss_fn):
    """file:line of the op: the function's second line, or the line commented 'line' or 'named'."""
    lines = open(__file__).read().splitlines()
    first = loss_fn.__code__.co_firstlineno
    for offset in range(1, 5):
        if "# the " in lines[first - 1 + offset] and ("line" in lines[first - 1 + offset]):
            return "{}:{}".format(HERE, first + offset)
    return "{}:{}".format(HERE, first + 1)


def run_and_explain(mode, loss_fn, x_bad, on_nonfinite="skip", w0=W0, healthy=False):
    """Trains one healthy step, then the bad one (skipped); returns (report, counters before and
    after the replay) - in the mode's way of training."""
    x_good = np.ones([2, 3], np.float32)
    x_bad = np.asarray(x_bad, np.float32)
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    if mode.name == "graph":
        x = tf1.placeholder(tf.float32, [2, 3], name="x")
        w = tf1.Variable(w0, name="w")
        train_op = safegrad.clip_and_apply(optimizer, loss_fn(x, w), clip_norm=1.0, on_nonfinite=on_nonfinite)
        state = safegrad.step_state(optimizer)
        mode.sess.run(tf1.global_variables_initializer())
        mode.sess.run(train_op, {x: x_good})
        if on_nonfinite == "skip":
            assert mode.sess.run(safegrad.step_outputs(train_op).applied, {x: x_bad}) == healthy
        before = mode.sess.run([state.steps, state.total_skips, w])
        report = safegrad.explain_session(mode.sess, train_op, {x: x_bad})
        after = mode.sess.run([state.steps, state.total_skips, w])
        return report, before, after
    w = tf.Variable(w0, name="w")
    state = safegrad.step_state(optimizer)

    def step(x):
        return safegrad.clip_and_apply(
            optimizer, lambda: loss_fn(x, w), var_list=[w], clip_norm=1.0, on_nonfinite=on_nonfinite
        )

    step = tf.function(step) if mode.name == "function" else step
    step(tf.constant(x_good))
    if on_nonfinite == "skip":
        assert bool(step(tf.constant(x_bad))) == healthy
    before = [state.steps.numpy(), state.total_skips.numpy(), w.numpy()]
    report = safegrad.explain(step, tf.constant(x_bad))
    after = [state.steps.numpy(), state.total_skips.numpy(), w.numpy()]
    return report, before, after


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_report_names_the_first_op_its_line_and_cause(mode, scenario):
    loss_fn, x_bad, op_type, backward, cause = SCENARIOS[scenario]
    report, before, after = run_and_explain(mode, loss_fn, x_bad)
    assert isinstance(report, safegrad.NonFiniteReport), report
    text = str(report)
    if op_type is not None:
        assert report.op_type == op_type, text
        assert report.source is not None and report.source.endswith(expected_line(loss_fn)), text
    assert cause in report.cause, text
    assert (report.backward_of is not None) == backward, text
    assert report.nonfinite_gradients == "w (NaN)" or report.nonfinite_gradients == "w (Inf)" or (
        report.nonfinite_gradients.startswith("w (")), text
    assert text.startswith("safegrad: first NaN/Inf: "), text
    # The replay applied nothing and counted nothing.
    assert before[0] == after[0] and before[1] == after[1], (before, after)
    np.testing.assert_array_equal(before[2], after[2])


def test_report_of_bad_data_names_batch_elements_and_features(mode):
    report, _, _ = run_and_explain(mode, cross_entropy_on_data, [[1, 1, 1], [1, np.nan, 1]])
    assert any("batch elements [1], features [1]" in text for text in report.nonfinite_data), str(report)
    assert report.nonfinite_variables == [], str(report)


def test_report_of_weights_already_non_finite(mode):
    w0 = W0.copy()
    w0[0, 2] = np.inf
    report, _, _ = run_and_explain(mode, squared_weights, np.ones([2, 3]), w0=w0)
    assert "weights already non-finite" in report.cause, str(report)
    assert [name.split(":")[0] for name in report.nonfinite_variables] == ["w"], str(report)


def test_explain_finds_nothing_in_a_healthy_step(mode):
    report, _, _ = run_and_explain(mode, log_of_zero, np.ones([2, 3]), healthy=True)
    assert report is None


def test_the_report_is_found_after_a_raising_step_too(mode):
    report, _, _ = run_and_explain(mode, log_of_zero, [[1, 0, 1], [1, 1, 1]], on_nonfinite="raise")
    assert report.op_type == "Log" and report.source.endswith(expected_line(log_of_zero)), str(report)


def test_raise_error_gives_the_step_number_and_points_to_explain(mode):
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    w = mode.variable(W0, "w")
    run = mode.step(
        lambda x: safegrad.clip_and_apply(
            optimizer, log_of_zero(x, w) if mode.name == "graph" else (lambda: log_of_zero(x, w)),
            var_list=[w], on_nonfinite="raise",
        ),
        np.ones([2, 3], np.float32),
    )
    run(np.ones([2, 3], np.float32))
    run(np.ones([2, 3], np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(np.zeros([2, 3], np.float32))
    message = str(info.value)
    assert "safegrad: non-finite gradient for: w (NaN); at safegrad step 2." in message, message
    assert "safegrad.explain(" in message and "safegrad.explain_session(" in message, message


def test_every_skipped_step_is_logged_with_step_norm_and_variables(mode, caplog):
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    w = mode.variable(W0, "w")
    b = mode.variable([1.0], "b")

    def loss(x):
        return lambda: log_of_zero(x, w) + tf.reduce_sum(b)

    run = mode.step(
        lambda x: safegrad.clip_and_apply(
            optimizer, loss(x)() if mode.name == "graph" else loss(x), var_list=[w, b], on_nonfinite="skip",
        ),
        np.ones([2, 3], np.float32),
    )
    with caplog.at_level(logging.INFO, logger="safegrad"):
        run(np.ones([2, 3], np.float32))
        assert not [r for r in caplog.records if r.name == "safegrad"]  # a healthy step logs nothing
        run(np.zeros([2, 3], np.float32))
        run(np.ones([2, 3], np.float32))
        run(np.zeros([2, 3], np.float32))
    messages = [r.getMessage() for r in caplog.records if r.name == "safegrad"]
    assert messages == [
        "safegrad: skipped step 1: non-finite gradient for: w (NaN); raw global norm nan",
        "safegrad: skipped step 3: non-finite gradient for: w (NaN); raw global norm nan",
    ], messages
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "safegrad")


def test_skip_log_works_in_an_imported_meta_graph(tmp_path, caplog):
    path = str(tmp_path / "model.meta")
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [2, 3], name="x")
        w = tf1.Variable(W0, name="w")
        safegrad.clip_and_apply(tf1.train.GradientDescentOptimizer(0.1), log_of_zero(x, w), on_nonfinite="skip")
        tf1.train.export_meta_graph(path)
    with tf.Graph().as_default() as graph, tf1.Session() as sess:
        tf1.train.import_meta_graph(path)
        sess.run(tf1.global_variables_initializer())
        train_op = tf1.get_collection(tf1.GraphKeys.TRAIN_OP)[0]
        with caplog.at_level(logging.WARNING, logger="safegrad"):
            sess.run(train_op, {graph.get_tensor_by_name("x:0"): np.zeros([2, 3], np.float32)})
    assert [r.getMessage() for r in caplog.records if r.name == "safegrad"] == [
        "safegrad: skipped step 0: non-finite gradient for: w (NaN); raw global norm nan"
    ]


def test_explain_hook_reports_the_first_skipped_step_of_a_monitored_session(caplog):
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [2, 3], name="x")
        w = tf1.Variable(W0, name="w")
        global_step = tf1.train.get_or_create_global_step()
        train_op = safegrad.clip_and_apply(
            tf1.train.GradientDescentOptimizer(0.1), log_in_cond(x, w), global_step=global_step,
            on_nonfinite="skip",
        )
        loss = log_in_cond(x, w)
        hook = safegrad.ExplainHook(train_op)
        with caplog.at_level(logging.WARNING, logger="safegrad"):
            with tf1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
                sess.run(train_op, {x: np.ones([2, 3], np.float32)})
                assert hook.report is None
                sess.run(loss, {x: np.zeros([2, 3], np.float32)})  # not a training run
                assert hook.report is None
                sess.run(train_op, {x: [[1, 0, 1], [1, 1, 1]]})
                sess.run(train_op, {x: np.zeros([2, 3], np.float32)})
                assert sess.run(global_step) == 1
    assert hook.report.op_type == "Log" and hook.report.source.endswith(expected_line(log_in_cond))
    assert len(hook.reports) == 1
    assert any(r.getMessage().startswith("safegrad: first NaN/Inf: Log") for r in caplog.records)


def test_explain_session_refuses_an_op_it_would_apply_again(graph_mode):
    w = tf1.Variable(W0, name="w")
    plain = tf1.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_sum(w))
    with pytest.raises(TypeError, match=r"`fetches` must be a train op built by safegrad"):
        safegrad.explain_session(graph_mode.sess, plain)
    with pytest.raises(TypeError, match=r"`session` must be the tf.compat.v1.Session"):
        safegrad.explain_session("sess", plain)


@pytest.mark.skipif(not TF2, reason="TF2 eager replay")
def test_explain_refuses_what_is_not_a_step():
    with pytest.raises(TypeError, match=r"`step` must be the training step function.*Received: step=3"):
        safegrad.explain(3)


@pytest.mark.skipif(not TF2, reason="TF2 Keras train_step")
def test_explain_a_keras_models_train_step():
    keras = tf.keras

    class LogLayer(keras.layers.Layer):
        def call(self, inputs):
            return tf.math.log(inputs)

    model = keras.Sequential([keras.layers.Dense(2, kernel_initializer="ones"), LogLayer(), keras.layers.Dense(1)])
    model.compile(optimizer=safegrad.SafeOptimizer(keras.optimizers.SGD(0.01), on_nonfinite="skip"), loss="mse")
    x = np.ones([4, 3], np.float32)
    y = np.zeros([4, 1], np.float32)
    model.fit(x, y, epochs=1, verbose=0)
    bad = x.copy()
    bad[2] = -1.0
    weights = [w.copy() for w in model.get_weights()]
    report = safegrad.explain(model.train_step, (tf.constant(bad), tf.constant(y)))
    assert report.op_type == "Log", str(report)
    assert report.source.endswith("{}:{}".format(HERE, LogLayer.call.__code__.co_firstlineno + 1)), str(report)
    for before, now in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, now)


def test_the_demo_explains_both_runs():
    from safegrad import demo

    out = io.StringIO()
    assert demo.run(out=out), out.getvalue()
    text = out.getvalue()
    assert "plain SGD, step 1:\n  safegrad: first NaN/Inf: " in text, text
    assert "safegrad, skipped step 40:\n  safegrad: first NaN/Inf: Placeholder (x)" in text, text
    assert "x:0: 1 NaN/Inf in batch elements [3], features [5]" in text, text


def test_explain_hook_explains_a_raising_step_on_request():
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [2, 3], name="x")
        w = tf1.Variable(W0, name="w")
        train_op = safegrad.clip_and_apply(tf1.train.GradientDescentOptimizer(0.1), log_of_zero(x, w))
        hook = safegrad.ExplainHook(train_op)
        with pytest.raises(RuntimeError, match=r"no training step ran yet"):
            hook.explain_last_step()
        with pytest.raises(tf.errors.InvalidArgumentError):
            with tf1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
                sess.run(train_op, {x: np.ones([2, 3], np.float32)})
                try:
                    sess.run(train_op, {x: [[1, 0, 1], [1, 1, 1]]})
                except tf.errors.InvalidArgumentError:
                    report = hook.explain_last_step()
                    raise
    assert report.op_type == "Log" and report.source.endswith(expected_line(log_of_zero)), str(report)
    assert hook.report is report


def test_a_batch_read_inside_the_graph_is_refused_or_fed_back(caplog):
    """Replaying an iterator's step would read (and use up) the next batch: explain_session
    refuses it unless the batch is fed; ExplainHook fetches the batch and feeds it back."""
    data = np.ones([4, 2, 3], np.float32)
    data[2, 0, 1] = 0.0  # the third batch has log(0)
    with tf.Graph().as_default():
        iterator = tf1.data.make_one_shot_iterator(tf.data.Dataset.from_tensor_slices(data))
        x = iterator.get_next()
        w = tf1.Variable(W0, name="w")
        train_op = safegrad.clip_and_apply(tf1.train.GradientDescentOptimizer(0.1), log_of_zero(x, w),
                                           on_nonfinite="skip")
        hook = safegrad.ExplainHook(train_op)
        with tf1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
            for _ in range(4):
                sess.run(train_op)
            with pytest.raises(tf.errors.OutOfRangeError):  # the replay used up no batch
                sess.run(train_op)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            with pytest.raises(ValueError, match=r"reads its batch inside the graph \(IteratorGetNext"):
                safegrad.explain_session(sess, train_op)
            report = safegrad.explain_session(sess, train_op, {x: data[2]})
    assert hook.report.op_type == "Log" and hook.report.source.endswith(expected_line(log_of_zero))
    assert report.op_type == "Log"


@pytest.mark.skipif(not TF2, reason="TF2 eager replay")
def test_explain_refuses_an_iterator_and_a_step_that_reads_one():
    dataset = tf.data.Dataset.from_tensor_slices(np.zeros([3, 2, 3], np.float32))
    w = tf.Variable(W0, name="w")
    optimizer = tf1.train.GradientDescentOptimizer(0.1)

    @tf.function
    def step(x):
        return safegrad.clip_and_apply(optimizer, lambda: log_of_zero(x, w), [w], on_nonfinite="skip")

    iterator = iter(dataset)
    with pytest.raises(TypeError, match=r"an argument is an iterator \(\w+\): replaying would take"):
        safegrad.explain(step, iterator)

    @tf.function
    def step_reading_its_batch():
        return step(next(iterator))

    with pytest.raises(RuntimeError, match=r"read its batch from a tf.data iterator inside the step"):
        safegrad.explain(step_reading_its_batch)


def test_a_nan_constant_in_the_graph_is_data(graph_mode):
    table = np.ones([2, 3], np.float32)
    table[1, 2] = np.nan
    w = tf1.Variable(W0, name="w")
    train_op = safegrad.clip_and_apply(
        tf1.train.GradientDescentOptimizer(0.1), tf.reduce_sum(w * tf.constant(table, name="table")),
        on_nonfinite="skip",
    )
    graph_mode.sess.run(tf1.global_variables_initializer())
    report = safegrad.explain_session(graph_mode.sess, train_op)
    assert report.op_type == "Const" and "input data" in report.cause, str(report)
    assert report.nonfinite_data == ["table:0: 1 NaN/Inf in batch elements [1], features [2]"], str(report)
