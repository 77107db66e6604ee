"""Type aliases shared by safegrad's modules (documentation; nothing here is checked at runtime)."""

from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from safegrad._compat import tf

#: A gradient as TensorFlow produces it: a dense tensor, sparse ``IndexedSlices`` (from
#: ``tf.gather``/embedding lookups), or None for a variable the loss does not depend on.
Gradient = Optional[Union[tf.Tensor, tf.IndexedSlices]]

#: ``tf.Variable`` (ref, resource, mirrored, autocast) or a Keras 3 variable.
Variable = Any

#: One entry of what ``compute_gradients`` returns.
GradAndVar = Tuple[Gradient, Variable]

#: What the clipping functions accept: gradients, or (gradient, variable) pairs.
Gradients = Union[Sequence[Gradient], Sequence[GradAndVar], Iterable[GradAndVar]]

#: A Python number or a scalar tensor.
Scalar = Union[int, float, tf.Tensor]

#: ``c`` (meaning [-c, c]) or a ``(min, max)`` pair.
ClipValue = Union[Scalar, Tuple[Scalar, Scalar]]

#: A loss tensor, or a zero-argument callable returning one.
Loss = Any

#: Variables to optimise: a list, or a zero-argument callable returning one.
VarList = Optional[Union[List[Variable], Any]]
