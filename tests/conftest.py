"""Test fixtures: one ``mode`` fixture runs a test body in every execution mode.

* ``graph``: a fresh ``tf.Graph`` with a ``tf.compat.v1.Session`` (TF1 style; every env);
* ``function``: TF2 ``tf.function`` (TF2 envs);
* ``eager``: TF2 eager execution (TF2 envs).

A test builds its variables with ``mode.variable`` and its step with ``mode.step(fn, *example
args)``, then calls the step with numpy arguments and gets numpy results back, whatever the mode.
"""

import os

import numpy as np
import pytest

import safegrad  # noqa: F401  (fails loudly here if the package cannot import)
from safegrad._compat import TF_VERSION, tf, tf1

TF2 = TF_VERSION >= (2, 0)
MODES = ("graph", "function", "eager") if TF2 else ("graph",)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _to_numpy(structure):
    def convert(x):
        if hasattr(x, "numpy"):
            return x.numpy()
        return x

    return tf.nest.map_structure(convert, structure)


def _drop_operations(x):
    return None if isinstance(x, tf1.Operation) else x


class Mode(object):
    """Builds and runs steps in one execution mode (see module docstring)."""

    def __init__(self, name):
        self.name = name
        self.graph = None
        self.sess = None
        self._initialized = set()
        self._contexts = []

    # Context ------------------------------------------------------------------------------
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

    # Building -----------------------------------------------------------------------------
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
                feed = dict(zip(placeholders, args))
                return self.sess.run(outputs, feed_dict=feed)

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


@pytest.fixture(params=MODES)
def mode(request):
    with Mode(request.param) as m:
        yield m


@pytest.fixture(params=[m for m in MODES if m != "graph"])
def tf2_mode(request):
    """Only the TF2 modes (function, eager): for Keras 3 optimizers and other TF2-only APIs."""
    with Mode(request.param) as m:
        yield m


@pytest.fixture
def graph_mode():
    with Mode("graph") as m:
        yield m


def keras_version():
    """Major version of the Keras behind tf.keras (None on TF 1.x)."""
    if not TF2:
        return 2
    keras = tf.keras
    if hasattr(keras, "version"):  # Keras 3 only
        return int(keras.version().split(".")[0])
    return 2


def v1_optimizer_factories():
    return {
        "v1-sgd": lambda: tf1.train.GradientDescentOptimizer(0.1),
        "v1-momentum": lambda: tf1.train.MomentumOptimizer(0.1, momentum=0.9),
        "v1-adam": lambda: tf1.train.AdamOptimizer(0.01),
        "v1-adagrad": lambda: tf1.train.AdagradOptimizer(0.1),
    }


def keras_optimizer_factories():
    """The tf.keras optimizers of this env; `keras-legacy-*` where Keras 2.11-2.15/tf-keras keeps
    OptimizerV2 under `optimizers.legacy` (under Keras 3 that module exists but raises)."""
    if not TF2:
        return {}
    factories = {
        "keras-sgd": lambda: tf.keras.optimizers.SGD(0.1),
        "keras-momentum": lambda: tf.keras.optimizers.SGD(0.1, momentum=0.9),
        "keras-adam": lambda: tf.keras.optimizers.Adam(0.01),
        "keras-adagrad": lambda: tf.keras.optimizers.Adagrad(0.1),
    }
    if keras_version() == 2 and TF_VERSION >= (2, 11):
        factories["keras-legacy-adam"] = lambda: tf.keras.optimizers.legacy.Adam(0.01)
        factories["keras-legacy-sgd"] = lambda: tf.keras.optimizers.legacy.SGD(0.1)
    return factories


def pytest_report_header(config):
    import tensorflow

    return "safegrad test env: TensorFlow {}, Keras {}, modes {}".format(
        tensorflow.__version__, keras_version(), ", ".join(MODES)
    )
