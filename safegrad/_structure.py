"""The two forms clipping functions accept: gradients, or (gradient, variable) pairs."""

import numpy as np

from safegrad._tf import tf
from safegrad._variables import variable_name

_FORM_HELP = (
    "a list of gradients (Tensor, IndexedSlices or None) or a list of (gradient, variable) pairs "
    "as returned by compute_gradients"
)


def _check_gradient(gradient, where):
    """TypeError unless ``gradient`` is None, IndexedSlices, or a floating-point tensor or
    tensor-like (numbers, numpy arrays); creates no op, so a refused call leaves no trace."""
    if gradient is None:
        return
    if isinstance(gradient, (tf.Tensor, tf.IndexedSlices, tf.Variable)):
        dtype = tf.as_dtype(gradient.dtype).base_dtype
    else:
        try:
            dtype = tf.as_dtype(np.asarray(gradient).dtype)
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or isinstance(gradient, (str, bytes)):
            raise TypeError(
                "`{}` must be a Tensor, IndexedSlices or None. Received: {!r} (of type {})".format(
                    where, gradient, type(gradient).__name__
                )
            )
    if not (dtype.is_floating or dtype.is_complex):
        raise TypeError(
            "`{}` must have a floating-point dtype. Received: dtype {}".format(where, dtype.name)
        )


def _as_gradient(gradient):
    if gradient is None or isinstance(gradient, (tf.Tensor, tf.IndexedSlices)):
        return gradient
    return tf.convert_to_tensor(gradient)


class GradientList:
    """Gradients plus, for the pair form, their variables; rebuilds results in the input form."""

    def __init__(self, gradients, variables=None):
        self.gradients = list(gradients)
        self.variables = None if variables is None else list(variables)

    @classmethod
    def parse(cls, value, arg_name):
        if value is None or isinstance(value, (tf.Tensor, tf.IndexedSlices, dict, str, bytes)):
            raise TypeError(
                "`{0}` must be {1}. Received: {0}={2!r}".format(arg_name, _FORM_HELP, value)
            )
        try:
            items = list(value)
        except TypeError:
            raise TypeError(
                "`{0}` must be {1}. Received: {0}={2!r}".format(arg_name, _FORM_HELP, value)
            ) from None
        is_pair = [isinstance(item, (tuple, list)) and len(item) == 2 for item in items]
        if items and all(is_pair):
            for i, (g, _) in enumerate(items):
                _check_gradient(g, "{}[{}][0]".format(arg_name, i))
            return cls([_as_gradient(g) for g, _ in items], [v for _, v in items])
        if any(is_pair):
            raise TypeError(
                "`{}` mixes (gradient, variable) pairs with bare gradients; it must be {}.".format(
                    arg_name, _FORM_HELP
                )
            )
        for i, g in enumerate(items):
            _check_gradient(g, "{}[{}]".format(arg_name, i))
        return cls([_as_gradient(g) for g in items])

    def rebuild(self, gradients):
        gradients = list(gradients)
        if self.variables is None:
            return gradients
        return list(zip(gradients, self.variables))

    @property
    def present(self):
        """Indices of the gradients that are not None."""
        return [i for i, g in enumerate(self.gradients) if g is not None]

    def names(self, indices):
        """Display names for the gradients at ``indices``: the variable's name, else 'gradient #i'.

        Names that occur more than once get their list index appended so each is unambiguous.
        """
        if self.variables is None:
            return ["gradient #{}".format(i) for i in indices]
        names = [variable_name(self.variables[i]) for i in indices]
        counts = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        return [
            n if counts[n] == 1 else "{} (#{})".format(n, i) for n, i in zip(names, indices)
        ]
