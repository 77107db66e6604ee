"""Shared test helpers: a linear model whose gradients ARE its inputs, and optimizer factories."""

import numpy as np
import pytest

import safegrad
from safegrad import _compat
from safegrad._compat import tf, tf1

from conftest import TF2, keras_optimizer_factories, v1_optimizer_factories

OPTIMIZERS = dict(v1_optimizer_factories(), **keras_optimizer_factories())


def make_optimizer(name, mode):
    """A fresh optimizer; skips the test where its family cannot run in ``mode``.

    Graph+Session mode runs tf.compat.v1.train optimizers and Keras OptimizerV2 (TF 2.0-2.10,
    and `legacy` in 2.11-2.15/tf-keras); the Keras 2.11+ and Keras 3 optimizers are eager /
    tf.function only (safegrad says so with a ValueError, tested separately).
    """
    optimizer = OPTIMIZERS[name]()
    family = _compat.optimizer_family(optimizer)
    if mode.name == "graph" and family not in (_compat.V1, _compat.KERAS_V2):
        pytest.skip("the {} does not run in tf.compat.v1 graphs".format(family))
    return optimizer


def optimizer_variables(optimizer):
    """All variables an optimizer owns (slots, accumulators, step counters, hyperparameters)."""
    if isinstance(optimizer, tf1.train.Optimizer):
        return list(optimizer.variables())
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


class LinearModel(object):
    """loss = sum(w * x) + sum(b * y): d loss/d w = x and d loss/d b = y exactly, so a test
    chooses the raw gradients (NaN, Inf, huge) through the inputs."""

    def __init__(self, mode, w0=(1.0, 2.0, 3.0), b0=(0.5,), w_name="w", b_name="b"):
        self.mode = mode
        self.w = mode.variable(w0, w_name)
        self.b = mode.variable(b0, b_name)
        self.variables = [self.w, self.b]
        self.x0 = np.zeros(len(w0), np.float32)
        self.y0 = np.zeros(len(b0), np.float32)

    def loss(self, x, y):
        """A loss tensor in graph mode; a zero-argument callable in TF2 modes."""
        fn = lambda: tf.reduce_sum(self.w * x) + tf.reduce_sum(self.b * y)  # noqa: E731
        return fn() if self.mode.name == "graph" else fn

    def step(self, optimizer, **kwargs):
        """``run(x, y)`` performing one ``clip_and_apply`` step."""
        kwargs.setdefault("var_list", self.variables)
        return self.mode.step(
            lambda x, y: safegrad.clip_and_apply(optimizer, self.loss(x, y), **kwargs), self.x0, self.y0
        )

    def values(self):
        return self.mode.read(self.variables)


def snapshot(mode, variables):
    """Bytes of every variable, for bit-for-bit comparisons."""
    return [np.asarray(v).tobytes() for v in mode.read(list(variables))]


def finite(n):
    return np.array(n, np.float32)


__all__ = ["LinearModel", "OPTIMIZERS", "TF2", "make_optimizer", "optimizer_variables", "snapshot"]
