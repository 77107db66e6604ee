"""``safegrad.explain``: replay a TF2 step eagerly and find the first op that produced NaN/Inf.

The step (a ``tf.function``, a plain function, a Keras ``train_step``) runs once more with every
``tf.function`` executed eagerly and an op callback watching each op's outputs; ``tf.cond`` and
``tf.while_loop`` branches then run as ordinary Python, so ops inside them are seen too. Safe
steps inside the replay apply nothing (``_replay``). Nothing of this runs in a normal step.
"""

import collections.abc
import contextlib
import gc
import sys

import numpy as np

from safegrad._compat import op_callback
from safegrad._replay import replaying
from safegrad._report import (
    NonFiniteReport, describe_array, is_finite_array, likely_cause, nonfinite_locations, user_frame,
)
from safegrad._state import STATE_SCOPE
from safegrad._tf import tf


class _Watcher:
    """The op callback: keeps the first op with a non-finite output, and every variable read that
    returned NaN/Inf."""

    def __init__(self):
        self.first = None
        self.forward = {}  # id(output tensor) -> (op type, source); outputs kept alive below
        self.kept = []
        self.bad_variable_handles = []
        self.read_a_batch = False

    def __call__(self, op_type, inputs, attrs, outputs, op_name=None, graph=None):
        if graph is not None or outputs is None:  # a graph being built: nothing runs here
            return None
        if op_type in ("IteratorGetNext", "IteratorGetNextSync", "IteratorGetNextAsOptional"):
            self.read_a_batch = True
        outputs = list(outputs)
        backward_of, forward_outputs = _differentiated_op()
        frames = _frames()
        if backward_of is None:
            source = user_frame(frames)
            for output in outputs:
                self.forward[id(output)] = (op_type, source)
            self.kept.append(outputs)
        bad = [o for o in outputs if _floating(o) and not is_finite_array(o.numpy())]
        if not bad:
            return None
        if op_type == "ReadVariableOp" and inputs:
            self.bad_variable_handles.append(inputs[0])
        if self.first is None:
            if backward_of is not None:
                # The line of the forward op this gradient op differentiates.
                found = [self.forward.get(id(o)) for o in forward_outputs or ()]
                found = [f for f in found if f is not None]
                source = found[0][1] if found else user_frame(frames)
            self.first = {
                "op_type": op_type,
                "source": source,
                "backward_of": backward_of,
                "inputs": [(str(i), _numpy(t)) for i, t in enumerate(inputs or ())],
            }
        return None


def _floating(tensor):
    dtype = getattr(tensor, "dtype", None)
    return dtype is not None and (dtype.is_floating or dtype.is_complex) and hasattr(tensor, "numpy")


def _numpy(tensor):
    try:
        return tensor.numpy()
    except (AttributeError, ValueError, TypeError, tf.errors.OpError):
        return None


def _frames():
    frame, frames = sys._getframe(2), []
    while frame is not None:
        frames.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return frames[::-1]


def _differentiated_op():
    """Inside the backward pass: (forward op type, its outputs) from the frame of TF's eager
    gradient dispatcher (``backprop._gradient_function``, TF 2.x); else (None, None)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "_gradient_function" and "op_name" in frame.f_locals:
            name = frame.f_locals["op_name"]
            return (name.decode() if isinstance(name, bytes) else name), frame.f_locals.get("outputs")
        frame = frame.f_back
    return None, None


def _variable_names(handles):
    """Names of the live trainable variables whose handle is one of ``handles`` (a metric's
    total holding NaN is a consequence, not a cause)."""
    wanted = {id(h) for h in handles}
    names = []
    for obj in gc.get_objects():
        if isinstance(obj, tf.Variable):
            handle = getattr(obj, "_handle", None)
            if (handle is not None and id(handle) in wanted and obj.name not in names and obj.trainable
                    and not obj.name.startswith(STATE_SCOPE)):
                names.append(obj.name)
    return names


@contextlib.contextmanager
def _functions_run_eagerly():
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(previous)


def explain(step, *args, **kwargs):
    """Replays a failing TF2 step and reports the first op that produced NaN/Inf.

    Call it with the step function and the arguments of the step that went non-finite (a skipped
    or raising safegrad step, or any step whose loss became NaN). The step is run once more,
    eagerly, with every op's outputs checked: the report names the first op, forward or backward
    pass (inside ``tf.cond`` / ``tf.while_loop`` branches too), the line of your code that created
    it, its inputs, and a likely cause. Safe steps (``clip_and_apply``, ``SafeOptimizer``) in the
    replay apply nothing and count nothing; other side effects of ``step`` happen again. Costs
    nothing until called (slow while it runs: every op is checked).

    Args:
      step: the step: a ``tf.function``, a plain function, or a Keras ``model.train_step``.
      *args: the arguments of the failing step (e.g. its batch).
      **kwargs: its keyword arguments.

    Returns:
      A ``NonFiniteReport`` (print it), or None if the step produced no NaN/Inf this time.

    Raises:
      TypeError: if ``step`` is not callable, or an argument is an iterator (replaying would
        take the next batch: pass the failing batch itself).
      RuntimeError: if the step read its batch from an iterator inside itself (the replay saw
        the next batch, not the failing one).
      RuntimeError: on TensorFlow 1.x (no op callbacks): use ``safegrad.explain_session``.

    Example:
      >>> applied = train_step(x, y)            # a tf.function using clip_and_apply(..., "skip")
      >>> if not applied:
      ...   print(safegrad.explain(train_step, x, y))
      safegrad: first NaN/Inf: Log created at train.py:12: log of a value <= 0 (input min 0)
    """
    if not callable(step):
        raise TypeError(
            "`step` must be the training step function (a tf.function, a function, or "
            "model.train_step). Received: step={!r}".format(step)
        )
    if not tf.executing_eagerly():
        raise RuntimeError(
            "safegrad.explain replays a step eagerly (TF2, outside tf.function). In a "
            "tf.compat.v1 graph, use safegrad.explain_session(sess, train_op, feed_dict)."
        )
    flat = tf.nest.flatten((args, kwargs))
    iterators = [type(v).__name__ for v in flat if isinstance(v, collections.abc.Iterator)]
    if iterators:
        raise TypeError(
            "safegrad.explain replays the step on the failing step's own batch, but an argument "
            "is an iterator ({}): replaying would take, and use up, the next batch. Pass the "
            "batch the failing step got (e.g. keep `x, y = next(iterator)` and call "
            "explain(step, x, y)).".format(", ".join(iterators))
        )
    data = []
    for index, value in enumerate(flat):
        if isinstance(value, (tf.Tensor, np.ndarray, list, float)) or hasattr(value, "numpy"):
            text = nonfinite_locations("argument #{}".format(index), _numpy(value) if hasattr(value, "numpy")
                                       else np.asarray(value))
            if text:
                data.append(text)
    watcher = _Watcher()
    with replaying() as safe_steps, _functions_run_eagerly(), op_callback(watcher):
        try:
            step(*args, **kwargs)
        except tf.errors.InvalidArgumentError:
            pass  # a raising step (or a user's own check): what ran is enough
    if watcher.read_a_batch:
        raise RuntimeError(
            "The replayed step read its batch from a tf.data iterator inside the step, so it "
            "replayed the NEXT batch (now used up), not the failing one: the report would "
            "describe the wrong data. Take the batch outside the step function and pass it: "
            "x, y = next(iterator); step(x, y); safegrad.explain(step, x, y)."
        )
    first = watcher.first
    if first is None:
        return None
    inputs = [(name, describe_array(value) if value is not None else "?") for name, value in first["inputs"]]
    return NonFiniteReport(
        op_type=first["op_type"],
        source=first["source"],
        backward_of=first["backward_of"],
        inputs=inputs,
        cause=("a NaN/Inf already in the input data (the step's arguments)" if data and first["backward_of"] is None
               and not all(v is None or is_finite_array(v) for _, v in first["inputs"]) else
               likely_cause(first["op_type"], [v for _, v in first["inputs"]], first["backward_of"])),
        nonfinite_data=data,
        nonfinite_variables=_variable_names(watcher.bad_variable_handles),
        nonfinite_gradients=", ".join(s["report"] for s in safe_steps if s["report"]),
    )
