"""SafeOptimizer: the clip_and_apply semantics behind the optimizer interface code already uses."""

from safegrad import _compat
from safegrad._compat import do_not_convert, tf, tf1
from safegrad._state import step_state
from safegrad._step import StepPolicy, apply_gradients_safely, check_optimizer


class SafeOptimizer(tf1.train.Optimizer):
    """Wraps an optimizer so existing training code becomes safe.

    Given a ``tf.compat.v1.train.Optimizer`` it returns this class; given a ``tf.keras``
    optimizer (Keras 2 ``OptimizerV2``, the Keras 2.11+ optimizers, Keras 3, tf-keras) it returns
    a Keras optimizer of the same API that works in ``model.compile``/``fit``, in custom loops
    (``apply_gradients``, also inside ``tf.function``), saves and loads with the model, and adds
    ``minimize``/``compute_gradients`` under Keras 3 (see the README's Keras section).

    For v1 optimizers:

    ``minimize(loss, global_step=...)``, ``compute_gradients`` and
    ``apply_gradients(grads_and_vars, global_step=...)`` keep working and get exactly the
    semantics of ``safegrad.clip_and_apply``: the finite check on the raw gradients, clipping
    (value -> per-variable norm -> global norm), and ``on_nonfinite`` raise / skip / ignore, with
    ``global_step`` advancing only on applied updates. ``get_slot``, ``variables()`` and every
    other public attribute are the wrapped optimizer's (``.optimizer`` is the wrapped optimizer;
    slot names are ``.optimizer.get_slot_names()``). Works with ``tf.compat.v1.train.Saver``,
    ``MonitoredTrainingSession`` and TF2 ``tf.train.Checkpoint``.

    Args:
      optimizer: the ``tf.compat.v1.train.Optimizer`` to wrap.
      clip_norm: optional bound on the global norm of all gradients.
      per_variable_clip_norm: optional bound on the norm of each gradient.
      clip_value: optional elementwise bound: ``c`` for [-c, c], or a ``(min, max)`` pair.
      on_nonfinite: ``"raise"`` (default), ``"skip"`` or ``"ignore"``; see ``clip_and_apply``.
      max_consecutive_skips: with ``"skip"``, raise on the N+1-th non-finite step in a row.
      name: optional name; default ``"Safe" + optimizer.get_name()``.

    Example:
      >>> opt = safegrad.SafeOptimizer(tf.compat.v1.train.AdamOptimizer(1e-3), clip_norm=1.0,
      ...                              on_nonfinite="skip", max_consecutive_skips=10)
      >>> train_op = opt.minimize(loss, global_step=tf.compat.v1.train.get_or_create_global_step())
    """

    _safegrad_wrapper = True  # clip_and_apply refuses to check and clip a second time

    def __new__(cls, optimizer=None, *args, **kwargs):
        # A Keras optimizer gets a Keras optimizer back (compile() needs one): the wrapper class of
        # its Keras API, built on the optimizer's own base class (see safegrad/_keras.py).
        if cls is SafeOptimizer and _compat.optimizer_family(optimizer) in _compat.KERAS_FAMILIES:
            from safegrad import _keras

            return _keras.wrap(optimizer, *args, **kwargs)
        return super(SafeOptimizer, cls).__new__(cls)

    def __init__(
        self,
        optimizer,
        clip_norm=None,
        per_variable_clip_norm=None,
        clip_value=None,
        on_nonfinite="raise",
        max_consecutive_skips=None,
        name=None,
    ):
        policy = StepPolicy.create(
            clip_norm=clip_norm,
            per_variable_clip_norm=per_variable_clip_norm,
            clip_value=clip_value,
            on_nonfinite=on_nonfinite,
            max_consecutive_skips=max_consecutive_skips,
        )
        if isinstance(optimizer, SafeOptimizer):
            raise TypeError(
                "`optimizer` is already a SafeOptimizer; wrapping it twice would check and clip "
                "twice. Received: optimizer={!r}".format(optimizer)
            )
        check_optimizer(optimizer, allowed=(_compat.V1,))
        if name is not None and not isinstance(name, str):
            raise TypeError("`name` must be a string or None. Received: name={!r}".format(name))
        super(SafeOptimizer, self).__init__(
            use_locking=False, name=name or "Safe" + optimizer.get_name()
        )
        self._optimizer = optimizer
        self._policy = policy
        _compat.track(self, optimizer, "optimizer")

    @property
    def optimizer(self):
        """The wrapped optimizer."""
        return self._optimizer

    @property
    def policy(self):
        """The validated clipping / non-finite policy (a namedtuple)."""
        return self._policy

    @property
    def step_state(self):
        """This wrapper's ``safegrad.StepState`` (counters, last global norm) in the current graph."""
        return step_state(self)

    @do_not_convert
    def compute_gradients(self, loss, var_list=None, **kwargs):
        """The wrapped optimizer's ``compute_gradients`` (raw, unclipped gradients)."""
        return self._optimizer.compute_gradients(loss, var_list=var_list, **kwargs)

    @do_not_convert
    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """Checks, clips and applies ``grads_and_vars`` like ``safegrad.clip_and_apply``.

        Returns:
          In a graph, the train op; eagerly or in ``tf.function``, a bool tensor (applied?).
        """
        with tf.name_scope(name or self.get_name()):
            return apply_gradients_safely(
                self._optimizer,
                _compat.V1,
                grads_and_vars,
                self._policy,
                global_step=global_step,
                name=name,
                state_owner=self,
            )

    def get_slot(self, var, name):
        """The wrapped optimizer's slot ``name`` for ``var`` (e.g. Adam's "m")."""
        return self._optimizer.get_slot(var, name)

    # `get_slot_names` is deliberately NOT forwarded (it returns [] here; use
    # `.optimizer.get_slot_names()`): TF2's object-based checkpointing saves the slots of every
    # trackable that lists slot names, and the wrapped optimizer - tracked as a dependency - already
    # lists them; listing them twice makes `tf.train.Checkpoint.save` fail ("A slot variable was
    # re-used"). TF's own v1 MixedPrecisionLossScaleOptimizer wraps the same way.

    def variables(self):
        """The wrapped optimizer's variables plus safegrad's counters for this graph."""
        return list(self._optimizer.variables()) + self.step_state.all_variables

    def __getattr__(self, name):
        # Only reached when normal lookup fails. Private names are never forwarded: Trackable and
        # Optimizer internals probe their own attributes and must not see the wrapped object's.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def __repr__(self):
        return "SafeOptimizer({!r}, {})".format(self._optimizer, self._policy)
