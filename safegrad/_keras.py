"""SafeOptimizer for Keras optimizers, and the callback that shows its statistics in ``fit``.

``safegrad.SafeOptimizer(keras_optimizer, ...)`` returns a Keras optimizer that wraps the given one
the way Keras's own ``LossScaleOptimizer`` does: every step goes through
``safegrad._step.apply_gradients_safely`` (check the raw - aggregated - gradients, clip, then apply
or skip in one ``tf.cond``), and everything else - variables, slots, learning rate, iterations,
checkpoints - is the wrapped optimizer's.

Keras has three optimizer APIs, and a wrapper must BE an optimizer of the API it wraps (``compile``
checks ``isinstance``), so there is one small class per API, each built on the base class found in
the wrapped optimizer's MRO:

* Keras 3 (TF >= 2.16): subclasses ``keras.optimizers.Optimizer``, tracks the wrapped optimizer as
  a child and lists its variables (``.keras`` files save them), like Keras 3's LossScaleOptimizer.
* Keras 2.11+ ``Optimizer`` (TF 2.11-2.15, tf-keras) and Keras 2 ``OptimizerV2`` (TF 2.0-2.10 and
  the ``legacy`` optimizers): delegate checkpoint tracking to the wrapped optimizer, so a wrapped
  and an unwrapped optimizer have the same checkpoint format (Keras 2's LossScaleOptimizer does
  the same); safegrad's counters are an extra dependency.

What differs between TF/Keras versions below those APIs (where the delegating mixin lives, how
(de)serialisation and aggregation are spelled, how Keras is detected) is in ``_compat``.
"""

import math

from safegrad import _compat, _validate
from safegrad._compat import KERAS_2_11, KERAS_3, KERAS_V2, tf
from safegrad._state import step_state
from safegrad._step import StepPolicy, _check_loss, apply_gradients_safely

_REGISTERED_NAMES = {KERAS_3: "SafeOptimizer", KERAS_2_11: "SafeOptimizer", KERAS_V2: "SafeOptimizerV2"}
_CLASSES = {}


def _static_number(value, name):
    """A config-friendly copy of a clipping argument: Python numbers stay, static tensors become
    floats; a tensor known only at run time cannot be saved in a config."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, (tuple, list)):
        return [_static_number(v, name) for v in value]
    static = tf.get_static_value(value) if isinstance(value, tf.Tensor) else None
    if static is None:
        return _Unserializable(name)
    return float(static)


class _Unserializable(object):
    def __init__(self, name):
        self.name = name


class _SafeKerasMixin(object):
    """What all Keras wrappers share: the policy, the step, the migration helpers, the config."""

    _safegrad_wrapper = True  # clip_and_apply / SafeOptimizer refuse to wrap twice

    @staticmethod
    def _safegrad_validate(inner, clip_norm, per_variable_clip_norm, clip_value, on_nonfinite,
                           max_consecutive_skips):
        """Checks the arguments and the wrapped optimizer; returns (policy, arguments)."""
        arguments = {
            "clip_norm": clip_norm,
            "per_variable_clip_norm": per_variable_clip_norm,
            "clip_value": clip_value,
            "on_nonfinite": on_nonfinite,
            "max_consecutive_skips": max_consecutive_skips,
        }
        policy = StepPolicy.create(**arguments)
        _check_inner(inner)
        return policy, arguments

    def _safegrad_setup(self, inner, family, policy, arguments):
        self._safegrad_inner = inner
        self._safegrad_family = family
        self._safegrad_policy = policy
        self._safegrad_arguments = _saved(arguments)
        inner._safegrad_wrapped_by = True
        step_state(self)  # create the counters now, outside any tf.function, so they restore

    @property
    def inner_optimizer(self):
        """The wrapped Keras optimizer (Keras's LossScaleOptimizer spells it the same)."""
        return self._safegrad_inner

    @property
    def optimizer(self):
        """The wrapped Keras optimizer (as ``safegrad.SafeOptimizer.optimizer`` for v1)."""
        return self._safegrad_inner

    @property
    def policy(self):
        """The validated clipping / non-finite policy (a namedtuple)."""
        return self._safegrad_policy

    @property
    def step_state(self):
        """This wrapper's ``safegrad.StepState`` (counters, last and summed global norms)."""
        return step_state(self)

    # The wrapped optimizer's learning rate and step counter, as Keras's LossScaleOptimizer.
    @property
    def learning_rate(self):
        return self._safegrad_inner.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._safegrad_inner.learning_rate = value

    @property
    def iterations(self):
        return self._safegrad_inner.iterations

    @iterations.setter
    def iterations(self, variable):
        self._safegrad_inner.iterations = variable

    def finalize_variable_values(self, var_list):
        self._safegrad_inner.finalize_variable_values(var_list)

    def compute_gradients(self, loss, var_list=None, tape=None):
        """Raw (gradient, variable) pairs of ``loss``: TF1-style code on any Keras optimizer.

        Args:
          loss: a zero-argument callable returning the loss, or a loss tensor recorded by ``tape``.
          var_list: variables (list or zero-argument callable); default: those the tape watched.
          tape: the ``tf.GradientTape`` that recorded a loss tensor.

        Returns:
          A list of (gradient, variable) pairs, unclipped and unchecked.
        """
        _check_loss(loss, tape)
        return _compat.compute_gradients(
            self._safegrad_inner, self._safegrad_family, loss, _validate.var_list(var_list), tape
        )

    def minimize(self, loss, var_list=None, tape=None):
        """``compute_gradients`` then the safe ``apply_gradients``, as Keras 2 and TF1 spell it.

        Returns:
          A bool tensor (eagerly / in tf.function): True when the update was applied.
        """
        return self.apply_gradients(self.compute_gradients(loss, var_list, tape))

    def _safegrad_set_weights(self, values, inner_count, set_inner):
        """Sets the wrapped optimizer's weights, then safegrad's counters when ``values`` has
        them (a file saved from an unwrapped optimizer has only the first part)."""
        values = list(values)
        state = self.step_state.all_variables
        if len(values) not in (inner_count, inner_count + len(state)):
            raise ValueError(
                "Optimizer weights do not match: expected {} (the wrapped optimizer's) or {} (with "
                "safegrad's counters) values. Received: {} values".format(
                    inner_count, inner_count + len(state), len(values)
                )
            )
        set_inner(values[:inner_count])
        for variable, value in zip(state, values[inner_count:]):
            variable.assign(value)

    def _safegrad_apply(self, grads_and_vars, name=None, aggregate=False):
        """Aggregates across replicas if asked (a no-op without a strategy), then checks, clips and
        applies through the wrapped optimizer, which must not aggregate a second time."""
        grads_and_vars = list(grads_and_vars)
        family = self._safegrad_family
        if aggregate and family != KERAS_3:
            present = [(g, v) for g, v in grads_and_vars if g is not None]
            absent = [(g, v) for g, v in grads_and_vars if g is None]
            if present:
                present = list(_compat.keras_aggregate(self._safegrad_inner, family, present))
            grads_and_vars = present + absent
        return apply_gradients_safely(
            self._safegrad_inner,
            family,
            grads_and_vars,
            self._safegrad_policy,
            name=name,
            state_owner=self,
            aggregated=family != KERAS_3,
        )

    def get_config(self):
        config = {"inner_optimizer": _compat.serialize_keras_optimizer(self._safegrad_inner)}
        for key, value in self._safegrad_arguments.items():
            if isinstance(value, _Unserializable) or (
                isinstance(value, list) and any(isinstance(v, _Unserializable) for v in value)
            ):
                raise ValueError(
                    "A SafeOptimizer whose `{}` is a tensor known only at run time cannot be "
                    "saved in a Keras config; pass a number.".format(key)
                )
            config[key] = value
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = config.pop("inner_optimizer")
        if isinstance(inner, dict):
            inner = _compat.deserialize_keras_optimizer(
                inner, custom_objects=custom_objects, legacy=cls._safegrad_family_of_class == KERAS_V2
            )
        return cls(inner, **config)


def _check_inner(inner):
    if getattr(type(inner), "_safegrad_wrapper", False):
        raise TypeError(
            "`optimizer` is already a safegrad.SafeOptimizer; wrapping it twice would check and "
            "clip twice. Received: optimizer={!r}".format(inner)
        )
    if getattr(inner, "_safegrad_wrapped_by", False):
        raise ValueError(
            "`optimizer` is already wrapped by another safegrad.SafeOptimizer (both would own its "
            "checkpoint). Wrap a fresh optimizer. Received: optimizer={!r}".format(inner)
        )
    clipping = _compat.keras_inner_clipping(inner)
    if clipping:
        received = ", ".join("{}={!r}".format(k, v) for k, v in sorted(clipping.items()))
        raise ValueError(
            "`optimizer` clips gradients by itself ({0}). With safegrad, clipping happens in one "
            "place, after the finite check and after cross-replica aggregation: create the "
            "optimizer without it and pass clip_norm= / per_variable_clip_norm= / clip_value= to "
            "SafeOptimizer. Received: optimizer={1} with {0}".format(received, type(inner).__name__)
        )


def wrap(optimizer, clip_norm=None, per_variable_clip_norm=None, clip_value=None,
         on_nonfinite="raise", max_consecutive_skips=None, name=None):
    """``safegrad.SafeOptimizer(keras_optimizer, ...)``: the Keras wrapper of the right API."""
    # Validate before building/registering the wrapper class, so bad input fails first.
    _SafeKerasMixin._safegrad_validate(
        optimizer, clip_norm, per_variable_clip_norm, clip_value, on_nonfinite, max_consecutive_skips
    )
    cls = wrapper_class(_compat.keras_optimizer_base(optimizer))
    return cls(
        optimizer,
        clip_norm=clip_norm,
        per_variable_clip_norm=per_variable_clip_norm,
        clip_value=clip_value,
        on_nonfinite=on_nonfinite,
        max_consecutive_skips=max_consecutive_skips,
        name=name,
    )


def wrapper_class(base):
    """The (registered) wrapper class for Keras optimizer base class ``base``; built once."""
    if base not in _CLASSES:
        family = _compat.optimizer_family_of_class(base)
        builder = {KERAS_3: _keras3_class, KERAS_2_11: _keras2_optimizer_class, KERAS_V2: _optimizer_v2_class}
        cls = builder[family](base)
        cls._safegrad_family_of_class = family
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        register = _compat.keras().utils.register_keras_serializable
        _CLASSES[base] = register(package="safegrad", name=_REGISTERED_NAMES[family])(cls)
    return _CLASSES[base]


def register_with_keras():
    """Registers the wrappers of the installed Keras, so a saved model loads without
    ``custom_objects``; run by ``import safegrad`` (or right after Keras is imported)."""
    optimizers = _compat.keras().optimizers
    bases = [optimizers.Optimizer]
    if _compat.keras_major_version() == 2 and _compat.TF_VERSION >= (2, 11):
        bases.append(optimizers.legacy.Optimizer)  # Keras 2.11-2.15 / tf-keras: OptimizerV2
    for base in bases:
        wrapper_class(base)


_INIT_DOC = """Args:
          inner_optimizer: the Keras optimizer to wrap (without clipnorm/clipvalue/global_clipnorm).
          clip_norm, per_variable_clip_norm, clip_value, on_nonfinite, max_consecutive_skips: as in
            ``safegrad.clip_and_apply``.
          name: optional name."""


def _keras3_class(base):
    class SafeOptimizer(_SafeKerasMixin, base):
        """A Keras 3 optimizer that checks, clips and applies like ``safegrad.clip_and_apply``."""

        def __init__(self, inner_optimizer, clip_norm=None, per_variable_clip_norm=None,
                     clip_value=None, on_nonfinite="raise", max_consecutive_skips=None, name=None):
            policy, arguments = self._safegrad_validate(
                inner_optimizer, clip_norm, per_variable_clip_norm, clip_value, on_nonfinite,
                max_consecutive_skips,
            )
            super(SafeOptimizer, self).__init__(
                learning_rate=0.0, name=name or "safe_" + inner_optimizer.name
            )
            self._safegrad_setup(inner_optimizer, KERAS_3, policy, arguments)

        def build(self, var_list):
            if not self._safegrad_inner.built:
                self._safegrad_inner.build(var_list)
            super(SafeOptimizer, self).build(var_list)

        @property
        def variables(self):
            # What `.keras` files save and restore, in this order: the wrapped optimizer's
            # variables, then safegrad's counters. (The wrapper's own unused iteration and
            # learning-rate variables are not listed.)
            if "_safegrad_inner" not in self.__dict__:  # during the base class's __init__
                return list(self._variables)
            return list(self._safegrad_inner.variables) + self.step_state.all_variables

        def apply(self, grads, trainable_variables=None):
            if trainable_variables is None:
                trainable_variables = self._trainable_variables
            else:
                trainable_variables = list(trainable_variables)
                if not self.built:
                    self.build(trainable_variables)
                    self.built = True
            self._safegrad_apply(zip(grads, trainable_variables))

        def apply_gradients(self, grads_and_vars):
            grads_and_vars = list(grads_and_vars)
            self.apply([g for g, _ in grads_and_vars], [v for _, v in grads_and_vars])
            return self.iterations

        def stateless_apply(self, optimizer_variables, grads, trainable_variables):
            raise NotImplementedError("safegrad's SafeOptimizer runs on the TensorFlow backend only.")

        def scale_loss(self, loss):
            return self._safegrad_inner.scale_loss(loss)

    SafeOptimizer.__init__.__doc__ = _INIT_DOC
    return SafeOptimizer


def _keras2_optimizer_class(base):
    delegating = _compat.delegating_trackable_mixin()

    class SafeOptimizer(delegating, _SafeKerasMixin, base):
        """A Keras 2.11+ optimizer that checks, clips and applies like ``clip_and_apply``."""

        @_compat.no_automatic_dependency_tracking
        def __init__(self, inner_optimizer, clip_norm=None, per_variable_clip_norm=None,
                     clip_value=None, on_nonfinite="raise", max_consecutive_skips=None, name=None):
            # The base __init__ is not called: every piece of state is the wrapped optimizer's.
            policy, arguments = self._safegrad_validate(
                inner_optimizer, clip_norm, per_variable_clip_norm, clip_value, on_nonfinite,
                max_consecutive_skips,
            )
            delegating.__init__(self, inner_optimizer)
            self.name = name or "safe_" + inner_optimizer.name
            self._safegrad_setup(inner_optimizer, KERAS_2_11, policy, arguments)

        def build(self, var_list):
            return self._safegrad_inner.build(var_list)

        @property
        def variables(self):
            # What `.keras` and `.h5` files save: the wrapped optimizer's variables, then safegrad's
            # counters (tf.train.Checkpoint reaches the counters through the wrapped optimizer).
            return list(self._safegrad_inner.variables) + self.step_state.all_variables

        def get_weights(self):
            return [v.numpy() for v in self.variables]

        def set_weights(self, weights):
            inner = self._safegrad_inner
            count = len(inner.variables)

            def set_inner(values):
                for variable, value in zip(inner.variables, values):
                    variable.assign(value)

            self._safegrad_set_weights(weights, count, set_inner)

        def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False, **kwargs):
            grads_and_vars = list(grads_and_vars)
            with tf.init_scope():
                self.build([v for _, v in grads_and_vars])
            aggregate = not skip_gradients_aggregation and kwargs.pop("experimental_aggregate_gradients", True)
            return self._safegrad_apply(grads_and_vars, name=name, aggregate=aggregate)

        @property
        def use_ema(self):
            return self._safegrad_inner.use_ema

        @property
        def ema_momentum(self):
            return self._safegrad_inner.ema_momentum

    SafeOptimizer.__init__.__doc__ = _INIT_DOC
    return SafeOptimizer


def _optimizer_v2_class(base):
    delegating = _compat.delegating_trackable_mixin()

    class SafeOptimizerV2(delegating, _SafeKerasMixin, base):
        """A Keras ``OptimizerV2`` that checks, clips and applies like ``clip_and_apply``."""

        _HAS_AGGREGATE_GRAD = True

        def __init__(self, inner_optimizer, clip_norm=None, per_variable_clip_norm=None,
                     clip_value=None, on_nonfinite="raise", max_consecutive_skips=None, name=None):
            # The base __init__ is not called: every piece of state is the wrapped optimizer's.
            policy, arguments = self._safegrad_validate(
                inner_optimizer, clip_norm, per_variable_clip_norm, clip_value, on_nonfinite,
                max_consecutive_skips,
            )
            delegating.__init__(self, inner_optimizer)
            self._name = name or "Safe" + inner_optimizer._name
            self._safegrad_setup(inner_optimizer, KERAS_V2, policy, arguments)

        def _compute_gradients(self, loss, var_list, grad_loss=None, tape=None):
            return self._safegrad_inner._compute_gradients(loss, var_list, grad_loss, tape=tape)

        def minimize(self, loss, var_list, grad_loss=None, name=None, tape=None):
            grads_and_vars = self._compute_gradients(loss, var_list=var_list, grad_loss=grad_loss, tape=tape)
            return self.apply_gradients(grads_and_vars, name=name)

        def get_gradients(self, loss, params):
            return self._safegrad_inner.get_gradients(loss, params)

        def _create_all_weights(self, var_list):
            self._safegrad_inner._create_all_weights(var_list)

        def apply_gradients(self, grads_and_vars, name=None, experimental_aggregate_gradients=True):
            return self._safegrad_apply(grads_and_vars, name=name, aggregate=experimental_aggregate_gradients)

        def _aggregate_gradients(self, grads_and_vars):
            return self._safegrad_inner._aggregate_gradients(grads_and_vars)

        def get_slot_names(self):
            return self._safegrad_inner.get_slot_names()

        def get_slot(self, var, slot_name):
            return self._safegrad_inner.get_slot(var, slot_name)

        def add_slot(self, var, slot_name, initializer="zeros"):
            return self._safegrad_inner.add_slot(var, slot_name, initializer)

        def _restore_slot_variable(self, slot_name, variable, slot_variable):
            return self._safegrad_inner._restore_slot_variable(slot_name, variable, slot_variable)

        def _create_or_restore_slot_variable(self, slot_variable_position, slot_name, variable):
            return self._safegrad_inner._create_or_restore_slot_variable(
                slot_variable_position, slot_name, variable
            )

        def variables(self):
            return self._safegrad_inner.variables() + self.step_state.all_variables

        @property
        def weights(self):
            # What `.h5` files save: the wrapped optimizer's weights, then safegrad's counters.
            return self._safegrad_inner.weights + self.step_state.all_variables

        def get_weights(self):
            return self._safegrad_inner.get_weights() + [v.numpy() for v in self.step_state.all_variables]

        def set_weights(self, weights):
            inner = self._safegrad_inner
            self._safegrad_set_weights(weights, len(inner.weights), inner.set_weights)

        # The wrapped optimizer was checked to clip nothing; its clipping must stay off.
        @property
        def clipnorm(self):
            return None

        @property
        def clipvalue(self):
            return None

        @property
        def global_clipnorm(self):
            return None

        @property
        def lr(self):
            return self._safegrad_inner.learning_rate

        @lr.setter
        def lr(self, value):
            self._safegrad_inner.learning_rate = value

        def __getattribute__(self, name):
            # Hyperparameters (beta_1, momentum, ...) are the wrapped optimizer's, as in Keras's
            # LossScaleOptimizer.
            try:
                return object.__getattribute__(self, name)
            except AttributeError as error:
                if name in ("_safegrad_inner", "_hyper"):
                    raise error
                inner = object.__getattribute__(self, "_safegrad_inner")
                if name in getattr(inner, "_hyper", {}):
                    return inner._get_hyper(name)
                raise error

        def __setattr__(self, name, value):
            inner = self.__dict__.get("_safegrad_inner")
            if inner is not None and name in getattr(inner, "_hyper", {}) and not hasattr(type(self), name):
                inner._set_hyper(name, value)
            else:
                object.__setattr__(self, name, value)

    SafeOptimizerV2.__init__.__doc__ = _INIT_DOC
    return SafeOptimizerV2


def _saved(arguments):
    """The arguments as stored for ``get_config``."""
    saved = dict(arguments)
    for key in ("clip_norm", "per_variable_clip_norm", "clip_value"):
        saved[key] = _static_number(saved[key], key)
    return saved


# The callback ----------------------------------------------------------------------------------

_CALLBACK = []


def step_stats_callback_class():
    """``safegrad.StepStatsCallback``, built on the installed Keras's Callback on first use."""
    if not _CALLBACK:
        _CALLBACK.append(_make_callback_class(_compat.keras().callbacks.Callback))
    return _CALLBACK[0]


def _make_callback_class(base):
    class StepStatsCallback(base):
        """Adds safegrad's per-epoch statistics to ``fit``'s logs (History, TensorBoard).

        At the end of each epoch it adds to the logs, so ``History`` records them and a
        ``TensorBoard`` callback listed AFTER this one writes them (list it first):

        * ``safegrad_global_norm``: mean raw global norm of the epoch's applied steps;
        * ``safegrad_clipped_fraction``: fraction of the epoch's steps on which a norm bound was
          active;
        * ``safegrad_skipped_steps``: non-finite steps skipped in the epoch;
        * ``safegrad_total_skips``, ``safegrad_consecutive_skips``: the counters at epoch end.

        Args:
          optimizer: the safegrad-wrapped optimizer (or an optimizer driven by
            ``clip_and_apply``); default: ``model.optimizer``.

        Example:
          >>> model.compile(optimizer=safegrad.SafeOptimizer(tf.keras.optimizers.Adam(), clip_norm=1.0,
          ...                                                on_nonfinite="skip"), loss="mse")
          >>> history = model.fit(x, y, callbacks=[safegrad.StepStatsCallback(),
          ...                                      tf.keras.callbacks.TensorBoard("logs")])
          >>> history.history["safegrad_skipped_steps"]
        """

        def __init__(self, optimizer=None):
            super(StepStatsCallback, self).__init__()
            self._stats_optimizer = optimizer
            self._start = None
            # Keras 2 hands callbacks that do not "support TF logs" a converted COPY of the logs
            # (made at the first such callback); TensorBoard gets the original. Taking the original
            # and adding plain Python numbers to it reaches both History and TensorBoard.
            self._supports_tf_logs = True

        def _state(self):
            optimizer = self._stats_optimizer
            if optimizer is None:
                optimizer = getattr(self.model, "optimizer", None)
                if not getattr(type(optimizer), "_safegrad_wrapper", False):
                    raise ValueError(
                        "StepStatsCallback reports a safegrad.SafeOptimizer's statistics, but the "
                        "model's optimizer is {!r}. Compile with "
                        "optimizer=safegrad.SafeOptimizer(...), or pass optimizer= to the "
                        "callback.".format(optimizer)
                    )
            return step_state(optimizer)

        def on_train_begin(self, logs=None):
            self._start = self._state().snapshot()

        def on_epoch_begin(self, epoch, logs=None):
            self._start = self._state().snapshot()

        def on_epoch_end(self, epoch, logs=None):
            now = self._state().snapshot()
            start = self._start or {k: 0 for k in now}
            steps = now["steps"] - start["steps"]
            skipped = now["total_skips"] - start["total_skips"]
            applied = steps - skipped
            stats = {
                "safegrad_global_norm": (
                    (now["global_norm_sum"] - start["global_norm_sum"]) / applied if applied else math.nan
                ),
                "safegrad_clipped_fraction": (
                    (now["clipped_steps"] - start["clipped_steps"]) / steps if steps else 0.0
                ),
                "safegrad_skipped_steps": skipped,
                "safegrad_total_skips": now["total_skips"],
                "safegrad_consecutive_skips": now["consecutive_skips"],
            }
            if logs is not None:
                logs.update(stats)

    StepStatsCallback.__module__ = "safegrad"
    return StepStatsCallback
