"""SafeOptimizer: the clip_and_apply semantics behind the optimizer interface code already uses."""

import inspect

from safegrad._adapters import adapter_class_for, adapter_for
from safegrad._compat import do_not_convert, track_dependency
from safegrad._keras_wrappers import wrapper_class
from safegrad._policy import StepPolicy
from safegrad._safe_apply import apply_gradients_safely
from safegrad._state import step_state
from safegrad._tf import as_operation, current_name_scope, tf, tf1
from safegrad._validate import name as validate_name
from safegrad._wrapping import WrapperSurface


class SafeOptimizer(WrapperSurface, tf1.train.Optimizer):
    """Wraps an optimizer so that existing training code checks and clips every step.

    Every update gets exactly the semantics of ``safegrad.clip_and_apply``: the finite check on
    the raw gradients (summed across replicas first), clipping (value -> per-variable norm ->
    global norm), and ``on_nonfinite`` raise / skip / ignore; a skipped or failed step changes no
    variable, slot or step counter. The wrapped optimizer is ``inner_optimizer``; the counters are
    ``step_state``.

    * Given a ``tf.compat.v1.train.Optimizer`` (every TF): returns this class.
      ``minimize(loss, global_step=...)``, ``compute_gradients`` and
      ``apply_gradients(grads_and_vars, global_step=...)`` keep working; ``global_step`` advances
      only on applied updates. ``apply_gradients``/``minimize`` return what the v1 optimizer's
      return: the train op (in a graph and in ``tf.function``), None eagerly. ``get_slot``,
      ``variables()`` and every other public attribute are the wrapped optimizer's (slot names:
      ``inner_optimizer.get_slot_names()``). Works with ``tf.compat.v1.train.Saver``, ``MonitoredTrainingSession``
      and ``tf.train.Checkpoint``.
    * Given a ``tf.keras`` optimizer (TF 2.x: Keras 2 ``OptimizerV2``, the Keras 2.11+
      optimizers, Keras 3, tf-keras): returns a Keras optimizer of the same API (what
      ``model.compile`` needs; it is not an instance of this class) that works in ``fit``, in
      custom loops, saves and loads with the model, and adds ``minimize``/``compute_gradients``
      under Keras 3. Its ``apply_gradients`` returns what the wrapped optimizer's API returns:
      ``iterations`` (Keras 3, Keras 2.11+), the update op or None eagerly (OptimizerV2).
      See the README's Keras section.
    * Refused: a second wrapper on an optimizer, wrapping a SafeOptimizer, a Keras optimizer
      with its own ``clipnorm``/``clipvalue``/``global_clipnorm``, and optimizers of other APIs
      (the error lists those supported by the installed TensorFlow; the Keras 2.2 OptimizerV2 of
      TF 1.x is not).

    Args:
      optimizer: the optimizer to wrap.
      clip_norm: optional bound on the global norm of all gradients.
      per_variable_clip_norm: optional bound on the norm of each gradient.
      clip_value: optional elementwise bound: ``c`` for [-c, c], or a ``(min, max)`` pair.
      on_nonfinite: ``"raise"`` (default), ``"skip"`` or ``"ignore"``; see ``clip_and_apply``.
      max_consecutive_skips: with ``"skip"``, raise on the N+1-th non-finite step in a row.
      tf_compatible_norm: TensorFlow's arithmetic for the norms; see ``clip_and_apply``.
      name: optional name; default ``"Safe" + optimizer.get_name()`` (Keras: ``"safe_" + name``).

    Example:
      >>> opt = safegrad.SafeOptimizer(tf.compat.v1.train.AdamOptimizer(1e-3), clip_norm=1.0,
      ...                              on_nonfinite="skip", max_consecutive_skips=10)
      >>> train_op = opt.minimize(loss, global_step=tf.compat.v1.train.get_or_create_global_step())
      >>> model.compile(optimizer=safegrad.SafeOptimizer(tf.keras.optimizers.Adam(), clip_norm=1.0),
      ...               loss="mse")
    """

    def __new__(cls, optimizer=None, *args, **kwargs):
        # A Keras optimizer gets a Keras optimizer back (compile() needs one): the wrapper class of
        # its Keras API, built on the optimizer's own base class (see safegrad/_keras_wrappers.py).
        adapter = adapter_class_for(type(optimizer))
        if cls is SafeOptimizer and adapter is not None and adapter.is_keras:
            return wrapper_class(optimizer)(optimizer, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        optimizer,
        clip_norm=None,
        per_variable_clip_norm=None,
        clip_value=None,
        on_nonfinite="raise",
        max_consecutive_skips=None,
        tf_compatible_norm=False,
        name=None,
    ):
        """Wraps ``optimizer``; see the class docstring for the arguments."""
        policy = StepPolicy.from_arguments(locals())
        adapter = adapter_for(optimizer)
        if adapter.is_keras:  # only subclasses of SafeOptimizer get here with a Keras optimizer
            raise TypeError(
                "`optimizer` must be a tf.compat.v1.train.Optimizer for {}. Received: "
                "optimizer={!r}".format(type(self).__name__, optimizer)
            )
        adapter.check_policy(policy)
        validate_name(name)
        self._safegrad_wrap(adapter, policy)
        super().__init__(use_locking=False, name=name or "Safe" + optimizer.get_name())
        track_dependency(self, optimizer, "optimizer")
        if tf.executing_eagerly():
            # TF2 eager: the counters exist before the first tf.function call, so that call is
            # traced once (a function whose first call creates variables is traced twice).
            step_state(self)

    @do_not_convert
    def compute_gradients(self, loss, var_list=None, **kwargs):
        """The wrapped optimizer's ``compute_gradients`` (raw, unclipped gradients)."""
        # A graph step remembers its loss, for safegrad.explain_session's replay.
        self._safegrad_loss = loss if isinstance(loss, tf.Tensor) and not tf.executing_eagerly() else None
        return self._safegrad_inner.compute_gradients(loss, var_list=var_list, **kwargs)

    @do_not_convert
    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """Checks, clips and applies ``grads_and_vars`` like ``safegrad.clip_and_apply``.

        Returns:
          What ``tf.compat.v1.train.Optimizer.apply_gradients`` returns: the train op in a graph
          and in ``tf.function``, None eagerly. (Whether the update was applied:
          ``safegrad.apply_gradients`` returns it, ``step_state.skipped`` holds it.)
        """
        outer_scope = current_name_scope()
        with tf.name_scope(name or self.get_name()):
            return as_operation(apply_gradients_safely(
                self._safegrad_adapter, grads_and_vars, self._safegrad_policy,
                global_step=global_step, name=name, state_owner=self, name_scope=outer_scope,
                loss=getattr(self, "_safegrad_loss", None),
            ))

    def get_slot(self, var, name):
        """The wrapped optimizer's slot ``name`` for ``var`` (e.g. Adam's "m")."""
        return self._safegrad_inner.get_slot(var, name)

    # `get_slot_names` is deliberately NOT forwarded (it returns [] here; use
    # `inner_optimizer.get_slot_names()`): TF2's object-based checkpointing saves the slots of
    # every trackable that lists slot names, and the wrapped optimizer - tracked as a dependency -
    # already lists them; listing them twice makes `tf.train.Checkpoint.save` fail ("A slot
    # variable was re-used"). TF's own v1 MixedPrecisionLossScaleOptimizer wraps the same way.

    def variables(self):
        """The wrapped optimizer's variables plus safegrad's counters for this graph."""
        return list(self._safegrad_inner.variables()) + self.step_state.all_variables

    def __getattr__(self, name):
        # Only reached when normal lookup fails. Private names are never forwarded: Trackable and
        # Optimizer internals probe their own attributes and must not see the wrapped object's.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._safegrad_inner, name)

    def __repr__(self):
        return "SafeOptimizer({!r}, {})".format(self._safegrad_inner, self._safegrad_policy)


# `help(SafeOptimizer)` and IDEs show the real signature, not `__new__`'s pass-through one.
SafeOptimizer.__signature__ = inspect.signature(SafeOptimizer.__init__).replace(
    parameters=list(inspect.signature(SafeOptimizer.__init__).parameters.values())[1:]
)
