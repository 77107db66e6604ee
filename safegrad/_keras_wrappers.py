"""SafeOptimizer for Keras optimizers: one wrapper core, one small class per Keras optimizer API.

``safegrad.SafeOptimizer(keras_optimizer, ...)`` returns a Keras optimizer that wraps the given one
the way Keras's own ``LossScaleOptimizer`` does: every step goes through
``_step.apply_gradients_safely`` (check the raw - aggregated - gradients, clip, then apply or
skip in one ``tf.cond``), and everything else - variables, slots, learning rate, iterations,
checkpoints - is the wrapped optimizer's.

A wrapper must BE an optimizer of the API it wraps (``compile`` checks ``isinstance``), so each
class is built on the base class found in the wrapped optimizer's MRO. What they share is
declared once, in ``_keras_wrapper_core.KerasWrapperCore``; the per-API classes here add only
what their base class needs:

* Keras 3 (TF >= 2.16): subclasses ``keras.optimizers.Optimizer``, tracks the wrapped optimizer
  as a child and lists its variables (``.keras`` files save them), like Keras 3's
  LossScaleOptimizer.
* Keras 2.11+ ``Optimizer`` (TF 2.11-2.15, tf-keras) and Keras 2 ``OptimizerV2`` (TF 2.2-2.10 and
  the ``legacy`` optimizers): delegate checkpoint tracking to the wrapped optimizer, so a wrapped
  and an unwrapped optimizer have the same checkpoint format (Keras 2's LossScaleOptimizer does
  the same); safegrad's counters are an extra dependency.
"""

from safegrad import _keras_compat
from safegrad._adapters import (
    Keras2OptimizerAdapter,
    Keras3OptimizerAdapter,
    KerasOptimizerV2Adapter,
    adapter_class_for,
)
from safegrad._keras_wrapper_core import (
    INSIDE_A_LOSS_SCALE_OPTIMIZER,
    KerasWrapperCore,
    bases_of_wrapper,
    hyper_owner,
    inner_name,
    inner_property,
)
from safegrad._loss_scale import LossScaleAdapter
from safegrad._tf import as_operation, tf

_CLASSES = {}

def wrapper_class(optimizer):
    """The (registered) wrapper class for Keras ``optimizer``: built on its LossScaleOptimizer
    class if it is one (so that the wrapper is a LossScaleOptimizer too), else on its API's base."""
    return class_for_base(_loss_scale_class(type(optimizer)) or _keras_compat.optimizer_base(type(optimizer)))


def _loss_scale_class(optimizer_class):
    """The LossScaleOptimizer class in ``optimizer_class``'s MRO (the one defining its API)."""
    for cls in reversed(optimizer_class.__mro__):
        adapter = adapter_class_for(cls) if callable(getattr(cls, "apply_gradients", None)) else None
        if adapter is not None and issubclass(adapter, LossScaleAdapter):
            return cls
    return None


def class_for_base(base):
    """The wrapper class for Keras optimizer class ``base`` (an API base class, or a
    LossScaleOptimizer class); built and registered once."""
    if base not in _CLASSES:
        loss_scale = _loss_scale_class(base) is not None
        build, registered_name = _BUILDERS[adapter_class_for(_keras_compat.optimizer_base(base))]
        cls = build(base, loss_scale)
        if loss_scale:
            registered_name = registered_name.replace("SafeOptimizer", "SafeLossScaleOptimizer")
            cls.__name__ = registered_name
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        _CLASSES[base] = _keras_compat.register_serializable(cls, registered_name)
    return _CLASSES[base]


def register_with_keras():
    """Registers the wrappers of the installed Keras, so a saved model loads without
    ``custom_objects``; run by ``import safegrad`` (or right after Keras is imported)."""
    for base, _ in _keras_compat.optimizer_base_classes():
        class_for_base(base)
    for base in _keras_compat.loss_scale_optimizer_classes():
        class_for_base(base)


def _keras3_class(base, loss_scale):
    api_base = _keras_compat.optimizer_base(base)  # (a LossScaleOptimizer's __init__ is not run)

    class SafeOptimizer(*bases_of_wrapper(base, loss_scale)):
        """A Keras 3 optimizer that checks, clips and applies like ``safegrad.clip_and_apply``."""

        def _safegrad_init_base(self, inner, name):
            api_base.__init__(self, learning_rate=0.0, name=name or "safe_" + inner_name(inner))

        # A LossScaleOptimizer wrapping this one sets its inner optimizer's loss_scale_factor
        # (Keras 3's LossScaleOptimizer.__init__; Keras's tracking __setattr__ bypasses
        # properties): refuse being wrapped, with the way out.
        def __setattr__(self, name, value):
            if name == "loss_scale_factor" and "_safegrad_inner" in self.__dict__:
                raise ValueError(INSIDE_A_LOSS_SCALE_OPTIMIZER)
            super().__setattr__(name, value)

        def build(self, var_list):
            if not self._safegrad_inner.built:
                self._safegrad_inner.build(var_list)
            api_base.build(self, var_list)

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
            """Checks, clips and applies; returns ``iterations``, as Keras 3's does."""
            grads_and_vars = list(grads_and_vars)
            self.apply([g for g, _ in grads_and_vars], [v for _, v in grads_and_vars])
            return self.iterations

        def stateless_apply(self, optimizer_variables, grads, trainable_variables):
            raise NotImplementedError("safegrad's SafeOptimizer runs on the TensorFlow backend only.")

        def scale_loss(self, loss):
            return self._safegrad_inner.scale_loss(loss)

    return SafeOptimizer


def _keras2_class(base, loss_scale):
    delegating = _keras_compat.delegating_trackable_mixin()

    class SafeOptimizer(*bases_of_wrapper(base, loss_scale, delegating)):
        """A Keras 2.11+ optimizer that checks, clips and applies like ``clip_and_apply``."""

        __init__ = _keras_compat.no_automatic_dependency_tracking(KerasWrapperCore.__init__)

        def _safegrad_init_base(self, inner, name):
            # The base __init__ is not called: every piece of state is the wrapped optimizer's.
            delegating.__init__(self, inner)
            self.name = name or "safe_" + inner_name(inner)

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

            def set_inner(values):
                for variable, value in zip(inner.variables, values):
                    variable.assign(value)

            self._safegrad_set_weights(weights, len(inner.variables), set_inner)

        def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False, **kwargs):
            """Checks, clips and applies; returns ``iterations``, as the Keras 2.11+ optimizers do."""
            grads_and_vars = list(grads_and_vars)
            with tf.init_scope():
                self.build([v for _, v in grads_and_vars])
            aggregate = not skip_gradients_aggregation and kwargs.pop("experimental_aggregate_gradients", True)
            self._safegrad_apply(grads_and_vars, name=name, aggregate=aggregate)
            return self.iterations

        use_ema = inner_property("use_ema")
        ema_momentum = inner_property("ema_momentum")

    return SafeOptimizer


def _optimizer_v2_class(base, loss_scale):
    delegating = _keras_compat.delegating_trackable_mixin()

    class SafeOptimizerV2(*bases_of_wrapper(base, loss_scale, delegating)):
        """A Keras ``OptimizerV2`` that checks, clips and applies like ``clip_and_apply``."""

        __init__ = KerasWrapperCore.__init__  # not the delegating mixin's
        _HAS_AGGREGATE_GRAD = True
        _safegrad_deserialize_legacy = True

        def _safegrad_init_base(self, inner, name):
            # The base __init__ is not called: every piece of state is the wrapped optimizer's.
            delegating.__init__(self, inner)
            self._name = name or "Safe" + inner_name(inner)

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
            """Checks, clips and applies; returns what OptimizerV2's does: the update op in a graph
            and in ``tf.function``, None eagerly."""
            return as_operation(
                self._safegrad_apply(grads_and_vars, name=name, aggregate=experimental_aggregate_gradients)
            )

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

        # Hyperparameters (beta_1, momentum, ...) are the wrapped optimizer's `_hyper` entries (a
        # LossScaleOptimizer's: its inner optimizer's), read and written through OptimizerV2's own
        # accessors, as in Keras's LossScaleOptimizer.
        def __getattribute__(self, name):
            try:
                return object.__getattribute__(self, name)
            except AttributeError as error:
                if name == "_hyper":
                    # TF 2.4-2.9's LossScaleOptimizer reads its inner optimizer's `_hyper`, which
                    # a wrapper has not: the only sign it wraps one (see INSIDE_A_LOSS_SCALE...).
                    raise AttributeError("{!r} object has no attribute '_hyper': {}".format(
                        type(self).__name__, INSIDE_A_LOSS_SCALE_OPTIMIZER)) from None
                if name == "_safegrad_inner":
                    raise error
                hypers = hyper_owner(object.__getattribute__(self, "_safegrad_inner"))
                if name in getattr(hypers, "_hyper", {}):
                    return hypers._get_hyper(name)
                raise error

        def __setattr__(self, name, value):
            hypers = hyper_owner(self.__dict__.get("_safegrad_inner"))
            if hypers is not None and name in getattr(hypers, "_hyper", {}) and not hasattr(type(self), name):
                hypers._set_hyper(name, value)
            else:
                object.__setattr__(self, name, value)

    return SafeOptimizerV2


# The class each Keras optimizer API gets, and the name it is registered under.
_BUILDERS = {
    Keras3OptimizerAdapter: (_keras3_class, "SafeOptimizer"),
    Keras2OptimizerAdapter: (_keras2_class, "SafeOptimizer"),
    KerasOptimizerV2Adapter: (_optimizer_v2_class, "SafeOptimizerV2"),
}
