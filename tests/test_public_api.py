"""The public API is exactly ``safegrad.__all__``, documented, and usable in every mode."""

import inspect
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import safegrad
from safegrad._compat import tf, tf1

from conftest import TF2

EXPECTED = [
    "SafeOptimizer",
    "StepState",
    "__version__",
    "assert_finite",
    "clip_and_apply",
    "clip_by_global_norm",
    "clip_per_variable",
    "global_norm",
    "step_state",
]


def test_all_is_exactly_the_public_names():
    assert sorted(safegrad.__all__) == EXPECTED
    public = [
        name
        for name, value in vars(safegrad).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    ]
    assert sorted(public + ["__version__"]) == EXPECTED
    for name in safegrad.__all__:
        assert hasattr(safegrad, name)


def test_every_public_callable_is_documented():
    for name in safegrad.__all__:
        value = getattr(safegrad, name)
        if name == "__version__":
            assert isinstance(value, str) and value.count(".") >= 2
            continue
        doc = inspect.getdoc(value)
        assert doc and len(doc) > 80, name
        if inspect.isfunction(value) or hasattr(value, "__wrapped__"):
            assert "Args:" in doc and "Returns:" in doc and "Example" in doc, name


def test_signature_of_clip_and_apply_is_pinned():
    params = inspect.signature(safegrad.clip_and_apply).parameters
    assert list(params) == [
        "optimizer", "loss", "var_list", "tape", "clip_norm", "per_variable_clip_norm",
        "clip_value", "on_nonfinite", "max_consecutive_skips", "global_step", "name",
    ]
    keyword_only = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == list(params)[3:]
    assert params["on_nonfinite"].default == "raise"


def _calls(w):
    """One call of every public function, as a user writes it."""
    g = tf.constant([3.0, 4.0])
    opt = tf1.train.GradientDescentOptimizer(0.1)
    safe = safegrad.SafeOptimizer(tf1.train.GradientDescentOptimizer(0.1), clip_norm=1.0)
    return {
        "global_norm": lambda: safegrad.global_norm([g]),
        "clip_by_global_norm": lambda: safegrad.clip_by_global_norm([(g, w)], 1.0)[1],
        "clip_per_variable": lambda: safegrad.clip_per_variable([g], clip_norm=1.0)[0],
        "assert_finite": lambda: safegrad.assert_finite([(g, w)]),
        "clip_and_apply": lambda: safegrad.clip_and_apply(opt, lambda: tf.reduce_sum(w * w), [w], clip_norm=1.0),
        "step_state": lambda: safegrad.step_state(opt).total_skips.read_value(),
        "SafeOptimizer": lambda: safe.minimize(lambda: tf.reduce_sum(w * w), var_list=[w]),
    }


@pytest.mark.skipif(not TF2, reason="tf.function: TF2")
@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"__version__", "StepState"}))
def test_every_public_function_traces_under_tf_function(name):
    w = tf.Variable([1.0, 2.0], name="w")
    call = _calls(w)[name]

    @tf.function
    def traced():
        call()  # ops created in a tf.function run by automatic control dependencies
        return tf.constant(0)

    traced()
    traced()  # a second call reuses the trace (no variables created twice)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"__version__", "StepState"}))
def test_every_public_function_builds_in_a_graph(name, graph_mode):
    w = tf1.Variable([1.0, 2.0], name="w")
    calls = _calls(w)
    if name in ("clip_and_apply", "SafeOptimizer"):  # graph mode takes the loss tensor
        loss = tf.reduce_sum(w * w)
        calls["clip_and_apply"] = lambda: safegrad.clip_and_apply(tf1.train.GradientDescentOptimizer(0.1), loss, [w])
        calls["SafeOptimizer"] = lambda: safegrad.SafeOptimizer(tf1.train.GradientDescentOptimizer(0.1)).minimize(loss)
    graph_mode.run(calls[name])


def _python(code):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        universal_newlines=True, timeout=300,
    )


def test_clear_import_error_without_tensorflow():
    result = _python("import sys; sys.modules['tensorflow'] = None\nimport safegrad")
    assert result.returncode != 0
    assert "safegrad needs TensorFlow >= 1.15, but TensorFlow is not installed" in result.stderr
    assert "pip install tensorflow" in result.stderr


def test_clear_import_error_with_old_tensorflow():
    fake = "import sys, types; m = types.ModuleType('tensorflow'); m.__version__ = '1.14.0'; sys.modules['tensorflow'] = m\n"
    result = _python(fake + "import safegrad")
    assert result.returncode != 0
    assert "safegrad needs TensorFlow >= 1.15; found TensorFlow 1.14.0" in result.stderr


def test_import_does_not_load_keras_beyond_tensorflow():
    code = "import sys, tensorflow\nbefore = {m for m in sys.modules if 'keras' in m}\nimport safegrad\nprint(sorted({m for m in sys.modules if 'keras' in m} - before))"
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
