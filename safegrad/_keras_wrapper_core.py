"""What every Keras ``SafeOptimizer`` class shares, declared once (as tf-keras's
``BaseLossScaleOptimizer`` does): construction and validation, the step, the migration helpers
(``compute_gradients``, ``minimize``), weights and the Keras config.

Also the pieces of those classes that depend on no Keras generation: ``LossScaleSurface`` (the
public API of a LossScaleOptimizer, on a wrapper of one), the refusal to be wrapped by one
(``INSIDE_A_LOSS_SCALE_OPTIMIZER``), and how a wrapper class's bases are chosen. The per-API
classes that mix them into a Keras optimizer class are in ``_keras_wrappers``.
"""

from safegrad import _keras_compat
from safegrad._adapters import adapter_for
from safegrad._policy import StepPolicy
from safegrad._state import step_state
from safegrad._safe_apply import apply_gradients_safely
from safegrad._tf import tf
from safegrad._validate import loss_and_tape
from safegrad._validate import name as validate_name
from safegrad._validate import var_list as validate_var_list
from safegrad._wrapping import WrapperSurface

KERAS_CLIPPING_ARGUMENTS = ("clipnorm", "clipvalue", "global_clipnorm")


class KerasWrapperCore(WrapperSurface):
    """What every Keras wrapper shares. A per-API class defines ``_safegrad_init_base``."""

    # Deserialize the wrapped optimizer as an OptimizerV2 (Keras 2.11-2.15 keep both APIs).
    _safegrad_deserialize_legacy = False

    def __init__(
        self,
        inner_optimizer,
        clip_norm=None,
        per_variable_clip_norm=None,
        clip_value=None,
        on_nonfinite="raise",
        max_consecutive_skips=None,
        tf_compatible_norm=False,
        name=None,
    ):
        """Wraps ``inner_optimizer`` like ``safegrad.SafeOptimizer``.

        Args:
          inner_optimizer: the Keras optimizer to wrap (without clipnorm/clipvalue/global_clipnorm).
          clip_norm, per_variable_clip_norm, clip_value, on_nonfinite, max_consecutive_skips,
            tf_compatible_norm: as in ``safegrad.clip_and_apply``.
          name: optional name.
        """
        policy = StepPolicy.from_arguments(locals())
        adapter = adapter_for(inner_optimizer)
        adapter.require_supported_context()
        adapter.check_policy(policy)
        _refuse_own_clipping(inner_optimizer, adapter)
        validate_name(name)
        self._safegrad_init_base(inner_optimizer, name)
        self._safegrad_wrap(adapter, policy)
        self._safegrad_arguments = {
            key: _config_value(getattr(policy, key), key) for key in StepPolicy._fields
        }
        step_state(self)  # create the counters now, outside any tf.function, so they restore

    def _safegrad_init_base(self, inner, name):
        raise NotImplementedError

    # A Keras 2.10+ LossScaleOptimizer marks the optimizer it wraps: refuse being wrapped (Keras 3
    # and TF 2.4-2.9: see _keras_wrappers).
    @property
    def _is_wrapped_by_loss_scale_optimizer(self):
        return False

    @_is_wrapped_by_loss_scale_optimizer.setter
    def _is_wrapped_by_loss_scale_optimizer(self, value):
        raise ValueError(INSIDE_A_LOSS_SCALE_OPTIMIZER)

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
        loss_and_tape(loss, tape)
        return self._safegrad_adapter.compute_gradients(loss, validate_var_list(var_list), tape)

    def minimize(self, loss, var_list=None, tape=None):
        """``compute_gradients`` then the safe ``apply_gradients``, as Keras 2 and TF1 spell it.

        Returns:
          A bool tensor (eagerly / in tf.function): True when the update was applied.
        """
        return self._safegrad_apply(self.compute_gradients(loss, var_list, tape), gradients_scaled=False)

    def _safegrad_apply(self, grads_and_vars, name=None, aggregate=True, gradients_scaled=None):
        """Sums across replicas the way the wrapped optimizer would (if asked; a no-op without a
        strategy), then checks, clips and applies through it without summing a second time.
        ``gradients_scaled``: see ``apply_gradients_safely`` (default: as the wrapped optimizer's
        ``apply_gradients`` takes them).

        Returns a bool tensor: True when the update was applied."""
        self._safegrad_adapter.require_supported_context()
        grads_and_vars = list(grads_and_vars)
        present = [(g, v) for g, v in grads_and_vars if g is not None]
        absent = [(g, v) for g, v in grads_and_vars if g is None]
        aggregated = False
        if present:
            present, aggregated = self._safegrad_adapter.aggregate(present, aggregate)
        return apply_gradients_safely(
            self._safegrad_adapter, list(present) + absent, self._safegrad_policy, name=name,
            state_owner=self, aggregated=aggregated, gradients_scaled=gradients_scaled,
        )

    def _safegrad_set_weights(self, values, inner_count, set_inner):
        """Sets the wrapped optimizer's weights, then safegrad's counters when ``values`` has
        them (a file saved from an unwrapped optimizer has only the first part)."""
        values = list(values)
        state = self.step_state.all_variables
        # Files from safegrad 0.1 have 8 counters (before overflow_skips): the rest start at 0.
        counts = sorted({inner_count, inner_count + 8, inner_count + len(state)})
        if len(values) not in counts:
            raise ValueError(
                "Optimizer weights do not match: expected {} values (the wrapped optimizer's, then "
                "safegrad's counters). Received: {} values".format(" or ".join(map(str, counts)), len(values))
            )
        set_inner(values[:inner_count])
        for variable, value in zip(state, values[inner_count:]):
            variable.assign(value)

    def get_config(self):
        config = {"inner_optimizer": _keras_compat.serialize_optimizer(self._safegrad_inner)}
        for key, value in self._safegrad_arguments.items():
            if value is _RUNTIME_TENSOR or (isinstance(value, list) and _RUNTIME_TENSOR in value):
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
            inner = _keras_compat.deserialize_optimizer(
                inner, custom_objects=custom_objects, legacy=cls._safegrad_deserialize_legacy
            )
        return cls(inner, **config)

    def __repr__(self):
        return "SafeOptimizer({!r}, {})".format(self._safegrad_inner, self._safegrad_policy)


_RUNTIME_TENSOR = object()


def _config_value(value, name):
    """A config-friendly copy of a policy argument: Python values stay, static tensors become
    floats; a tensor known only at run time cannot be saved in a config."""
    if value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_config_value(v, name) for v in value]
    static = tf.get_static_value(value) if isinstance(value, tf.Tensor) else None
    return _RUNTIME_TENSOR if static is None else float(static)


def _refuse_own_clipping(optimizer, adapter):
    """ValueError if the wrapped optimizer (or, for a loss-scale optimizer, its inner one)
    clips or accumulates gradients by itself: safegrad would check and clip something else than
    what is applied."""
    found = {}
    inner = adapter.loss_scaling().inner_optimizer() if adapter.loss_scaling() is not None else None
    for candidate in [optimizer] + ([inner] if inner is not None else []):
        for argument in KERAS_CLIPPING_ARGUMENTS + ("gradient_accumulation_steps",):
            try:
                value = getattr(candidate, argument, None)
            except (AttributeError, ValueError):
                value = None
            if value is not None:
                found[argument] = value
    accumulation = found.pop("gradient_accumulation_steps", None)
    if accumulation is not None:
        raise ValueError(
            "`optimizer` accumulates gradients by itself (gradient_accumulation_steps={0}): "
            "safegrad would check and clip each micro-batch, not the accumulated update. Create "
            "the optimizer without it, accumulate in your training loop and call "
            "safegrad.apply_gradients(optimizer, accumulated_grads_and_vars, ...) once per update. "
            "Received: gradient_accumulation_steps={0}".format(accumulation)
        )
    if found:
        received = ", ".join("{}={!r}".format(k, v) for k, v in sorted(found.items()))
        raise ValueError(
            "`optimizer` clips gradients by itself ({0}). With safegrad, clipping happens in one "
            "place, after the finite check and after cross-replica aggregation: create the "
            "optimizer without it and pass clip_norm= / per_variable_clip_norm= / clip_value= to "
            "SafeOptimizer. Received: optimizer={1} with {0}".format(received, type(optimizer).__name__)
        )


# Said when a LossScaleOptimizer wraps a SafeOptimizer (what Keras's compile() does under the
# "mixed_float16" policy to any optimizer that is not a LossScaleOptimizer).
INSIDE_A_LOSS_SCALE_OPTIMIZER = (
    "a safegrad.SafeOptimizer must wrap the loss scaling, not be wrapped by it: inside a "
    "LossScaleOptimizer (written out, or made by compile() under the 'mixed_float16' policy) "
    "safegrad would never see an overflowing step (no count, no raise when the scale cannot go "
    "lower). Wrap the other way round, and compile with that: "
    "safegrad.SafeOptimizer(LossScaleOptimizer(optimizer), ...) is itself a LossScaleOptimizer, "
    "so compile() keeps it as it is."
)


def inner_property(name):
    """A read-only property that is the wrapped optimizer's attribute ``name``."""
    return property(lambda self: getattr(self._safegrad_inner, name),
                    doc="The wrapped optimizer's ``{}``.".format(name))


class LossScaleSurface:
    """The public API of a LossScaleOptimizer, on a SafeOptimizer wrapping one: the wrapped
    loss-scale optimizer's (custom loops call ``get_scaled_loss``/``scale_loss`` etc. on it)."""

    def get_scaled_loss(self, loss):  # Keras 2
        return self._safegrad_inner.get_scaled_loss(loss)

    def get_unscaled_gradients(self, grads):  # Keras 2
        return self._safegrad_inner.get_unscaled_gradients(grads)

    loss_scale = inner_property("loss_scale")  # Keras 2
    dynamic = inner_property("dynamic")  # Keras 2
    dynamic_counter = inner_property("dynamic_counter")  # Keras 2
    initial_scale = inner_property("initial_scale")
    dynamic_growth_steps = inner_property("dynamic_growth_steps")
    dynamic_scale = inner_property("dynamic_scale")  # Keras 3
    step_counter = inner_property("step_counter")  # Keras 3


def bases_of_wrapper(base, loss_scale, delegating=None):
    """The bases of a wrapper class: the core, the loss-scale surface if ``base`` is a
    LossScaleOptimizer class, the delegating mixin (Keras 2) unless ``base`` has it already."""
    bases = [KerasWrapperCore] + ([LossScaleSurface] if loss_scale else []) + [base]
    if delegating is not None and not issubclass(base, delegating):
        bases.insert(0, delegating)
    return tuple(bases)


def inner_name(inner):
    """The wrapped optimizer's name (a Keras 2 LossScaleOptimizer has none of its own: its inner
    optimizer's, as its checkpoints use)."""
    for candidate in (inner, getattr(inner, "inner_optimizer", None)):
        for attribute in ("name", "_name"):
            value = getattr(candidate, attribute, None)
            if isinstance(value, str) and value:
                return value
    return type(inner).__name__


def hyper_owner(inner):
    """The OptimizerV2 holding the hyperparameters: ``inner``, or a LossScaleOptimizer's inner."""
    return getattr(inner, "inner_optimizer", inner) if inner is not None else None
