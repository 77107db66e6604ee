"""Argument checks made when a public function is called.

Messages follow Keras: name the argument, say what was expected, echo what was received, e.g.
"`clip_norm` must be > 0. Received: clip_norm=-1". Static values are checked at build time; a
tensor whose value is only known at run time gets a runtime assertion where that matters.
"""

import math
import numbers

import numpy as np

from safegrad._tf import building_v1_graph, executing_eagerly, tf, tf1
from safegrad._variables import is_trainable_dtype, is_variable, variable_name

ON_NONFINITE_CHOICES = ("raise", "skip", "ignore")
_FLOAT32_MAX = 3.4028234663852886e38


def _is_tensor(value):
    return isinstance(value, tf.Tensor) or isinstance(value, tf.Variable)


def _describe(value):
    return "{!r} (of type {})".format(value, type(value).__name__)


def static_scalar(value, name):
    """The value of a number or scalar tensor if it is known now, else None; checks rank."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if _is_tensor(value):
        ndims = value.shape.ndims
        if ndims not in (None, 0):
            raise ValueError(
                "`{0}` must be a scalar. Received: {0} with shape {1}".format(name, value.shape)
            )
        if not (value.dtype.is_floating or value.dtype.is_integer):
            raise TypeError(
                "`{0}` must be a real number. Received: {0} of dtype {1}".format(name, value.dtype.name)
            )
        if isinstance(value, tf.Tensor):
            static = tf.get_static_value(value)
            if static is not None:
                return float(static)
        return None
    raise TypeError(
        "`{0}` must be a number or a scalar tensor. Received: {0}={1}".format(name, _describe(value))
    )


def positive_scalar(value, name):
    """None, or a finite number > 0, or a scalar tensor (checked now when its value is static)."""
    if value is None:
        return None
    static = static_scalar(value, name)
    if static is not None and not (static > 0 and not math.isinf(static)):
        raise ValueError("`{0}` must be > 0 and finite. Received: {0}={1!r}".format(name, value))
    if static is not None and static > _FLOAT32_MAX:
        raise ValueError(
            "`{0}` must be at most 3.4e38: norms are float32. Received: {0}={1!r}".format(name, value)
        )
    return value


def runtime_positive(value, name):
    """``value`` as a float32 tensor that, when not statically known, asserts it is > 0."""
    tensor = tf.cast(value, tf.float32)
    if isinstance(value, numbers.Real) or tf.get_static_value(tensor) is not None:
        return tensor
    message = "`{}` must be > 0 and finite.".format(name)
    ok = tf.logical_and(tensor > 0, tf.math.is_finite(tensor))
    with tf.control_dependencies([tf.debugging.Assert(ok, [message, tensor])]):
        return tf.identity(tensor)


def clip_value_bounds(value, name="clip_value"):
    """Checks ``c`` (meaning [-c, c], c > 0) or a ``(min, max)`` pair; returns ``value``."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(
                "`{0}` must be a number c (for [-c, c]) or a (min, max) pair. Received: "
                "{0}={1!r}".format(name, value)
            )
        low, high = value
        static_low = static_scalar(low, name + "[0]")
        static_high = static_scalar(high, name + "[1]")
        for bound in (static_low, static_high):
            if bound is not None and math.isnan(bound):
                raise ValueError("`{0}` must not be NaN. Received: {0}={1!r}".format(name, value))
        if static_low is not None and static_high is not None and static_low > static_high:
            raise ValueError(
                "`{0}` must have min <= max. Received: {0}={1!r}".format(name, tuple(value))
            )
        return value
    static = static_scalar(value, name)
    if static is not None and not (static > 0):
        raise ValueError(
            "`{0}` must be > 0 (it clips to [-{0}, {0}]); pass a (min, max) pair for other "
            "ranges. Received: {0}={1!r}".format(name, value)
        )
    return value


def flag(value, name):
    """A bool argument (numpy bools too); TypeError naming it otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError("`{0}` must be True or False. Received: {0}={1}".format(name, _describe(value)))
    return bool(value)


def on_nonfinite(value):
    if not isinstance(value, str) or value not in ON_NONFINITE_CHOICES:
        raise ValueError(
            "`on_nonfinite` must be one of {}. Received: on_nonfinite={!r}".format(
                ", ".join(repr(c) for c in ON_NONFINITE_CHOICES), value
            )
        )
    return value


def max_consecutive_skips(value, policy):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            "`max_consecutive_skips` must be an integer >= 0 or None. Received: "
            "max_consecutive_skips={}".format(_describe(value))
        )
    if value < 0:
        raise ValueError(
            "`max_consecutive_skips` must be >= 0. Received: max_consecutive_skips={!r}".format(value)
        )
    if policy != "skip":
        raise ValueError(
            "`max_consecutive_skips` only applies with on_nonfinite='skip'. Received: "
            "max_consecutive_skips={!r}, on_nonfinite={!r}".format(value, policy)
        )
    return int(value)


def global_step(value):
    if value is None:
        return None
    if not is_variable(value) or not value.dtype.is_integer:
        raise TypeError(
            "`global_step` must be an integer variable (e.g. "
            "tf.compat.v1.train.get_or_create_global_step()) or None. Received: "
            "global_step={}".format(_describe(value))
        )
    return value


def name(value):
    if value is not None and not isinstance(value, str):
        raise TypeError("`name` must be a string or None. Received: name={}".format(_describe(value)))
    return value


def var_list(value):
    """None, a zero-argument callable, or a non-empty list of distinct variables of which at
    least one can be trained (non-float ones are then left alone, as TensorFlow does)."""
    if value is None or callable(value):
        return value
    if isinstance(value, (str, bytes, dict)) or is_variable(value) or _is_tensor(value):
        raise TypeError(
            "`var_list` must be a list of variables (or a callable returning one). Received: "
            "var_list={}".format(_describe(value))
        )
    try:
        variables = list(value)
    except TypeError:
        raise TypeError(
            "`var_list` must be a list of variables (or a callable returning one). Received: "
            "var_list={}".format(_describe(value))
        ) from None
    if not variables:
        raise ValueError("`var_list` must not be empty. Received: var_list={!r}".format(value))
    for index, variable in enumerate(variables):
        if not is_variable(variable):
            raise TypeError(
                "`var_list[{0}]` must be a variable. Received: var_list[{0}]={1}".format(
                    index, _describe(variable)
                )
            )
    distinct_variables(variables, "var_list")
    if not any(is_trainable_dtype(v) for v in variables):
        raise ValueError(
            "`var_list` has no floating-point variable, so no gradient can be computed: {}. "
            "Received: var_list={!r}".format(_dtypes(variables), variables)
        )
    return variables


def distinct_variables(variables, argument):
    """ValueError naming ``argument`` if a variable occurs twice (it would be updated twice, its
    gradient counted twice in the global norm)."""
    seen = {}
    for index, variable in enumerate(variables):
        if variable is None:
            continue
        first = seen.setdefault(id(variable), index)
        if first != index:
            raise ValueError(
                "`{0}` lists the variable {1!r} twice (at {2} and {3}); it would be updated twice. "
                "Pass each variable once. Received: {0}={4!r}".format(
                    argument, variable_name(variable), first, index, variables
                )
            )


def _dtypes(variables):
    return ", ".join("{} ({})".format(variable_name(v), tf.as_dtype(v.dtype).base_dtype.name) for v in variables)


def loss_and_tape(loss, tape):
    """Checks the ``loss`` / ``tape`` combination of ``clip_and_apply`` and the wrappers."""
    if callable(loss) and not isinstance(loss, (tf.Tensor, tf.Variable)):
        if tape is not None:
            raise ValueError(
                "`loss` is a callable, so safegrad records its own GradientTape; `tape` must be "
                "None. Pass the loss TENSOR computed under `tape` instead. Received: tape={!r}".format(
                    tape
                )
            )
        return
    if not isinstance(loss, (tf.Tensor, tf.Variable)):
        hint = ""
        if isinstance(loss, (list, tuple)):
            hint = " (for gradients you already have, use safegrad.apply_gradients)"
        raise TypeError(
            "`loss` must be a scalar tensor or a zero-argument callable returning one{}. Received: "
            "loss={}".format(hint, _describe(loss))
        )
    if tape is not None and not isinstance(tape, tf.GradientTape):
        raise TypeError(
            "`tape` must be the tf.GradientTape that recorded `loss`. Received: tape={}".format(
                _describe(tape)
            )
        )
    if tape is None and executing_eagerly():
        raise ValueError(
            "`loss` is a tensor but TensorFlow is executing eagerly, where a tensor does not "
            "remember how it was computed. Pass tape=<the tf.GradientTape that recorded it>, or "
            "pass loss as a zero-argument callable. Received: loss={!r}, tape=None".format(loss)
        )


def _one_of(value, allowed, name, expected):
    """``value`` if it is one of ``allowed`` (bools refused: True == 1); ValueError otherwise."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError("`{0}` must be {1}. Received: {0}={2!r}".format(name, expected, value))
    return value


def gradient_options(loss, tape, gate_gradients, aggregation_method, colocate_gradients_with_ops, grad_loss):
    """The options of ``Optimizer.compute_gradients`` that were given, checked; a dict.

    ``gate_gradients``, ``aggregation_method`` and ``colocate_gradients_with_ops`` are options of
    ``tf.gradients``: they apply to a loss tensor (or a callable) in a TF1-style graph, and to a
    loss tensor without a tape inside ``tf.function``; a GradientTape has none of them.
    ``grad_loss`` applies everywhere.
    """
    given = {}
    if gate_gradients is not None:
        gates = (tf1.train.Optimizer.GATE_NONE, tf1.train.Optimizer.GATE_OP, tf1.train.Optimizer.GATE_GRAPH)
        given["gate_gradients"] = _one_of(
            gate_gradients, gates, "gate_gradients",
            "tf.compat.v1.train.Optimizer.GATE_NONE, GATE_OP or GATE_GRAPH {}".format(gates),
        )
    if aggregation_method is not None:
        methods = sorted({v for k, v in vars(tf1.AggregationMethod).items() if k.isupper()})
        given["aggregation_method"] = _one_of(
            aggregation_method, methods, "aggregation_method",
            "one of tf.AggregationMethod's values {}".format(methods),
        )
    if colocate_gradients_with_ops is not None:
        if not isinstance(colocate_gradients_with_ops, bool):
            raise TypeError(
                "`colocate_gradients_with_ops` must be a bool or None. Received: "
                "colocate_gradients_with_ops={}".format(_describe(colocate_gradients_with_ops))
            )
        given["colocate_gradients_with_ops"] = colocate_gradients_with_ops
    graph_gradients = tape is None and (not callable(loss) or building_v1_graph())
    if given and not graph_gradients:
        name = sorted(given)[0]
        raise ValueError(
            "`{0}` is an option of tf.gradients: it applies to a loss tensor in a graph, but here "
            "the gradients come from a GradientTape, which has no such option. Leave it out (or "
            "build the step in a tf.compat.v1 graph). Received: {0}={1!r}".format(name, given[name])
        )
    if grad_loss is not None:
        if not (_is_tensor(grad_loss) or isinstance(grad_loss, numbers.Real)):
            raise TypeError(
                "`grad_loss` must be a tensor holding the gradient of the loss (or None). Received: "
                "grad_loss={}".format(_describe(grad_loss))
            )
        given["grad_loss"] = grad_loss
    return given
