"""Finite checks that name the offending variables and cost O(1) when everything is finite."""

from safegrad._compat import do_not_convert, in_xla_context
from safegrad._norm import dense_equivalent_values, inspect_gradients
from safegrad._structure import GradientList
from safegrad._tf import executing_eagerly, raise_invalid_argument, tf

NONFINITE_PREFIX = "safegrad: non-finite gradient for: "


def failure_message(report, prefix=None, suffix=None):
    """A string tensor: '[prefix ]safegrad: non-finite gradient for: w (NaN)[suffix]'."""
    parts = []
    if prefix:
        parts.append(prefix + " ")
    parts += [NONFINITE_PREFIX, report]
    if suffix is not None:
        parts.append(suffix)
    return tf.strings.join(parts)


XLA_CANNOT_RAISE = (
    "{} needs to raise an error at run time, which XLA-compiled code cannot do (XLA drops "
    "assertions and has no string ops). Use on_nonfinite='skip' (without max_consecutive_skips), "
    "or compile without XLA: model.compile(..., jit_compile=False) / tf.function(jit_compile=False)."
)


def check_no_xla(what):
    """ValueError at trace time when raising is asked for inside XLA-compiled code."""
    if in_xla_context():
        raise ValueError(XLA_CANNOT_RAISE.format(what))


def fail_unless(condition, message):
    """Raises ``tf.errors.InvalidArgumentError(message)`` unless ``condition``.

    Eagerly it checks now and raises with ``message`` verbatim, returning None. In a graph or
    ``tf.function`` it returns one ``Assert`` op - one op, whatever the number of variables -
    whose error text contains ``message``; make updates depend on it.
    """
    if executing_eagerly():
        if not bool(condition):
            raise_invalid_argument(message.numpy().decode("utf-8"))
        return None
    return tf.debugging.Assert(condition, [message], name="safegrad_assert_finite")


@do_not_convert
def assert_finite(grads_and_vars, message=None):
    """Checks that no gradient has a NaN or Inf, naming every variable whose gradient has one.

    The check reads every gradient once (the sum of squares of ``safegrad.global_norm``) and tests
    one scalar; the per-variable diagnosis runs only when that scalar is not finite. A gradient
    whose squares overflow float32 is not mistaken for a non-finite one.

    Args:
      grads_and_vars: (gradient, variable) pairs as returned by ``compute_gradients``, or a list
        of gradients (then named 'gradient #i'). None gradients are ignored; IndexedSlices are
        checked as their dense equivalent.
      message: optional text to put before the error message.

    Returns:
      In a graph or ``tf.function``: an op to put in ``tf.control_dependencies`` (no-op when every
      gradient is None). Eagerly: None, after checking at once.

    Raises:
      tf.errors.InvalidArgumentError: (eagerly now; in a graph when the op runs) with a message
        like ``safegrad: non-finite gradient for: poisoned_weight (NaN), bias (Inf)`` that names
        every offending variable and no other.

    Example:
      >>> grads_and_vars = optimizer.compute_gradients(loss)
      >>> with tf.control_dependencies([safegrad.assert_finite(grads_and_vars)]):
      ...   train_op = optimizer.apply_gradients(grads_and_vars)
    """
    if message is not None and not isinstance(message, str):
        raise TypeError(
            "`message` must be a string or None. Received: message={!r} (of type {})".format(
                message, type(message).__name__
            )
        )
    form = GradientList.parse(grads_and_vars, "grads_and_vars")
    check_no_xla("safegrad.assert_finite")
    present = form.present
    if not present:
        return None if executing_eagerly() else tf.no_op(name="safegrad_assert_finite")
    with tf.name_scope("safegrad_assert_finite"):
        values = [dense_equivalent_values(form.gradients[i]) for i in present]
        seen = inspect_gradients(
            values, names=form.names(present),
            # (the message's string ops run only on the diagnosis path)
            describe=lambda report, step: failure_message(report, prefix=message),
        )
        return fail_unless(seen.all_finite, seen.message)
