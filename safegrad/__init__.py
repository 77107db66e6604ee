"""safegrad: gradient clipping and NaN/Inf checks that are correct in every corner.

One API for TF1 Session loops and TF2 ``tf.function`` code, from TensorFlow 1.15 to the newest
release:

* ``clip_and_apply(optimizer, loss, ...)``: one safe training step; ``apply_gradients(optimizer,
  grads_and_vars, ...)`` the same for gradients you already have.
* ``SafeOptimizer(optimizer, ...)``: the same semantics behind ``minimize``/``apply_gradients``.
* ``global_norm``, ``clip_by_global_norm``, ``clip_per_variable``, ``assert_finite``: the building
  blocks, usable between ``compute_gradients`` and ``apply_gradients``.
* ``step_state(optimizer)`` / ``StepState``: skip counters and last-step statistics;
  ``find_step_state`` finds them in a graph without the optimizer (after ``import_meta_graph``);
  ``step_outputs(train_op)`` / ``StepOutputs``: this step's norm to fetch with the train op;
  ``add_summaries``: those statistics as TensorBoard scalars (TF1 graphs and TF2).
* ``Saver``: a TF1 Saver that also resumes from checkpoints written before safegrad was added.
* ``StepStatsCallback``: those statistics per epoch in Keras ``fit`` (History, TensorBoard).
* ``explain(step_fn, *args)`` (TF2), ``explain_session(sess, train_op, feed)`` (Session),
  ``ExplainHook`` (MonitoredTrainingSession) and ``ExplainCallback`` (Keras ``fit``): replay a
  failing step and report, as a ``NonFiniteReport``, the first op that produced NaN/Inf, its
  source line and a likely cause.
  Skipped steps are logged on the ``safegrad`` logger.
"""

from safegrad._check import assert_finite
from safegrad._clip import clip_by_global_norm, clip_per_variable
from safegrad._norm import global_norm
from safegrad._optimizer import SafeOptimizer
from safegrad._saver import Saver
from safegrad._state import StepOutputs, StepState, find_step_state, step_outputs, step_state
from safegrad._step import apply_gradients, clip_and_apply
from safegrad._summaries import add_summaries
from safegrad._explain_eager import explain
from safegrad._explain_session import explain_session
from safegrad._report import NonFiniteReport
from safegrad._version import __version__
from safegrad import _callback, _explain_hook, _explain_keras, _keras_compat, _keras_wrappers

__all__ = [
    "ExplainCallback",
    "ExplainHook",
    "NonFiniteReport",
    "SafeOptimizer",
    "Saver",
    "StepOutputs",
    "StepState",
    "StepStatsCallback",
    "__version__",
    "add_summaries",
    "apply_gradients",
    "assert_finite",
    "clip_and_apply",
    "clip_by_global_norm",
    "clip_per_variable",
    "explain",
    "explain_session",
    "find_step_state",
    "global_norm",
    "step_outputs",
    "step_state",
]

# Saved Keras models that use SafeOptimizer load without custom_objects: register the wrappers with
# Keras as soon as Keras is imported (now, if TensorFlow already imported it).
_keras_compat.when_keras_is_imported(_keras_wrappers.register_with_keras)


def __getattr__(name):
    # StepStatsCallback subclasses the installed Keras's Callback: built on first access, so that
    # `import safegrad` itself never imports Keras.
    if name == "StepStatsCallback":
        return _callback.step_stats_callback_class()
    if name == "ExplainHook":
        return _explain_hook.explain_hook_class()
    if name == "ExplainCallback":
        return _explain_keras.explain_callback_class()
    raise AttributeError("module 'safegrad' has no attribute {!r}".format(name))


def __dir__():
    return sorted(set(globals()) | {"ExplainCallback", "ExplainHook", "StepStatsCallback"})
