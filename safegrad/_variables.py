"""Variables: recognising them, naming them as users know them, and safegrad's own state variables."""

import re

from safegrad._compat import resource_variable_creation
from safegrad._tf import tf, tf1

_TENSOR_SUFFIX = re.compile(r":\d+$")


def is_variable(value):
    """True for tf.Variable (ref or resource, mirrored, autocast) and for Keras 3 variables.

    Keras 3 variables are not ``tf.Variable`` subclasses, so this is duck-typed.
    """
    if isinstance(value, tf.Variable):
        return True
    return all(hasattr(value, attr) for attr in ("assign", "assign_add", "dtype", "shape", "name"))


def is_trainable_dtype(variable):
    """Whether gradients can flow to ``variable``: floating-point or complex (Keras 3 variables
    spell their dtype as a string)."""
    dtype = tf.as_dtype(variable.dtype)
    return dtype.is_floating or dtype.is_complex


def is_ref_variable(variable):
    """True for a TF1 ref variable (TF 1.15's default ``tf.Variable``; ``use_resource=False``)."""
    dtype = tf.as_dtype(variable.dtype)
    return dtype != dtype.base_dtype


def variable_name(variable):
    """The name a user recognises: Keras 3 ``path`` ('sequential/dense/kernel'), else the TF name
    without its ':0' output suffix ('dense/kernel', 'poisoned_weight')."""
    path = getattr(variable, "path", None)  # Keras 3 variables (TF >= 2.16)
    if isinstance(path, str) and path:
        return path
    name = getattr(variable, "name", None)
    if isinstance(name, str) and name:
        return _TENSOR_SUFFIX.sub("", name)
    return repr(variable)


def trainable_variables_in_graph():
    """What ``tf1.train.Optimizer.compute_gradients`` optimises by default in a graph."""
    variables = list(tf1.trainable_variables())
    variables += [
        v
        for v in tf1.get_collection(tf1.GraphKeys.TRAINABLE_RESOURCE_VARIABLES)
        if all(v is not w for w in variables)
    ]
    return variables


def new_state_variable(initial_value, dtype, name):
    """A non-trainable resource variable for safegrad's own state (counters, last-step stats).

    Created under ``tf.init_scope`` so that a ``tf.function`` or cond branch creates it once, in
    the outer context; in a graph it joins GLOBAL_VARIABLES, so ``tf1.train.Saver`` and
    ``global_variables_initializer`` see it.
    """
    with tf.init_scope(), resource_variable_creation():
        # Under tf.distribute: mirrored, and updated from replica context with replica 0's value
        # (every replica computes the same statistics from the same summed gradients).
        return tf.Variable(
            initial_value, dtype=dtype, trainable=False, name=name,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
