"""The ``safegrad`` Python logger, and logging from inside a graph without the user fetching.

A skipped step is logged (WARNING) with its step number, raw global norm and the variables whose
gradient was not finite. In a graph or ``tf.function`` the record is written by an op that lives
in the skip branch only, so a healthy step runs no logging op at all.

Example:
  >>> import logging
  >>> logging.getLogger("safegrad").setLevel(logging.ERROR)   # silence skip messages
"""

import logging

from safegrad._compat import py_function_op
from safegrad._tf import executing_eagerly, tf

logger = logging.getLogger("safegrad")

SKIPPED = "safegrad: skipped step {step}: non-finite gradient for: {report}; raw global norm {norm}"
OVERFLOW = (
    "safegrad: skipped step {step}: loss-scale overflow in: {report}; the loss scale was lowered "
    "(routine; raw global norm {norm})"
)


def _as_text(value):
    if hasattr(value, "numpy"):
        value = value.numpy()
    if hasattr(value, "item"):
        value = value.item()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _log_skipped(step, norm, report, overflow):
    overflow = bool(_as_text(overflow))
    (logger.info if overflow else logger.warning)(
        (OVERFLOW if overflow else SKIPPED).format(
            step=int(_as_text(step)), norm=float(_as_text(norm)), report=_as_text(report) or "?"
        )
    )
    return step


def log_skipped_step(step, global_norm, report, overflow=None):
    """Logs a skipped step; returns ops to depend on in a graph (none eagerly).

    Args:
      step: int64 scalar, the step's number: the steps safegrad took with this optimizer before
        it, from 0 (equal to a global_step that counts every step).
      global_norm: float32 scalar, the raw global norm.
      report: string scalar naming the offending variables.
      overflow: optional bool scalar, the skip was a loss scale's routine overflow (logged at
        INFO: the loss-scale optimizer lowers its scale, nothing is wrong).
    """
    overflow = tf.constant(False) if overflow is None else overflow
    if report is None:  # no names are computed under XLA, where no Python op can run either
        return []
    if executing_eagerly():
        _log_skipped(step, global_norm, report, overflow)
        return []
    return [py_function_op(_log_skipped, [step, global_norm, report, overflow], tf.int64,
                           token="safegrad_log_skipped_step")]


def log_report(report, replayed):
    """Logs (WARNING) the ``NonFiniteReport`` of a replayed skipped step, or that the replay of
    ``replayed`` (e.g. "step", "batch") produced no NaN/Inf."""
    logger.warning("%s", report if report is not None else
                   "safegrad: the skipped {} produced no NaN/Inf when replayed (not reproducible)".format(replayed))
