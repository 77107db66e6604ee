"""The two scenarios safegrad was created from, in every execution mode, against numpy.

1. A session loop where one variable's gradient turns NaN (a log of a negative input): safegrad
   must name that variable and no other, and either stop without changing anything or skip the
   step and keep training.
2. The exploding-gradient regression (inputs x100, weights in [10, 20], plain SGD): it diverges to
   NaN without safegrad and stays finite with ``clip_and_apply(..., clip_norm=1.0)``.
"""

import numpy as np
import pytest

import safegrad
from safegrad import demo
from safegrad._tf import tf, tf1

from helpers import named_in

LR = 0.05


def _nan_loop_data():
    rng = np.random.RandomState(1)
    x = rng.randn(16, 3).astype(np.float32)
    y = rng.randn(16, 1).astype(np.float32)
    zs = [rng.uniform(1.0, 2.0, 4).astype(np.float32) for _ in range(6)]
    zs[3][2] = -1.0  # log(-1) = NaN in the 4th step: poisoned_weight's gradient only
    return x, y, zs


class NanLoopModel:
    def __init__(self, mode):
        self.mode = mode
        self.healthy = mode.variable(np.full([3, 1], 0.5), "healthy_weight")
        self.poisoned = mode.variable(np.full([4], 0.1), "poisoned_weight")

    def loss(self, x, y, z):
        fn = lambda: tf.reduce_mean(tf.square(tf.matmul(x, self.healthy) - y)) + tf.reduce_sum(  # noqa: E731
            self.poisoned * tf.math.log(z)
        )
        return fn() if self.mode.name == "graph" else fn


def _numpy_nan_loop(x, y, zs, skip_steps):
    h = np.full([3, 1], 0.5)
    p = np.full([4], 0.1)
    for step, z in enumerate(zs):
        if step in skip_steps:
            continue
        grad_h = 2.0 / len(x) * x.T.astype(np.float64) @ (x @ h - y)
        h, p = h - LR * grad_h, p - LR * np.log(z)
    return h, p


def test_session_loop_nan_raise_names_only_the_poisoned_variable(mode):
    x, y, zs = _nan_loop_data()
    model = NanLoopModel(mode)
    optimizer = tf1.train.GradientDescentOptimizer(LR)
    run = mode.step(
        lambda z: safegrad.clip_and_apply(optimizer, model.loss(x, y, z), [model.healthy, model.poisoned]),
        zs[0],
    )
    for z in zs[:3]:
        run(z)
    before = mode.read([model.healthy, model.poisoned])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run(zs[3])
    assert named_in(info.value) == ["poisoned_weight (NaN)"]
    after = mode.read([model.healthy, model.poisoned])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))
    expected_h, expected_p = _numpy_nan_loop(x, y, zs[:3], skip_steps=())
    np.testing.assert_allclose(after[0], expected_h, rtol=1e-5)
    np.testing.assert_allclose(after[1], expected_p, rtol=1e-5)


def test_session_loop_nan_skip_keeps_training(mode):
    x, y, zs = _nan_loop_data()
    model = NanLoopModel(mode)
    optimizer = tf1.train.GradientDescentOptimizer(LR)
    run = mode.step(
        lambda z: safegrad.clip_and_apply(
            optimizer, model.loss(x, y, z), [model.healthy, model.poisoned], on_nonfinite="skip"
        ),
        zs[0],
    )
    for z in zs:
        run(z)
    healthy, poisoned = mode.read([model.healthy, model.poisoned])
    expected_h, expected_p = _numpy_nan_loop(x, y, zs, skip_steps={3})
    np.testing.assert_allclose(healthy, expected_h, rtol=1e-5)
    np.testing.assert_allclose(poisoned, expected_p, rtol=1e-5)
    state = safegrad.step_state(optimizer)
    assert mode.read([state.total_skips, state.consecutive_skips]) == [1, 0]


class ExplodingModel:
    """demo.py's model, built with this mode's variables."""

    def __init__(self, mode, problem):
        self.mode = mode
        self.problem = problem
        self.w1 = mode.variable(problem["w1"], "w1")
        self.w2 = mode.variable(problem["w2"], "w2")

    def loss(self, x):
        fn = lambda: demo.mse(demo.forward(x, self.w1, self.w2), self.problem["y"])  # noqa: E731
        return fn() if self.mode.name == "graph" else fn

    def loss_value(self):
        w1, w2 = self.mode.read([self.w1, self.w2])
        return _numpy_loss(self.problem, w1, w2)


def _numpy_loss(problem, w1, w2):
    with np.errstate(all="ignore"):  # the diverging run reaches Inf/NaN on purpose
        a = problem["x"].astype(np.float64) @ w1
        return np.mean((np.where(a > 0, a, 0.1 * a) @ w2 - problem["y"]) ** 2)


def _numpy_clipped_sgd(problem, steps, lr, clip):
    x, y = problem["x"].astype(np.float64), problem["y"].astype(np.float64)
    w1, w2 = problem["w1"].astype(np.float64), problem["w2"].astype(np.float64)
    for _ in range(steps):
        a = x @ w1
        r = np.where(a > 0, a, 0.1 * a)
        grad_p = 2.0 * (r @ w2 - y) / len(x)
        g2 = r.T @ grad_p
        g1 = x.T @ ((grad_p @ w2.T) * np.where(a > 0, 1.0, 0.1))
        scale = min(1.0, clip / np.sqrt(np.sum(g1 ** 2) + np.sum(g2 ** 2)))
        w1, w2 = w1 - lr * scale * g1, w2 - lr * scale * g2
    return w1, w2


def test_exploding_gradients_diverge_without_safegrad(mode):
    problem = demo.make_problem()
    model = ExplodingModel(mode, problem)
    optimizer = tf1.train.GradientDescentOptimizer(1.0)
    run = mode.step(lambda x: optimizer.minimize(model.loss(x), var_list=[model.w1, model.w2]), problem["x"])
    losses = []
    for _ in range(6):
        run(problem["x"])
        losses.append(model.loss_value())
    assert np.isnan(losses[-1]) or np.isinf(losses[-1])


def test_exploding_gradients_stay_finite_with_clip_and_apply(mode):
    problem = demo.make_problem()
    model = ExplodingModel(mode, problem)
    optimizer = tf1.train.GradientDescentOptimizer(1.0)
    run = mode.step(
        lambda x: safegrad.clip_and_apply(optimizer, model.loss(x), [model.w1, model.w2], clip_norm=1.0),
        problem["x"],
    )
    losses = [model.loss_value()]
    for step in range(60):
        run(problem["x"])
        losses.append(model.loss_value())
        if step == 4:
            w1, w2 = mode.read([model.w1, model.w2])
            e1, e2 = _numpy_clipped_sgd(problem, 5, 1.0, 1.0)
            np.testing.assert_allclose(w1, e1, rtol=1e-5)
            np.testing.assert_allclose(w2, e2, rtol=1e-5)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] / 100.0
