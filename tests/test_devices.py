"""Where a GPU is visible, safegrad builds no ``If`` kept as a function call, and behaves the same.

An ``If`` that is not lowered runs its branches on its own device (``_compat.if_call_is_safe``);
on a GPU the diagnosis branch's string ops have no kernel. There is no GPU here: the ``gpu_host``
fixture builds safegrad's graphs as it does where one is visible, and they run on the CPU, in
every mode - what can be checked without a GPU is that this other graph does everything the
usual one does.
"""

import numpy as np
import pytest

import safegrad
from safegrad import _compat
from safegrad._tf import tf, tf1

from helpers import TF2, LinearModel, named_in, optimizer_variables, snapshot

NAN, INF = np.nan, np.inf
X = np.array([3.0, 0.0, 4.0], np.float32)
Y = np.array([12.0], np.float32)


def _if_calls(graph):
    """The ``If`` ops of ``graph`` that TensorFlow runs as function calls (not lowered)."""
    calls = 0
    for op in graph.get_operations():
        if op.type in ("If", "StatelessIf"):
            try:
                calls += not op.get_attr("_lower_using_switch_merge")
            except ValueError:  # (no attribute: not lowered)
                calls += 1
    return calls


def _step_graph(where, on_nonfinite):
    """The graph of one ``clip_and_apply`` step: a Session graph, or a tf.function's."""
    if where == "graph":
        graph = tf.Graph()
        with graph.as_default():
            w = tf1.Variable(np.ones(3, np.float32), name="w")
            safegrad.clip_and_apply(
                tf1.train.GradientDescentOptimizer(0.1), tf.reduce_sum(w * X), [w], clip_norm=1.0,
                on_nonfinite=on_nonfinite,
            )
        return graph
    w = tf.Variable(np.ones(3, np.float32), name="w")
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    safegrad.step_state(optimizer)

    @tf.function
    def step():
        return safegrad.clip_and_apply(
            optimizer, lambda: tf.reduce_sum(w * X), [w], clip_norm=1.0, on_nonfinite=on_nonfinite
        )

    return step.get_concrete_function().graph


@pytest.mark.parametrize("where", ["graph", "function"] if TF2 else ["graph"])
@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_a_gpu_host_builds_no_if_call(where, on_nonfinite, request):
    # Here (no GPU): the diagnosis is one If call (in a Session graph, in a branch a healthy step
    # does not take).
    assert _compat.if_call_is_safe()
    assert _if_calls(_step_graph(where, on_nonfinite)) == 1
    request.getfixturevalue("gpu_host")
    assert _if_calls(_step_graph(where, on_nonfinite)) == 0


def test_raise_names_every_bad_variable_and_the_step(mode, gpu_host):
    model = LinearModel(mode, w_name="w", b_name="b")
    optimizer = tf1.train.AdamOptimizer(0.1)
    run = model.step(optimizer, clip_norm=1.0)
    run(X, Y)
    tracked = model.variables + optimizer_variables(optimizer)
    before = snapshot(mode, tracked)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(np.array([1.0, NAN, INF], np.float32), np.array([INF], np.float32))
    assert named_in(info.value) == ["w (NaN and Inf)", "b (Inf)"]
    assert "at safegrad step 1" in str(info.value)
    assert snapshot(mode, tracked) == before


def test_skip_is_bit_exact_and_counted(mode, gpu_host):
    model = LinearModel(mode)
    optimizer = tf1.train.AdamOptimizer(0.1)
    run = model.step(optimizer, clip_norm=1.0, on_nonfinite="skip", max_consecutive_skips=1)
    run(X, Y)
    tracked = model.variables + optimizer_variables(optimizer)
    before = snapshot(mode, tracked)
    bad = (np.array([NAN, 0.0, 0.0], np.float32), Y)
    run(*bad)
    assert snapshot(mode, tracked) == before
    state = safegrad.step_state(optimizer)
    assert mode.read([state.total_skips, state.consecutive_skips, state.steps]) == [1, 1, 2]
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(*bad)
    assert named_in(info.value)[0].startswith("w (NaN)")
    assert "2 non-finite steps in a row, more than max_consecutive_skips=1" in str(info.value)
    run(X, Y)
    assert snapshot(mode, tracked) != before
    assert mode.read([state.total_skips, state.consecutive_skips]) == [1, 0]


def test_norms_below_float32_squares_are_exact(mode, gpu_host):
    # The underflow path of the norm (a branch a healthy step does not take); the overflow path
    # is tested on both hosts in test_clip_and_apply.py.
    tiny = mode.step(lambda g: safegrad.global_norm([g]), np.zeros(2, np.float32))
    np.testing.assert_allclose(tiny(np.array([3e-20, 4e-20], np.float32)), 5e-20, rtol=1e-6)
