"""``NonFiniteReport``: where a step's first NaN/Inf was born, and what probably caused it.

Built by ``_explain_eager`` (TF2: tf.function, eager, Keras) and ``_explain_session`` (a graph
run in a ``Session``) from the same pieces: the first op whose output was not finite, its
inputs' statistics, the user's source line, and what the data and variables held.
"""

import os
import sys

import numpy as np

# Ops whose non-finite output, from finite inputs, has one usual cause (TF op type -> text).
_CAUSES = (
    (("Log", "Xlogy", "Xlog1py", "Lgamma", "Digamma"), "log of a value <= 0{min}"),
    (("Log1p",), "log1p of a value <= -1{min}"),
    (("Div", "RealDiv", "FloorDiv", "TruncateDiv", "Xdivy", "DivNoNan", "Reciprocal", "Inv",
      "FloorMod", "Mod"), "division by zero{zeros}"),
    (("Sqrt", "Rsqrt"), "sqrt of a negative value (or rsqrt of 0){min}"),
    (("SqrtGrad", "RsqrtGrad"), "the gradient of sqrt is infinite at 0: sqrt of a value that reached 0 "
     "(add a small epsilon inside the sqrt)"),
    (("Exp", "Expm1", "Pow", "Softplus", "Cosh", "Sinh"), "overflow: exp/pow of a too large value{max}"),
    (("Acos", "Asin", "Atanh", "Acosh"), "input outside the function's domain{range}"),
    (("SoftmaxCrossEntropyWithLogits", "SparseSoftmaxCrossEntropyWithLogits"),
     "softmax cross-entropy on non-finite or huge logits{range}"),
    (("Sub", "AddV2", "Add"), "Inf - Inf (or Inf + -Inf){range}"),
    (("Mul",), "0 * Inf{range}"),
    (("Square", "MatMul", "BatchMatMulV2", "BatchMatMul", "Conv2D", "Sum", "Mean"),
     "float overflow: values too large{max} (exploding activations or weights: lower the learning "
     "rate, clip gradients)"),
)

_VARIABLE_READS = ("ReadVariableOp", "VariableV2", "Variable", "VarHandleOp", "Identity")
# Ops that take the next batch from inside the graph: running them again reads a NEW batch.
INPUT_OP_TYPES = frozenset([
    "IteratorGetNext", "IteratorGetNextSync", "QueueDequeue", "QueueDequeueV2", "QueueDequeueMany",
    "QueueDequeueManyV2", "QueueDequeueUpTo", "QueueDequeueUpToV2", "ReaderRead", "ReaderReadV2",
    "ReaderReadUpTo", "ReaderReadUpToV2",
])
# Ops whose output is the data itself: fed, a constant, read from an iterator, queue or file.
DATA_OPS = INPUT_OP_TYPES | frozenset([
    "Placeholder", "PlaceholderWithDefault", "_Arg", "Const", "DecodeRaw", "DecodeCSV", "ParseExample",
    "ParseExampleV2", "ParseSingleExample",
])


def describe_array(value):
    """Statistics of one array, as a short string: shape, min/max of finite values, NaN/Inf/zeros/negatives."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiuc" or array.size == 0:
        return "shape {} {}".format(list(array.shape), array.dtype)
    floats = array.astype(np.float64) if array.dtype.kind != "c" else np.abs(array)
    finite = np.isfinite(floats)
    parts = ["shape {} {}".format(list(array.shape), array.dtype)]
    if finite.any():
        parts.append("min {:.4g} max {:.4g}".format(floats[finite].min(), floats[finite].max()))
    nan, inf = int(np.isnan(floats).sum()), int(np.isinf(floats).sum())
    if nan:
        parts.append("{} NaN".format(nan))
    if inf:
        parts.append("{} Inf".format(inf))
    zeros, negatives = int((floats == 0).sum()), int((floats < 0).sum())
    if zeros:
        parts.append("{} zeros".format(zeros))
    if negatives:
        parts.append("{} negatives".format(negatives))
    return ", ".join(parts)


def is_finite_array(value):
    array = np.asarray(value)
    return array.dtype.kind not in "fc" or bool(np.all(np.isfinite(array)))


def nonfinite_locations(label, value):
    """Where ``value`` (a batch: rows are examples) holds NaN/Inf, as text; None if nowhere."""
    array = np.asarray(value)
    if array.dtype.kind not in "fc" or array.size == 0 or np.all(np.isfinite(array)):
        return None
    bad = ~np.isfinite(array)
    if array.ndim == 0:
        return "{}: {}".format(label, array)
    rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)).tolist()
    text = "{}: {} NaN/Inf in batch elements {}".format(label, int(bad.sum()), _few(rows))
    if array.ndim >= 2:
        features = np.flatnonzero(bad.reshape(-1, int(np.prod(array.shape[1:]))).any(axis=0)).tolist()
        text += ", features {}".format(_few(features))
    return text


def _few(indices, limit=10):
    shown = ", ".join(str(i) for i in indices[:limit])
    return "[{}{}]".format(shown, ", ..." if len(indices) > limit else "")


def likely_cause(op_type, inputs, backward_of=None):
    """Plain-language likely cause of ``op_type`` producing NaN/Inf from ``inputs`` (arrays)."""
    arrays = [np.asarray(a) for a in inputs if a is not None]
    if op_type in DATA_OPS:
        return "a NaN/Inf already in the input data (fed, read from the dataset, or a constant)"
    if any(not is_finite_array(a) for a in arrays):
        if op_type in ("SoftmaxCrossEntropyWithLogits", "SparseSoftmaxCrossEntropyWithLogits"):
            return "softmax cross-entropy on non-finite logits (they were NaN/Inf already: data or weights)"
        if op_type in _VARIABLE_READS:
            return "weights already non-finite (a previous update blew them up: lower the learning rate, clip)"
        return "an input of the op was already non-finite (data, or weights already non-finite)"
    if op_type in _VARIABLE_READS:
        return "weights already non-finite (a previous update blew them up: lower the learning rate, clip)"
    floats = [a.astype(np.float64) for a in arrays if a.dtype.kind in "fiu" and a.size]
    values = np.concatenate([a.ravel() for a in floats]) if floats else np.zeros([0])
    details = {
        "min": " (input min {:.4g})".format(values.min()) if values.size else "",
        "max": " (input max {:.4g})".format(values.max()) if values.size else "",
        "zeros": " (the divisor has {} zeros)".format(int((floats[-1] == 0).sum())) if floats else "",
        "range": " (inputs in [{:.4g}, {:.4g}])".format(values.min(), values.max()) if values.size else "",
    }
    for types, text in _CAUSES:
        if op_type in types:
            cause = text.format(**details)
            break
    else:
        cause = "the op produced NaN/Inf from finite inputs (invalid value or float overflow)"
    if backward_of is not None and op_type not in ("SqrtGrad", "RsqrtGrad"):
        cause = "in the gradient of {}: {}".format(backward_of, cause)
    return cause


class NonFiniteReport:
    """Where a step's first NaN/Inf was born (returned by ``safegrad.explain`` / ``explain_session``).

    Attributes:
      op_type: TF op type of the first op (in execution order, forward or backward pass) whose
        output held NaN/Inf, e.g. ``"Log"``.
      op_name: its graph name (None for eager ops, which have none).
      source: ``"file.py:123"``, the user's line that created the op (for an op of the backward
        pass: the line of the forward op it differentiates), or None if not found.
      backward_of: for an op of the backward pass, the forward op type it differentiates, else None.
      inputs: list of ``(name, statistics)`` strings of the op's inputs.
      cause: plain-language likely cause.
      nonfinite_data: where the step's input data held NaN/Inf (batch elements, features).
      nonfinite_variables: names of trainable variables holding NaN/Inf before the step.
      nonfinite_gradients: the variables whose gradient was not finite in the replay (safegrad's
        own check; an eager replay may list more than the compiled step, whose fused ops can
        turn a NaN into 0, e.g. a Relu).
    """

    def __init__(self, op_type, op_name=None, source=None, backward_of=None, inputs=(), cause="",
                 nonfinite_data=(), nonfinite_variables=(), nonfinite_gradients=""):
        self.op_type = op_type
        self.op_name = op_name
        self.source = source
        self.backward_of = backward_of
        self.inputs = list(inputs)
        self.cause = cause
        self.nonfinite_data = list(nonfinite_data)
        self.nonfinite_variables = list(nonfinite_variables)
        self.nonfinite_gradients = nonfinite_gradients

    @property
    def first_line(self):
        """One line: the op, where it was created, and the likely cause."""
        where = " ({})".format(self.op_name) if self.op_name else ""
        origin = " in the backward pass" if self.backward_of else ""
        line = " created at {}".format(self.source) if self.source else ""
        return "first NaN/Inf: {}{}{}{}: {}".format(self.op_type, where, origin, line, self.cause)

    def __str__(self):
        lines = ["safegrad: " + self.first_line]
        for name, stats in self.inputs:
            lines.append("  input {}: {}".format(name, stats))
        for text in self.nonfinite_data:
            lines.append("  non-finite input data: {}".format(text))
        if self.nonfinite_variables:
            lines.append("  variables holding NaN/Inf: {}".format(", ".join(self.nonfinite_variables)))
        if self.nonfinite_gradients:
            lines.append("  non-finite gradients: {}".format(self.nonfinite_gradients))
        return "\n".join(lines)

    def __repr__(self):
        return "<NonFiniteReport {}>".format(self.first_line)


def _library_roots():
    roots = [os.path.dirname(os.path.abspath(__file__))]
    libraries = ("tensorflow", "tensorflow_core", "keras", "tf_keras", "numpy", "absl", "tensorflow_estimator",
                 "horovod", "google.protobuf")
    for name in libraries:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            roots.append(os.path.dirname(os.path.abspath(path)))
    roots.append(os.path.dirname(os.__file__))  # the standard library
    return tuple(root + os.sep for root in roots)


def user_frame(frames):
    """The innermost of ``frames`` ((filename, lineno) pairs, outermost first) in user code, as
    ``"file:line"``; None if every frame is in TensorFlow, Keras, safegrad or the standard library."""
    roots = _library_roots()
    demo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")  # user code, shipped
    for filename, lineno in reversed(list(frames)):
        path = os.path.abspath(filename) if filename and not filename.startswith("<") else None
        if path and (not path.startswith(roots) or path == demo):
            return "{}:{}".format(path, lineno)
    return None
