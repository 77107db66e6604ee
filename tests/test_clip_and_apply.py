"""clip_and_apply: the step semantics, in every mode, with v1 and Keras optimizers."""

import re

import numpy as np
import pytest

import safegrad
from safegrad._tf import tf, tf1

from helpers import (
    KERAS_VERSION,
    OPTIMIZERS,
    TF2,
    LinearModel,
    make_optimizer,
    named_in,
    optimizer_variables,
    runs_in_v1_graph,
    snapshot,
)

NAN, INF = np.nan, np.inf
X = np.array([3.0, 0.0, 4.0], np.float32)  # |x| = 5
Y = np.array([12.0], np.float32)  # |(x, y)| = 13
SGD_FAMILIES = [n for n in OPTIMIZERS if n.endswith("-sgd")]


@pytest.mark.parametrize("opt_name", SGD_FAMILIES)
def test_global_clip_matches_numpy(mode, opt_name):
    model = LinearModel(mode)
    run = model.step(make_optimizer(opt_name, mode), clip_norm=2.6)
    w0, b0 = model.values()
    run(X, Y)
    w1, b1 = model.values()
    scale = 2.6 / 13.0
    np.testing.assert_allclose(w1, w0 - 0.1 * X * scale, rtol=1e-6)
    np.testing.assert_allclose(b1, b0 - 0.1 * Y * scale, rtol=1e-6)


@pytest.mark.parametrize("opt_name", SGD_FAMILIES)
def test_clipping_order_value_then_per_variable_then_global(mode, opt_name):
    model = LinearModel(mode)
    run = model.step(
        make_optimizer(opt_name, mode), clip_value=(-2.0, 10.0), per_variable_clip_norm=5.0, clip_norm=4.0
    )
    x = np.array([-6.0, 1.0, 1.0], np.float32)
    y = np.array([30.0], np.float32)
    w0, b0 = model.values()
    run(x, y)
    gx, gy = np.clip(x, -2.0, 10.0), np.clip(y, -2.0, 10.0)  # value
    gx, gy = [g * min(1.0, 5.0 / np.linalg.norm(g)) for g in (gx, gy)]  # per variable
    scale = min(1.0, 4.0 / np.sqrt(np.sum(gx ** 2) + np.sum(gy ** 2)))  # global
    w1, b1 = model.values()
    np.testing.assert_allclose(w1, w0 - 0.1 * gx * scale, rtol=1e-5)
    np.testing.assert_allclose(b1, b0 - 0.1 * gy * scale, rtol=1e-5)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_raise_names_variable_and_changes_nothing(mode, opt_name):
    optimizer = make_optimizer(opt_name, mode)
    model = LinearModel(mode, w_name="poisoned_weight", b_name="bias")
    global_step = mode.variable(0, "global_step", dtype=tf.int64, trainable=False)
    run = model.step(optimizer, clip_norm=1.0, global_step=global_step)
    run(X, Y)  # creates and moves every slot
    tracked = model.variables + optimizer_variables(optimizer) + [global_step]
    tracked += list(safegrad.step_state(optimizer).variables)
    before = snapshot(mode, tracked)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(np.array([1.0, NAN, 1.0], np.float32), Y)
    assert named_in(info.value) == ["poisoned_weight (NaN)"]
    assert snapshot(mode, tracked) == before
    assert mode.read(global_step) == 1


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_skip_is_bit_exact_and_training_continues(mode, opt_name):
    # Run A: good, poisoned, good. Run B: good, good. Same optimizer type, same start.
    batches = [(X, Y), (np.array([INF, 1.0, 1.0], np.float32), Y), (0.5 * X, -Y)]
    optimizer_a = make_optimizer(opt_name, mode)
    model_a = LinearModel(mode)
    step_a = mode.variable(0, "step_a", dtype=tf.int64, trainable=False)
    run_a = model_a.step(optimizer_a, clip_norm=1.0, on_nonfinite="skip", global_step=step_a)
    run_a(*batches[0])
    tracked = model_a.variables + optimizer_variables(optimizer_a) + [step_a]
    before = snapshot(mode, tracked)
    run_a(*batches[1])
    assert snapshot(mode, tracked) == before  # bit for bit, slots and step included
    run_a(*batches[2])

    optimizer_b = make_optimizer(opt_name, mode)
    model_b = LinearModel(mode)
    run_b = model_b.step(optimizer_b, clip_norm=1.0, on_nonfinite="skip")
    run_b(*batches[0])
    run_b(*batches[2])
    for a, b in zip(model_a.values(), model_b.values()):
        assert a.tobytes() == b.tobytes()
    state = safegrad.step_state(optimizer_a)
    assert mode.read(step_a) == 2
    assert mode.read([state.total_skips, state.consecutive_skips]) == [1, 0]


@pytest.mark.parametrize("opt_name", ["v1-adam"] + (["keras-adam"] if TF2 else []))
def test_max_consecutive_skips(mode, opt_name):
    optimizer = make_optimizer(opt_name, mode)
    model = LinearModel(mode, w_name="w")
    run = model.step(optimizer, on_nonfinite="skip", max_consecutive_skips=2)
    state = safegrad.step_state(optimizer)
    bad = (np.array([NAN, 0.0, 0.0], np.float32), Y)
    counters = lambda: mode.read([state.consecutive_skips, state.total_skips])  # noqa: E731
    run(X, Y)
    run(*bad)
    run(*bad)
    assert counters() == [2, 2]
    everything = model.variables + optimizer_variables(optimizer) + state.all_variables
    before = snapshot(mode, everything)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(*bad)  # the third in a row
    message = str(info.value)
    assert named_in(info.value)[0].startswith("w (NaN)")
    assert "3 non-finite steps in a row, more than max_consecutive_skips=2" in message
    assert counters() == [2, 2]
    # a raising step changes nothing: weights, slots, and every counter and statistic
    assert snapshot(mode, everything) == before
    run(X, Y)  # a finite step resets the streak
    assert counters() == [0, 2]
    run(*bad)
    run(*bad)
    assert counters() == [2, 4]


def test_max_consecutive_skips_zero_raises_on_first(mode):
    model = LinearModel(mode)
    run = model.step(tf1.train.GradientDescentOptimizer(0.1), on_nonfinite="skip", max_consecutive_skips=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_consecutive_skips=0"):
        run(np.array([NAN, 0, 0], np.float32), Y)


def test_ignore_only_clips(mode):
    model = LinearModel(mode)
    run = model.step(tf1.train.GradientDescentOptimizer(0.1), clip_norm=1.0, on_nonfinite="ignore")
    w0, b0 = model.values()
    run(np.array([NAN, 0.0, 0.0], np.float32), Y)
    w1, b1 = model.values()
    assert np.isnan(w1[0]) and np.all(w1[1:] == w0[1:])
    # The global norm is NaN, so nothing is scaled: the damage stays in `w`.
    np.testing.assert_allclose(b1, b0 - 0.1 * Y, rtol=1e-6)


def test_check_is_on_raw_gradients_before_value_clipping(mode):
    model = LinearModel(mode)
    run = model.step(tf1.train.GradientDescentOptimizer(0.1), clip_value=1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"w \(Inf\)"):
        run(np.array([INF, 0.0, 0.0], np.float32), Y)  # clip_by_value alone would hide the Inf


@pytest.mark.parametrize("host", ["cpu", "gpu"])
def test_overflowing_but_finite_gradients_are_clipped_not_skipped(mode, host, request):
    if host == "gpu":  # (the graph built where a GPU is visible: tests/test_devices.py)
        request.getfixturevalue("gpu_host")
    model = LinearModel(mode, w0=np.zeros(1000), b0=(0.0,))
    optimizer = tf1.train.GradientDescentOptimizer(1.0)
    run = model.step(optimizer, clip_norm=1.0, on_nonfinite="skip")
    run(np.full(1000, 1e20, np.float32), np.zeros(1, np.float32))
    w1, _ = model.values()
    np.testing.assert_allclose(w1, np.full(1000, -1.0 / np.sqrt(1000.0)), rtol=1e-5)
    state = safegrad.step_state(optimizer)
    norm, skipped = mode.read([state.global_norm, state.skipped])
    np.testing.assert_allclose(norm, 3.1622776e21, rtol=1e-5)
    assert not skipped


@pytest.mark.parametrize("opt_name", ["v1-sgd", "v1-adam"])
def test_global_step_advances_only_on_applied_updates_v1(mode, opt_name):
    model = LinearModel(mode)
    global_step = mode.variable(0, "global_step", dtype=tf.int64, trainable=False)
    run = model.step(make_optimizer(opt_name, mode), on_nonfinite="skip", global_step=global_step)
    for x in (X, np.array([NAN, 0, 0], np.float32), X, X):
        run(x, Y)
    assert mode.read(global_step) == 3


@pytest.mark.skipif(not TF2, reason="Keras optimizers are tested on TF2")
def test_global_step_and_iterations_with_keras(tf2_mode):
    optimizer = tf.keras.optimizers.SGD(0.1)
    model = LinearModel(tf2_mode)
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    run = model.step(optimizer, on_nonfinite="skip", global_step=global_step)
    for x in (X, np.array([NAN, 0, 0], np.float32), X):
        run(x, Y)
    assert int(global_step.numpy()) == 2
    assert int(optimizer.iterations.numpy()) == 2


def test_none_gradient_variable_left_alone(mode):
    model = LinearModel(mode)
    unused = mode.variable([7.0, 8.0], "unused")
    run = model.step(tf1.train.GradientDescentOptimizer(0.1), clip_norm=1.0, var_list=model.variables + [unused])
    run(X, Y)
    np.testing.assert_array_equal(mode.read(unused), [7.0, 8.0])


def test_all_none_gradients_raise_at_build(mode):
    unused = mode.variable([7.0], "unused")
    model = LinearModel(mode)
    with pytest.raises(ValueError, match="No gradients"):
        mode.run(
            lambda x, y: safegrad.clip_and_apply(
                tf1.train.GradientDescentOptimizer(0.1), model.loss(x, y), var_list=[unused]
            ),
            X,
            Y,
        )


def test_sparse_embedding_gradient(mode):
    table0 = np.arange(12, dtype=np.float32).reshape(6, 2)
    table = mode.variable(table0, "embedding")
    ids = np.array([1, 4, 1], np.int32)
    weights = np.array([[3.0, 4.0], [1.0, 1.0], [3.0, 4.0]], np.float32)
    optimizer = tf1.train.GradientDescentOptimizer(1.0)

    def body(i, wt):
        loss_fn = lambda: tf.reduce_sum(tf.gather(table, i) * wt)  # noqa: E731
        loss = loss_fn() if mode.name == "graph" else loss_fn
        return safegrad.clip_and_apply(optimizer, loss, [table], clip_norm=1.0)

    mode.run(body, ids, weights)
    dense = np.zeros_like(table0)
    np.add.at(dense, ids, weights)  # row 1 gets [6, 8], row 4 [1, 1]
    expected = table0 - dense / np.linalg.norm(dense)
    np.testing.assert_allclose(mode.read(table), expected, rtol=1e-6)


@pytest.mark.skipif(not TF2, reason="tf.function tracing: TF2")
@pytest.mark.parametrize("family", ["v1-sgd", "keras-sgd"])
def test_state_created_before_a_function_lets_it_trace_once(family):
    # Variables created during a tf.function's first call make TF trace it twice (the README
    # advice for large models); safegrad's counters must be reusable from an eager step_state call.
    # Keras 2 optimizers create their own variables (iterations, hyperparameters) on first apply.
    if family == "keras-sgd" and KERAS_VERSION < 3:
        pytest.skip("Keras 2 optimizers create their own variables in the first call")
    v = tf.Variable([3.0, 4.0])
    optimizer = OPTIMIZERS[family]()  # SGD, learning rate 0.1
    safegrad.step_state(optimizer)
    traces = []

    @tf.function
    def step():
        traces.append(1)
        return safegrad.clip_and_apply(optimizer, lambda: tf.reduce_sum(v * v), [v], clip_norm=1.0)

    step()
    step()
    assert len(traces) == 1
    w = np.array([3.0, 4.0])
    for _ in range(2):
        g = 2 * w
        w = w - 0.1 * g * min(1.0, 1.0 / np.linalg.norm(g))
    np.testing.assert_allclose(v.numpy(), w, rtol=1e-6)
    assert int(safegrad.step_state(optimizer).steps.numpy()) == 2


def test_step_state_records_last_step(mode):
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    model = LinearModel(mode)
    run = model.step(optimizer, clip_norm=20.0, on_nonfinite="skip")
    state = safegrad.step_state(optimizer)
    fields = lambda: mode.read([state.global_norm, state.clipped, state.skipped])  # noqa: E731
    run(X, Y)
    norm, clipped, skipped = fields()
    assert (norm, bool(clipped), bool(skipped)) == (13.0, False, False)
    run(10 * X, Y)
    norm, clipped, skipped = fields()
    assert bool(clipped) and not bool(skipped)
    np.testing.assert_allclose(norm, np.sqrt(2500 + 144), rtol=1e-6)
    run(np.array([INF, 0, 0], np.float32), Y)
    norm, clipped, skipped = fields()
    assert norm == INF and bool(skipped) and not bool(clipped)


def test_step_state_prints_its_values(mode):
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    model = LinearModel(mode)
    run = model.step(optimizer, clip_norm=20.0, on_nonfinite="skip")
    run(X, Y)
    run(np.array([NAN, 0, 0], np.float32), Y)
    text = repr(safegrad.step_state(optimizer))
    if mode.name == "graph":  # read with a Session: the repr says where the values are
        assert re.match(r"StepState\(graph variables: (\S+/)?consecutive_skips:0, (\S+/)?total_skips:0, ", text), text
        assert text.endswith("overflow_skips:0; read them with sess.run)"), text
    else:
        assert text == (
            "StepState(consecutive_skips=1, total_skips=1, global_norm=nan, steps=2, clipped_steps=0, "
            "global_norm_sum=13.0, overflow_skips=0, clip_ratio=1.0, clipped=False, skipped=True)"
        )


def test_integer_variables_in_var_list_are_left_alone(mode):
    # As TensorFlow does: legacy code passes tf.trainable_variables(), which may hold counters.
    model = LinearModel(mode)
    counter = mode.variable(7, "counter", dtype=tf.int32)
    run = model.step(tf1.train.GradientDescentOptimizer(0.1), var_list=model.variables + [counter])
    w0, b0 = model.values()
    run(X, Y)
    w1, b1 = model.values()
    np.testing.assert_allclose(w1, w0 - 0.1 * X, rtol=1e-6)
    np.testing.assert_allclose(b1, b0 - 0.1 * Y, rtol=1e-6)
    assert mode.read(counter) == 7


def test_one_optimizer_in_two_calls_shares_one_set_of_counters(mode):
    # Documented in clip_and_apply and step_state: the counters are per optimizer.
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    first, second = LinearModel(mode, w_name="w1", b_name="b1"), LinearModel(mode, w_name="w2", b_name="b2")
    run_first = first.step(optimizer, on_nonfinite="skip")
    run_second = second.step(optimizer, on_nonfinite="skip")
    bad = np.array([NAN, 0, 0], np.float32)
    run_first(bad, Y)
    run_second(bad, Y)
    state = safegrad.step_state(optimizer)
    assert mode.read([state.total_skips, state.consecutive_skips, state.steps]) == [2, 2, 2]
    run_first(X, Y)
    assert mode.read([state.total_skips, state.consecutive_skips, state.steps]) == [2, 0, 3]


def test_return_value(mode):
    model = LinearModel(mode)
    holder = {}
    optimizer = tf1.train.GradientDescentOptimizer(0.1)

    def body(x, y):
        result = safegrad.clip_and_apply(optimizer, model.loss(x, y), model.variables, on_nonfinite="skip")
        holder["type"] = type(result)
        return result

    run = mode.step(body, X, Y)
    out_good = run(X, Y)
    out_bad = run(np.array([NAN, 0, 0], np.float32), Y)
    if mode.name == "graph":
        assert issubclass(holder["type"], tf1.Operation)
        assert out_good is None and out_bad is None
    else:
        assert bool(out_good) is True and bool(out_bad) is False


@pytest.mark.skipif(not TF2, reason="GradientTape losses are TF2")
def test_tensor_loss_with_tape(tf2_mode):
    model = LinearModel(tf2_mode)
    optimizer = tf.keras.optimizers.SGD(0.1)

    def body(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model.w * x) + tf.reduce_sum(model.b * y)
        return safegrad.clip_and_apply(optimizer, loss, model.variables, tape=tape, clip_norm=2.6)

    w0, b0 = model.values()
    tf2_mode.run(body, X, Y)
    w1, _ = model.values()
    np.testing.assert_allclose(w1, w0 - 0.1 * X * 0.2, rtol=1e-6)


@pytest.mark.skipif(not TF2, reason="TF2 eager")
def test_tensor_loss_without_tape_in_eager_is_an_error():
    w = tf.Variable([1.0])
    loss = tf.reduce_sum(w * 2.0)
    with pytest.raises(ValueError, match="tape"):
        safegrad.clip_and_apply(tf1.train.GradientDescentOptimizer(0.1), loss, [w])


EAGER_ONLY_KERAS = [name for name, factory in sorted(OPTIMIZERS.items()) if not runs_in_v1_graph(factory())]


@pytest.mark.skipif(not EAGER_ONLY_KERAS, reason="no Keras 2.11+/Keras 3 optimizers in this env")
@pytest.mark.parametrize("opt_name", EAGER_ONLY_KERAS)
def test_eager_only_keras_optimizer_in_graph_mode_is_a_clear_error(graph_mode, opt_name):
    optimizer = OPTIMIZERS[opt_name]()
    w = tf1.Variable([1.0])
    with pytest.raises(ValueError, match=r"not .*tf.compat.v1 graph|do not support tf.compat.v1 graphs"):
        safegrad.clip_and_apply(optimizer, tf.reduce_sum(w), [w])


@pytest.mark.parametrize("opt_name", SGD_FAMILIES)
def test_callable_var_list_is_read_after_the_loss(mode, opt_name):
    model = LinearModel(mode)
    run = model.step(make_optimizer(opt_name, mode), clip_norm=2.6, var_list=lambda: [model.w, model.b])
    w0, _ = model.values()
    run(X, Y)
    np.testing.assert_allclose(model.values()[0], w0 - 0.1 * X * 0.2, rtol=1e-6)


@pytest.mark.skipif(not TF2, reason="Keras models: TF2")
def test_keras_model_built_by_the_first_loss_call(tf2_mode):
    model = tf.keras.Sequential([tf.keras.layers.Dense(2), tf.keras.layers.Dense(1)])  # no weights yet
    optimizer = tf.keras.optimizers.SGD(0.1)
    x = np.ones([4, 3], np.float32)
    run = tf2_mode.step(
        lambda xb: safegrad.clip_and_apply(
            optimizer, lambda: tf.reduce_sum(model(xb)), lambda: model.trainable_variables, clip_norm=1.0
        ),
        x,
    )
    assert bool(run(x))
    assert len(model.trainable_variables) == 4


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_float16_variables_whose_squares_overflow_are_clipped_not_rejected(mode, on_nonfinite):
    w = mode.variable(np.zeros(100), "half", dtype=tf.float16)
    optimizer = tf1.train.GradientDescentOptimizer(1.0)

    def body(x):
        loss_fn = lambda: tf.reduce_sum(w * x)  # noqa: E731  (gradient = x, in float16)
        loss = loss_fn() if mode.name == "graph" else loss_fn
        return safegrad.clip_and_apply(optimizer, loss, [w], clip_norm=30.0, on_nonfinite=on_nonfinite)

    x = np.full(100, 300.0, np.float16)  # sum of squares 9e6 overflows float16 (max 65504)
    mode.run(body, x)
    np.testing.assert_allclose(mode.read(w).astype(np.float32), np.full(100, -3.0), rtol=1e-3)
    np.testing.assert_allclose(mode.read(safegrad.step_state(optimizer).global_norm), 3000.0, rtol=1e-6)


@pytest.mark.skipif(not TF2, reason="Keras models: TF2")
def test_keras_weights_are_named_by_their_keras_name(tf2_mode):
    model = tf.keras.Sequential([tf.keras.Input(shape=(2,)), tf.keras.layers.Dense(1, name="dense")])
    optimizer = tf.keras.optimizers.SGD(0.1)
    x = np.array([[1.0, np.nan]], np.float32)
    run = tf2_mode.step(
        lambda xb: safegrad.clip_and_apply(optimizer, lambda: tf.reduce_sum(model(xb)), model.trainable_variables),
        x,
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(x)
    (label,) = named_in(info.value)  # the kernel's gradient is x: NaN; the bias's is finite
    assert re.match(r"^(sequential(_\d+)?/)?dense/kernel \(NaN\)$", label), label


def _xla_available():
    import inspect

    return TF2 and "jit_compile" in inspect.signature(tf.function).parameters


@pytest.mark.skipif(not _xla_available(), reason="tf.function(jit_compile=...) needs TF >= 2.5")
def test_xla_compiled_step_skips_and_refuses_to_pretend_it_can_raise():
    table = tf.Variable(np.ones([5, 2], np.float32), name="table")
    w = tf.Variable([1.0, 1.0], name="w")
    optimizer = tf1.train.GradientDescentOptimizer(1.0)

    @tf.function(jit_compile=True)
    def skip_step(ids, x):
        loss = lambda: tf.reduce_sum(tf.gather(table, ids)) + tf.reduce_sum(w * x)  # noqa: E731
        return safegrad.clip_and_apply(optimizer, loss, [table, w], clip_norm=2.0, on_nonfinite="skip")

    ids = np.array([1, 1, 3], np.int32)
    assert bool(skip_step(ids, np.array([0.0, 0.0], np.float32)))
    dense = np.zeros([5, 2])
    np.add.at(dense, ids, 1.0)  # sparse gradient, repeated index: dense norm sqrt(2*4 + 2*1) = sqrt(10)
    np.testing.assert_allclose(table.numpy(), 1.0 - dense * 2.0 / np.sqrt(10.0), rtol=1e-6)
    before = table.numpy().copy()
    assert not bool(skip_step(ids, np.array([np.nan, 0.0], np.float32)))
    np.testing.assert_array_equal(table.numpy(), before)

    @tf.function(jit_compile=True)
    def raise_step(x):
        return safegrad.clip_and_apply(optimizer, lambda: tf.reduce_sum(w * x), [w])

    with pytest.raises(ValueError, match="XLA"):
        raise_step(np.array([1.0, 1.0], np.float32))
