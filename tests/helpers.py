"""Shared test helpers (fixtures live in conftest.py, and only there).

* ``Mode``: builds a step and runs it in one execution mode (graph + Session, tf.function,
  eager), with numpy in and out; the ``mode`` fixtures hand out instances.
* ``new_optimizer`` / ``OPTIMIZERS``: optimizer factories by name, for every optimizer API of this
  env; ``make_optimizer`` skips a test where the optimizer cannot run in the mode.
* ``LinearModel``: a model whose gradients ARE its inputs, so a test chooses them.
* ``named_in``, ``np_norm``, ``snapshot``, ``as_bytes``, ``optimizer_variables``.

What this env has (TF version, Keras generation, optimizer APIs) is asked of safegrad's own compat
layer, never re-derived here.
"""

import functools
import re

import numpy as np
import pytest

import safegrad
from safegrad._adapters import adapter_for
from safegrad._keras_compat import keras_major_version
from safegrad._tf import TF_VERSION, tf, tf1

TF2 = TF_VERSION >= (2, 0)
MODES = ("graph", "function", "eager") if TF2 else ("graph",)
KERAS_VERSION = keras_major_version()  # of the Keras behind tf.keras (2 on TF 1.x)


# Execution modes ---------------------------------------------------------------------------------


def _to_numpy(structure):
    return tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, structure)


def _drop_operations(x):
    return None if isinstance(x, tf1.Operation) else x


class Mode:
    """Builds and runs steps in one execution mode.

    * ``graph``: a fresh ``tf.Graph`` with a ``tf.compat.v1.Session`` (TF1 style; every env);
    * ``function``: TF2 ``tf.function`` (TF2 envs);
    * ``eager``: TF2 eager execution (TF2 envs).

    A test builds its variables with ``mode.variable`` and its step with ``mode.step(fn, *example
    args)``, then calls the step with numpy arguments and gets numpy results back, whatever the mode.
    """

    def __init__(self, name):
        self.name = name
        self.graph = None
        self.sess = None
        self._initialized = set()
        self._contexts = []

    def __enter__(self):
        if self.name == "graph":
            self.graph = tf.Graph()
            context = self.graph.as_default()
            context.__enter__()
            self._contexts.append(context)
            self.sess = tf1.Session(graph=self.graph)
        return self

    def __exit__(self, *exc):
        if self.sess is not None:
            self.sess.close()
        while self._contexts:
            self._contexts.pop().__exit__(None, None, None)
        return False

    @property
    def eager(self):
        return self.name == "eager"

    def variable(self, value, name, dtype=tf.float32, trainable=True):
        """A variable as users of this mode make them: tf.compat.v1.Variable in a graph (a
        RefVariable under TF 1.15, a resource variable under TF2), tf.Variable otherwise."""
        value = np.asarray(value, dtype=dtype.as_numpy_dtype)
        if self.name == "graph":
            return tf1.Variable(value, name=name, trainable=trainable)
        return tf.Variable(value, name=name, trainable=trainable)

    def _initialize_new_variables(self):
        fresh = [v for v in tf1.global_variables() if id(v) not in self._initialized]
        if fresh:
            self.sess.run(tf1.variables_initializer(fresh))
            self._initialized.update(id(v) for v in fresh)

    def step(self, fn, *examples):
        """Compiles ``fn(*tensors)`` for this mode; returns ``run(*numpy args) -> numpy``.

        Graph mode builds the ops once, with placeholders shaped like ``examples``, and
        initialises any variable created meanwhile (optimizer slots, safegrad counters).
        """
        if self.name == "graph":
            placeholders = [
                tf1.placeholder(tf.as_dtype(np.asarray(e).dtype), np.asarray(e).shape) for e in examples
            ]
            outputs = fn(*placeholders)
            self._initialize_new_variables()

            def run(*args):
                return self.sess.run(outputs, feed_dict=dict(zip(placeholders, args)))

            return run
        if self.name == "function":
            # A tf.function may not return an Operation (e.g. what minimize returns); its ops run
            # anyway, by automatic control dependencies.
            compiled = tf.function(lambda *a: tf.nest.map_structure(_drop_operations, fn(*a)))
        else:
            compiled = fn

        def run_eager(*args):
            return _to_numpy(compiled(*[tf.convert_to_tensor(a) for a in args]))

        return run_eager

    def run(self, fn, *args):
        return self.step(fn, *args)(*args)

    def read(self, structure):
        """Current numpy values of variables/tensors."""
        if self.name == "graph":
            self._initialize_new_variables()
            return self.sess.run(structure)
        return _to_numpy(structure)

    def __repr__(self):
        return "Mode({})".format(self.name)


# Optimizers --------------------------------------------------------------------------------------

_LEARNING_RATES = {"sgd": 0.1, "momentum": 0.1, "adam": 0.01, "adagrad": 0.1}
# Every tf.compat.v1.train optimizer legacy code uses (the four above, plus three more).
V1_OPTIMIZERS = ["v1-sgd", "v1-momentum", "v1-adam", "v1-adagrad", "v1-rmsprop", "v1-ftrl", "v1-adadelta"]


def _v1(kind, learning_rate, **kwargs):
    train = tf1.train
    return {
        "sgd": lambda: train.GradientDescentOptimizer(learning_rate, **kwargs),
        "momentum": lambda: train.MomentumOptimizer(learning_rate, momentum=0.9, **kwargs),
        "adam": lambda: train.AdamOptimizer(learning_rate, **kwargs),
        "adagrad": lambda: train.AdagradOptimizer(learning_rate, **kwargs),
        "rmsprop": lambda: train.RMSPropOptimizer(learning_rate, **kwargs),
        "ftrl": lambda: train.FtrlOptimizer(learning_rate, **kwargs),
        "adadelta": lambda: train.AdadeltaOptimizer(learning_rate, **kwargs),
    }[kind]()


def _keras(module, kind, learning_rate, **kwargs):
    return {
        "sgd": lambda: module.SGD(learning_rate, **kwargs),
        "momentum": lambda: module.SGD(learning_rate, momentum=0.9, **kwargs),
        "adam": lambda: module.Adam(learning_rate, **kwargs),
        "adagrad": lambda: module.Adagrad(learning_rate, **kwargs),
    }[kind]()


def optimizer_names():
    """The optimizers of this env: ``v1-*`` everywhere; ``keras-*`` (tf.keras.optimizers) on TF2;
    ``keras-legacy-*`` where Keras 2.11-2.15 / tf-keras keep OptimizerV2 under ``.legacy``."""
    names = ["v1-" + kind for kind in _LEARNING_RATES]
    if TF2:
        names += ["keras-" + kind for kind in _LEARNING_RATES]
        if KERAS_VERSION == 2 and TF_VERSION >= (2, 11):
            names += ["keras-legacy-adam", "keras-legacy-sgd"]
    return names


def new_optimizer(name, learning_rate=None, **kwargs):
    """A fresh optimizer by name (see ``optimizer_names``); ``kwargs`` go to its constructor."""
    family, _, kind = name.rpartition("-")
    learning_rate = _LEARNING_RATES.get(kind, 0.1) if learning_rate is None else learning_rate
    if family == "v1":
        return _v1(kind, learning_rate, **kwargs)
    if family == "keras":
        return _keras(tf.keras.optimizers, kind, learning_rate, **kwargs)
    if family == "keras-legacy":
        return _keras(tf.keras.optimizers.legacy, kind, learning_rate, **kwargs)
    raise ValueError("unknown optimizer name {!r}".format(name))


OPTIMIZERS = {name: functools.partial(new_optimizer, name) for name in optimizer_names()}


def loss_scale_optimizer(name, inner=None, **kwargs):
    """A Keras LossScaleOptimizer around ``new_optimizer(name, 0.01)`` (or ``inner``)."""
    inner = inner if inner is not None else new_optimizer(name, 0.01)
    wrap = getattr(tf.keras.mixed_precision, "LossScaleOptimizer", None) or tf.keras.optimizers.LossScaleOptimizer
    return wrap(inner, **kwargs)


def runs_in_v1_graph(optimizer):
    """Whether ``optimizer`` can build a tf.compat.v1 graph step (safegrad's own answer)."""
    return adapter_for(optimizer).graph_mode_unsupported() is None


def make_optimizer(name, mode):
    """A fresh optimizer; skips the test where it cannot run in ``mode``.

    Graph+Session mode runs tf.compat.v1.train optimizers and Keras OptimizerV2 (TF 2.0-2.10,
    and `legacy` in 2.11-2.15/tf-keras); the Keras 2.11+ and Keras 3 optimizers are eager /
    tf.function only (safegrad says so with a ValueError, tested separately).
    """
    optimizer = OPTIMIZERS[name]()
    if mode.name == "graph" and not runs_in_v1_graph(optimizer):
        pytest.skip("the {} does not run in tf.compat.v1 graphs".format(adapter_for(optimizer).api))
    return optimizer


def optimizer_variables(optimizer):
    """All variables an optimizer owns (slots, accumulators, step counters, hyperparameters)."""
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


# Models and checks -------------------------------------------------------------------------------


class LinearModel:
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


def as_bytes(variables):
    """Bytes of every (eager) variable, for bit-for-bit comparisons."""
    return [np.asarray(v.numpy()).tobytes() for v in variables]


def named_in(error):
    """The variable labels listed in a safegrad non-finite error message."""
    match = re.search(r"non-finite gradient for: ([^\]\n;]*)", str(error))
    assert match, "not a safegrad error: {}".format(error)
    return [label.strip() for label in match.group(1).split(", ") if label.strip()]


def np_norm(*arrays):
    """The float64 L2 norm of all ``arrays`` together."""
    return np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in arrays))


def read_scalars(logdir):
    """{tag: [(step, value), ...]} of every scalar in the event files under ``logdir`` (TF1
    ``simple_value`` summaries and TF2 tensor summaries alike)."""
    import glob
    import os

    scalars = {}
    for path in sorted(glob.glob(os.path.join(str(logdir), "**", "events.out.tfevents.*"), recursive=True)):
        for event in tf1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                else:
                    number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars
