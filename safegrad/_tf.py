"""TensorFlow, imported once: the version floor, the two namespaces, the execution context.

safegrad is written once against ``tensorflow.compat.v2`` (``tf``) and uses
``tensorflow.compat.v1`` (``tf1``) only for graphs, sessions and v1 optimizers; both exist from
TF 1.15 on. Importing this module fails with an actionable ImportError when TensorFlow is missing
or older than 1.15. The functions below answer the questions every stage asks about where it runs
(eagerly? while tracing a function? into which graph do variables go?) with public TF API only;
what differs between TF versions is in ``_compat`` and ``_keras_compat``.
"""

import re

MIN_TF_VERSION = (1, 15)

try:
    import tensorflow as tf_root
except ImportError as _error:  # pragma: no cover - exercised only without TensorFlow
    raise ImportError(
        "safegrad needs TensorFlow >= {}.{}, but TensorFlow is not installed. Install the build you "
        "want, e.g. `pip install tensorflow` or `pip install tensorflow-cpu`, or "
        "`pip install 'safegrad[tf]'`.".format(*MIN_TF_VERSION)
    ) from _error


def parse_version(text):
    """(major, minor) of a version string; (0, 0) when it has none."""
    match = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


TF_VERSION_STRING = getattr(tf_root, "__version__", "0.0")
TF_VERSION = parse_version(TF_VERSION_STRING)

if TF_VERSION < MIN_TF_VERSION:
    raise ImportError(
        "safegrad needs TensorFlow >= {}.{}; found TensorFlow {} at {}. Upgrade it, e.g. "
        "`pip install -U tensorflow`.".format(
            MIN_TF_VERSION[0], MIN_TF_VERSION[1], TF_VERSION_STRING, getattr(tf_root, "__file__", "?")
        )
    )

from tensorflow.compat import v1 as tf1  # noqa: E402  (after the version check on purpose)
from tensorflow.compat import v2 as tf  # noqa: E402


def executing_eagerly():
    return tf.executing_eagerly()


def inside_function():
    """True while tracing a tf.function body (or a cond_v2/while_v2 branch function)."""
    return bool(getattr(tf1.get_default_graph(), "building_function", False))


def building_v1_graph():
    """True when ops built now go into a TF1-style graph run by a Session (not eager, not a
    ``tf.function``): there a step returns a train op rather than a bool tensor."""
    return not executing_eagerly() and not inside_function()


def outer_context_key():
    """The graph that variables created now would live in, or None when that is eager.

    ``tf.init_scope`` lifts out of ``tf.function`` bodies and control-flow branches, so a
    ``tf.function`` traced several times, or a cond branch, maps to the same key as its caller.
    """
    with tf.init_scope():
        if tf.executing_eagerly():
            return None
        return tf1.get_default_graph()


def current_name_scope():
    """The current graph's name scope ("" at the root, and eagerly)."""
    if tf.executing_eagerly():
        return ""
    return tf1.get_default_graph().get_name_scope()


def in_name_scope(scope):
    """Re-enters the name scope ``scope`` (as returned by ``Graph.get_name_scope``) in a graph."""
    if tf.executing_eagerly():
        return tf.name_scope("")
    return tf1.name_scope(scope + "/" if scope else None)


def raise_invalid_argument(message):
    """Raises the error a failed graph assertion would raise, eagerly, with ``message`` verbatim."""
    raise tf.errors.InvalidArgumentError(None, None, message)


def as_operation(step_result):
    """What v1 and Keras OptimizerV2 ``apply_gradients`` return: an Operation in a graph or a
    ``tf.function``, None eagerly."""
    if executing_eagerly():
        return None
    if isinstance(step_result, tf1.Operation):
        return step_result
    return tf.group(step_result)


def as_control_input(value):
    """``value`` if it can be a control dependency (an op or tensor), else None.

    Keras 3 optimizers return a Keras variable from ``apply_gradients``; inside a ``tf.function``
    automatic control dependencies order its updates anyway, so it is simply not listed.
    """
    if isinstance(value, (tf1.Operation, tf.Tensor)):
        return value
    return None
