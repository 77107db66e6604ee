"""Replay mode: while ``safegrad.explain`` replays a failing step, safe steps apply nothing.

A safe step run during a replay computes everything up to its apply/skip decision (forward pass,
backward pass, norm, the names of the non-finite gradients) and stops there: no update, no
counter moves, no log record. What it saw is kept for the report.
"""

import contextlib
import threading

from safegrad._tf import tf

_LOCAL = threading.local()


def is_replaying():
    """True while ``replaying()`` is active in this thread."""
    return getattr(_LOCAL, "steps", None) is not None


@contextlib.contextmanager
def replaying():
    """Marks a replay; yields the list the replayed safe steps are appended to (dicts with
    ``all_finite``, ``global_norm`` and ``report``, Python values)."""
    previous = getattr(_LOCAL, "steps", None)
    _LOCAL.steps = []
    try:
        yield _LOCAL.steps
    finally:
        _LOCAL.steps = previous


def note_replayed_step(all_finite, global_norm, report):
    """Records what a replayed safe step saw; returns what an eager step returns (False)."""
    if tf.executing_eagerly():
        _LOCAL.steps.append({
            "all_finite": bool(all_finite),
            "global_norm": float(global_norm),
            "report": report.numpy().decode("utf-8") if report is not None else "",
        })
    return tf.constant(False)
