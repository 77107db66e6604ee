"""safegrad's own variables: skip counters and what the last step saw, one set per optimizer."""

import weakref

from safegrad._compat import do_not_convert, track_dependency
from safegrad._tf import outer_context_key, tf
from safegrad._variables import new_state_variable

# owner (optimizer) -> {"eager": StepState or None, "graphs": {graph: StepState}}
_REGISTRY = weakref.WeakKeyDictionary()


class StepState(tf.Module):
    """Variables that ``clip_and_apply`` / ``SafeOptimizer`` update on every step.

    They are ordinary non-trainable variables: ``tf.compat.v1.train.Saver`` saves them in a graph,
    and ``tf.train.Checkpoint(optimizer=...)`` saves them in TF2 (they are tracked by the
    optimizer). A step that raises changes none of them.

    Attributes:
      consecutive_skips: int64, non-finite steps skipped in a row (reset by an applied step).
      total_skips: int64, all skipped steps.
      global_norm: float32, global norm of the raw gradients at the last step (NaN/Inf if it
        was not finite).
      clipped: bool, whether a norm bound was active at the last step.
      skipped: bool, whether the last step was skipped.
      steps: int64, all steps taken (applied and skipped).
      clipped_steps: int64, applied steps on which a norm bound was active.
      global_norm_sum: float64, sum of the global norms of all applied steps (for averages
        over an interval: difference of two readings / difference in applied steps).
    """

    def __init__(self):
        super().__init__(name="safegrad_state")
        with tf.init_scope(), tf.name_scope("safegrad"):
            self.consecutive_skips = new_state_variable(0, tf.int64, "consecutive_skips")
            self.total_skips = new_state_variable(0, tf.int64, "total_skips")
            self.global_norm = new_state_variable(0.0, tf.float32, "global_norm")
            self.clipped = new_state_variable(False, tf.bool, "clipped")
            self.skipped = new_state_variable(False, tf.bool, "skipped")
            self.steps = new_state_variable(0, tf.int64, "steps")
            self.clipped_steps = new_state_variable(0, tf.int64, "clipped_steps")
            self.global_norm_sum = new_state_variable(0.0, tf.float64, "global_norm_sum")

    @property
    def all_variables(self):
        """Every variable, in a fixed order (what savers list)."""
        return [
            self.consecutive_skips, self.total_skips, self.global_norm, self.clipped, self.skipped,
            self.steps, self.clipped_steps, self.global_norm_sum,
        ]

    def record_applied(self, global_norm, clipped, reset_streak):
        """Assignments for an applied step; returns the ops to depend on (none eagerly)."""
        ops = [
            self.global_norm.assign(global_norm, read_value=False),
            self.clipped.assign(clipped, read_value=False),
            self.skipped.assign(False, read_value=False),
            self.steps.assign_add(1, read_value=False),
            self.clipped_steps.assign_add(tf.cast(clipped, tf.int64), read_value=False),
            self.global_norm_sum.assign_add(tf.cast(global_norm, tf.float64), read_value=False),
        ]
        if reset_streak:
            ops.append(self.consecutive_skips.assign(0, read_value=False))
        return [op for op in ops if op is not None]

    def record_skipped(self, global_norm):
        """Assignments for a skipped step; returns the ops to depend on (none eagerly)."""
        ops = [
            self.consecutive_skips.assign_add(1, read_value=False),
            self.total_skips.assign_add(1, read_value=False),
            self.global_norm.assign(global_norm, read_value=False),
            self.clipped.assign(False, read_value=False),
            self.skipped.assign(True, read_value=False),
            self.steps.assign_add(1, read_value=False),
        ]
        return [op for op in ops if op is not None]

    def __repr__(self):
        try:
            values = self.snapshot()
        except (NotImplementedError, AttributeError, ValueError, TypeError):
            # A graph's variables are read with a Session: show where they are.
            names = ", ".join(v.name for v in self.all_variables)
            return "StepState(graph variables: {}; read them with sess.run)".format(names)
        values["clipped"] = bool(self.clipped.numpy())
        values["skipped"] = bool(self.skipped.numpy())
        return "StepState({})".format(", ".join("{}={!r}".format(k, v) for k, v in values.items()))

    def snapshot(self):
        """Current values as a dict of Python numbers (eager only)."""
        return {
            "consecutive_skips": int(self.consecutive_skips.numpy()),
            "total_skips": int(self.total_skips.numpy()),
            "global_norm": float(self.global_norm.numpy()),
            "steps": int(self.steps.numpy()),
            "clipped_steps": int(self.clipped_steps.numpy()),
            "global_norm_sum": float(self.global_norm_sum.numpy()),
        }


@do_not_convert
def step_state(optimizer):
    """The ``StepState`` safegrad keeps for ``optimizer`` in the current graph (or eagerly).

    Created on first use. In a graph there is one per graph, so it is fetched with
    ``sess.run(state.global_norm)`` etc.; eagerly and in ``tf.function`` there is one, read with
    ``state.global_norm.numpy()``. Calling it once before the first call of a ``tf.function``
    that uses ``clip_and_apply`` keeps that function from being traced twice (TF retraces a
    function that creates variables in its first call).

    Args:
      optimizer: the optimizer passed to ``clip_and_apply``, or a ``SafeOptimizer``.

    Returns:
      The ``StepState``.

    Example:
      >>> train_op = safegrad.clip_and_apply(opt, loss, clip_norm=1.0, on_nonfinite="skip")
      >>> state = safegrad.step_state(opt)
      >>> sess.run(train_op); sess.run([state.global_norm, state.skipped, state.total_skips])
    """
    key = outer_context_key()
    entry = _REGISTRY.get(optimizer)
    if entry is None:
        entry = {"eager": None, "graphs": weakref.WeakKeyDictionary()}
        _REGISTRY[optimizer] = entry
    if key is None:
        if entry["eager"] is None:
            entry["eager"] = StepState()
            track_dependency(optimizer, entry["eager"], "safegrad_state")
        return entry["eager"]
    state = entry["graphs"].get(key)
    if state is None:
        with key.as_default():
            state = StepState()
        entry["graphs"][key] = state
    return state
