"""The two forms clipping functions accept: gradients, or (gradient, variable) pairs."""

from safegrad._compat import tf, variable_name

_FORM_HELP = (
    "a list of gradients (Tensor, IndexedSlices or None) or a list of (gradient, variable) pairs "
    "as returned by compute_gradients"
)


def _convert_gradient(gradient, where):
    if gradient is None or isinstance(gradient, tf.IndexedSlices):
        pass
    elif not isinstance(gradient, tf.Tensor):
        try:
            gradient = tf.convert_to_tensor(gradient)
        except (TypeError, ValueError):
            raise TypeError(
                "`{}` must be a Tensor, IndexedSlices or None. Received: {!r} (of type {})".format(
                    where, gradient, type(gradient).__name__
                )
            )
    if gradient is not None and not (gradient.dtype.is_floating or gradient.dtype.is_complex):
        raise TypeError(
            "`{}` must have a floating-point dtype. Received: dtype {}".format(
                where, gradient.dtype.name
            )
        )
    return gradient


class GradientList(object):
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
            )
        is_pair = [isinstance(item, (tuple, list)) and len(item) == 2 for item in items]
        if items and all(is_pair):
            gradients = [
                _convert_gradient(g, "{}[{}][0]".format(arg_name, i)) for i, (g, _) in enumerate(items)
            ]
            return cls(gradients, [v for _, v in items])
        if any(is_pair):
            raise TypeError(
                "`{0}` mixes (gradient, variable) pairs with bare gradients; it must be {1}.".format(
                    arg_name, _FORM_HELP
                )
            )
        return cls([_convert_gradient(g, "{}[{}]".format(arg_name, i)) for i, g in enumerate(items)])

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
        """Display names for the gradients at ``indices``: the variable's name, else 'grads[i]'.

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
