"""The public API is exactly ``safegrad.__all__``, documented, and usable in every mode."""

import inspect
import os
import subprocess
import sys
import types

import pytest

import safegrad
from safegrad._policy import StepPolicy
from safegrad._tf import tf, tf1

from helpers import TF2

EXPECTED = [
    "ExplainCallback",
    "ExplainHook",
    "NonFiniteReport",
    "SafeOptimizer",
    "Saver",
    "StepOutputs",
    "StepState",
    "StepStatsCallback",
    "__version__",
    "add_summaries",
    "apply_gradients",
    "assert_finite",
    "clip_and_apply",
    "clip_by_global_norm",
    "clip_per_variable",
    "explain",
    "explain_session",
    "find_step_state",
    "global_norm",
    "step_outputs",
    "step_state",
]
CLASSES = {"__version__", "ExplainCallback", "ExplainHook", "NonFiniteReport", "StepState", "StepStatsCallback",
           "StepOutputs"}
LAZY = ["ExplainCallback", "ExplainHook", "StepStatsCallback"]  # built on first access
GRAPH_ONLY = {"Saver", "explain_session", "find_step_state", "step_outputs"}  # TF1-style graphs and Sessions
EAGER_ONLY = {"explain"}  # replays a step eagerly (TF2)


def test_all_is_exactly_the_public_names():
    assert sorted(safegrad.__all__) == EXPECTED
    public = [
        name
        for name, value in vars(safegrad).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    ]
    # The callbacks subclass the installed Keras's Callback, so they are built on first access
    # (and ExplainHook TF's SessionRunHook, alike).
    assert sorted(public + ["__version__"] + LAZY) == EXPECTED
    assert sorted(n for n in dir(safegrad) if not n.startswith("_") and n in EXPECTED) == sorted(
        set(EXPECTED) - {"__version__"}
    )
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
        "clip_value", "on_nonfinite", "max_consecutive_skips", "tf_compatible_norm", "global_step",
        "gate_gradients", "aggregation_method", "colocate_gradients_with_ops", "grad_loss", "name",
    ]
    keyword_only = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == list(params)[3:]
    assert params["on_nonfinite"].default == "raise"


def test_signature_of_apply_gradients_is_pinned():
    params = inspect.signature(safegrad.apply_gradients).parameters
    assert list(params) == [
        "optimizer", "grads_and_vars", "clip_norm", "per_variable_clip_norm", "clip_value",
        "on_nonfinite", "max_consecutive_skips", "tf_compatible_norm", "global_step", "name",
    ]
    keyword_only = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == list(params)[2:]


def _policy_parameters(function):
    """(name, default) of the policy arguments in a public signature, in order."""
    fields = StepPolicy._fields
    params = inspect.signature(function).parameters
    return [(name, params[name].default) for name in params if name in fields], list(fields)


def _public_constructors():
    found = [safegrad.clip_and_apply, safegrad.apply_gradients, safegrad.SafeOptimizer]
    if TF2:
        found.append(type(safegrad.SafeOptimizer(tf.keras.optimizers.SGD(0.1))))
    return found


@pytest.mark.parametrize("function", _public_constructors(), ids=lambda f: f.__module__ + "." + f.__name__)
def test_every_public_signature_lists_the_policy_once_in_order(function):
    present, fields = _policy_parameters(function)
    assert [name for name, _ in present] == fields
    assert dict(present) == dict(StepPolicy.DEFAULTS)


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
        "apply_gradients": lambda: safegrad.apply_gradients(opt, [(g, w)], clip_norm=1.0),
        "step_state": lambda: safegrad.step_state(opt).total_skips.read_value(),
        "add_summaries": lambda: safegrad.add_summaries(opt),
        "SafeOptimizer": lambda: safe.minimize(lambda: tf.reduce_sum(w * w), var_list=[w]),
    }


@pytest.mark.skipif(not TF2, reason="tf.function: TF2")
@pytest.mark.parametrize("name", sorted(set(EXPECTED) - CLASSES - GRAPH_ONLY - EAGER_ONLY))
def test_every_public_function_traces_under_tf_function(name):
    w = tf.Variable([1.0, 2.0], name="w")
    call = _calls(w)[name]

    @tf.function
    def traced():
        call()  # ops created in a tf.function run by automatic control dependencies
        return tf.constant(0)

    traced()
    traced()  # a second call reuses the trace (no variables created twice)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - CLASSES - EAGER_ONLY))
def test_every_public_function_builds_in_a_graph(name, graph_mode):
    w = tf1.Variable([1.0, 2.0], name="w")
    calls = _calls(w)
    loss = tf.reduce_sum(w * w)  # graph mode takes the loss tensor
    step = lambda: safegrad.clip_and_apply(tf1.train.GradientDescentOptimizer(0.1), loss, [w])  # noqa: E731
    calls["clip_and_apply"] = step
    calls["SafeOptimizer"] = lambda: safegrad.SafeOptimizer(tf1.train.GradientDescentOptimizer(0.1)).minimize(loss)
    calls["step_outputs"] = lambda: safegrad.step_outputs(step()).global_norm
    calls["find_step_state"] = lambda: (step(), safegrad.find_step_state().total_skips.read_value())[1]
    calls["Saver"] = lambda: (step(), safegrad.Saver().saver_def.filename_tensor_name)[0]
    calls["add_summaries"] = lambda: safegrad.add_summaries(step())

    def explain_session():
        train_op = step()
        graph_mode.sess.run(tf1.global_variables_initializer())
        assert safegrad.explain_session(graph_mode.sess, train_op) is None  # a healthy step
        return train_op

    calls["explain_session"] = explain_session
    graph_mode.run(calls[name])


@pytest.mark.skipif(not TF2, reason="TF2 eager replay")
def test_explain_runs_eagerly_and_is_refused_inside_a_function():
    w = tf.Variable([1.0, 2.0], name="w")
    step = tf.function(_calls(w)["clip_and_apply"])
    assert safegrad.explain(step) is None  # a healthy step

    @tf.function
    def inside():
        return safegrad.explain(step)

    with pytest.raises(RuntimeError, match=r"replays a step eagerly"):
        inside()


def _python(code):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env,
        text=True, timeout=300,
    )


def test_clear_import_error_without_tensorflow():
    result = _python("import sys; sys.modules['tensorflow'] = None\nimport safegrad")
    assert result.returncode != 0
    assert "safegrad needs TensorFlow >= 1.15, but TensorFlow is not installed" in result.stderr
    assert "pip install tensorflow" in result.stderr


def test_clear_import_error_with_old_tensorflow():
    fake = (
        "import sys, types; m = types.ModuleType('tensorflow'); m.__version__ = '1.14.0'; "
        "sys.modules['tensorflow'] = m\n"
    )
    result = _python(fake + "import safegrad")
    assert result.returncode != 0
    assert "safegrad needs TensorFlow >= 1.15; found TensorFlow 1.14.0" in result.stderr


def test_import_loads_no_keras_package_tensorflow_did_not_load():
    code = (
        "import sys, tensorflow\n"
        "packages = lambda: {m for m in sys.modules if m.split('.')[0] in ('keras', 'tf_keras')}\n"
        "before = packages()\n"
        "import safegrad\n"
        "print('none' if not before else 'some', sorted(packages() - before) if not before else '')"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    # Where TensorFlow imported no Keras package (TF 1.15, 2.4), safegrad imports none either;
    # elsewhere it only reads tf.keras's namespace to register its classes (cost: < 0.05 s here).
    assert result.stdout.split()[0] == "some" or result.stdout.strip() == "none []"


@pytest.mark.skipif(not TF2, reason="Keras wrappers: TF2")
def test_keras_classes_are_registered_at_import():
    code = (
        "import safegrad, tensorflow as tf\n"
        "names = ['safegrad>SafeOptimizer', 'safegrad>SafeOptimizerV2']\n"
        "print(sorted(n for n in names if tf.keras.utils.get_registered_object(n) is not None))"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() != "[]"


def test_registration_hook_runs_after_a_later_keras_import(tmp_path):
    package = tmp_path / "keras"
    package.mkdir()
    (package / "__init__.py").write_text("IMPORTED = True\n")
    code = (
        "import sys\n"
        "sys.path.insert(0, {!r})\n"
        "import tensorflow\n"
        "if 'keras' in sys.modules: print('skip'); raise SystemExit\n"
        "from safegrad._keras_compat import KerasImportHook\n"
        "calls = []\n"
        "KerasImportHook.pending.append(lambda: calls.append(sys.modules['keras'].IMPORTED))\n"
        "sys.meta_path.insert(0, KerasImportHook())\n"
        "import keras\n"
        "print(calls, any(isinstance(f, KerasImportHook) for f in sys.meta_path))"
    ).format(str(tmp_path))
    result = _python(code)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "skip":
        pytest.skip("TensorFlow here imports the real keras package itself")
    assert result.stdout.strip() == "[True] False"  # ran once, after the package executed; removed
