"""``safegrad.Saver``: a TF1 ``Saver`` that also resumes from checkpoints written before safegrad.

Adding safegrad to a TF1 graph renames no variable, but it adds its counters
(``safegrad_state/<optimizer>/...``); a plain ``tf.compat.v1.train.Saver`` then refuses a
checkpoint written before ("Key safegrad_state/Adam/... not found in checkpoint"). This
Saver restores everything such a checkpoint has and starts the missing counters at zero; it
saves everything, counters included, like the plain one. (A checkpoint written WITH safegrad
restores into code without it: a plain Saver ignores the extra counters.)
"""

from safegrad._state import STATE_COLLECTION
from safegrad._tf import tf1


class Saver(tf1.train.Saver):
    """``tf.compat.v1.train.Saver`` that restores checkpoints written before safegrad was added.

    Same arguments and behaviour as ``tf.compat.v1.train.Saver``; only ``restore`` differs: for
    each safegrad state (``safegrad.find_step_state().scope``) the checkpoint lacks, everything
    else is restored and that state's counters start at zero. Create it after the training step
    (like any Saver, it saves the variables that exist then) and use it wherever a Saver goes:
    directly, in ``tf.compat.v1.train.Scaffold(saver=safegrad.Saver())`` for
    ``MonitoredTrainingSession``, as ``tf.compat.v1.train.Supervisor(saver=safegrad.Saver())``, or
    in an Estimator's ``EstimatorSpec(scaffold=...)``.

    Example:
      >>> train_op = safegrad.clip_and_apply(optimizer, loss, clip_norm=5.0, on_nonfinite="skip")
      >>> saver = safegrad.Saver()
      >>> saver.restore(sess, checkpoint_written_before_safegrad)  # counters start at 0
    """

    def __init__(self, var_list=None, *args, **kwargs):
        if var_list is None:  # what tf.compat.v1.train.Saver saves by default, fixed now
            var_list = tf1.global_variables() + tf1.get_collection(tf1.GraphKeys.SAVEABLE_OBJECTS)
        super().__init__(var_list, *args, **kwargs)
        # Everything a fallback restore needs is built now: the graph may be finalized by then
        # (MonitoredTrainingSession). One Saver for all but safegrad's state; per state, a Saver
        # and an initializer.
        pairs = list(var_list.items()) if isinstance(var_list, dict) else [
            (getattr(getattr(v, "op", None), "name", None), v) for v in var_list
        ]
        scopes = {_text(s) for s in tf1.get_collection(STATE_COLLECTION)}
        by_scope = {}
        others = []
        for key, variable in pairs:
            scope = _state_scope(variable, scopes)
            if scope is None:
                others.append((key, variable))
            else:
                by_scope.setdefault(scope, []).append((key, variable))
        self._safegrad_states = {
            scope: (
                [key for key, _ in state],
                tf1.train.Saver(dict(state)),
                tf1.variables_initializer([v for _, v in state]),
            )
            for scope, state in by_scope.items()
        }
        self._safegrad_others = tf1.train.Saver(dict(others), allow_empty=True) if by_scope else None

    def restore(self, sess, save_path):
        if save_path is None or not self._safegrad_states:
            return super().restore(sess, save_path)
        keys = {name for name, _ in tf1.train.list_variables(save_path)}
        if all(set(k) <= keys for k, _, _ in self._safegrad_states.values()):
            return super().restore(sess, save_path)
        self._safegrad_others.restore(sess, save_path)
        for state_keys, saver, initializer in self._safegrad_states.values():
            if set(state_keys) <= keys:
                saver.restore(sess, save_path)
            else:
                sess.run(initializer)  # written before safegrad: the counters start at zero
        return None


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _state_scope(variable, scopes):
    op = getattr(variable, "op", None)
    if op is None:
        return None
    scope = op.name.rsplit("/", 1)[0]
    return scope if scope in scopes else None
