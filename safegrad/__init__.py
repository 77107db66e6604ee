"""safegrad: gradient clipping and NaN/Inf checks that are correct in every corner.

One API for TF1 Session loops and TF2 ``tf.function`` code, from TensorFlow 1.15 to the newest
release:

* ``clip_and_apply(optimizer, loss, ...)``: one safe training step.
* ``SafeOptimizer(optimizer, ...)``: the same semantics behind ``minimize``/``apply_gradients``.
* ``global_norm``, ``clip_by_global_norm``, ``clip_per_variable``, ``assert_finite``: the building
  blocks, usable between ``compute_gradients`` and ``apply_gradients``.
* ``step_state(optimizer)`` / ``StepState``: skip counters and last-step statistics.
"""

from safegrad._check import assert_finite
from safegrad._clip import clip_by_global_norm, clip_per_variable
from safegrad._norm import global_norm
from safegrad._optimizer import SafeOptimizer
from safegrad._state import StepState, step_state
from safegrad._step import clip_and_apply
from safegrad._version import __version__

__all__ = [
    "SafeOptimizer",
    "StepState",
    "__version__",
    "assert_finite",
    "clip_and_apply",
    "clip_by_global_norm",
    "clip_per_variable",
    "global_norm",
    "step_state",
]
