"""Loss-scale optimizers: the step checks and clips UNSCALED gradients, the scale keeps its schedule.

A loss-scale optimizer multiplies the loss by a scale S (so float16 gradients do not underflow),
divides the gradients by S, and on a non-finite step lowers S and skips. Driven by safegrad:

* the finite check, the clipping and ``step_state().global_norm`` work on the unscaled gradients,
  so ``clip_norm`` is in the user's units;
* the scale follows exactly the loss-scale optimizer's own schedule (lowered on an overflow,
  raised after its growth steps), using its own update code where it has one;
* an overflow that lowering S can still fix skips the step (counted in ``overflow_skips``) and
  never raises; a non-finite step at the floor of the scale (1; or a fixed scale) is a genuine
  failure: ``on_nonfinite`` applies (raise, or skip and count);
* the update is applied by the inner optimizer (the loss-scale optimizer's own
  ``apply_gradients`` would check and update the scale a second time).

One ``LossScaling`` per loss-scale optimizer API, used by ``LossScaleAdapter``; the adapters are
listed first in ``_adapters.ADAPTERS`` (a loss-scale optimizer is also an optimizer of its API).
"""

from safegrad._adapter_base import OptimizerAdapter
from safegrad._tf import as_control_input, tf, tf1


class LossScaling:
    """What the step needs of a loss-scale optimizer ``optimizer``.

    Attributes:
      receives_scaled: whether its ``apply_gradients`` takes SCALED gradients (Keras 3: the loss
        was scaled with ``scale_loss``); the others take gradients already unscaled.
    """

    receives_scaled = False

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @classmethod
    def speaks(cls, optimizer_class):
        raise NotImplementedError

    def inner_optimizer(self):
        raise NotImplementedError

    def current(self):
        """The current scale, a float32 scalar tensor."""
        raise NotImplementedError

    def dynamic(self):
        return True

    def can_lower(self):
        """Whether lowering the scale may still make a non-finite step finite (bool tensor): a
        dynamic scale above 1 (the floor of the Keras 2 / TF1 schedules; Keras 3 has none)."""
        if not self.dynamic():
            return tf.constant(False)
        return tf.cast(self.current(), tf.float32) > 1.0

    def scaled_loss(self, loss):
        """``loss`` (tensor or zero-argument callable) multiplied by the scale, as the optimizer does."""
        raise NotImplementedError

    def unscale(self, gradients):
        """The gradients divided by the scale, as the optimizer does."""
        raise NotImplementedError

    def update(self, gradients, all_finite):
        """The scale's schedule for this step; returns control inputs (none eagerly)."""
        raise NotImplementedError

    def prepare(self, variables):
        """Creates the optimizer's own variables (the scale) before the step."""


class V1LossScaling(LossScaling):
    """``tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer`` (TF 2.x) and
    ``tf.train.experimental.MixedPrecisionLossScaleOptimizer`` (TF 1.15), which
    ``enable_mixed_precision_graph_rewrite`` also returns. Its private helpers
    (``_scale_loss``, ``_unscale_grads``, ``_loss_scale``) are the same from TF 1.15 to 2.21."""

    @classmethod
    def speaks(cls, optimizer_class):
        return issubclass(optimizer_class, tf1.train.Optimizer) and all(
            callable(getattr(optimizer_class, m, None))
            for m in ("_scale_loss", "_unscale_grads", "_doing_dynamic_loss_scaling")
        )

    def inner_optimizer(self):
        return self.optimizer._optimizer

    def current(self):
        return tf.cast(self.optimizer._loss_scale(), tf.float32)

    def dynamic(self):
        return self.optimizer._doing_dynamic_loss_scaling()

    def scaled_loss(self, loss):
        return self.optimizer._scale_loss(loss)

    def unscale(self, gradients):
        return self.optimizer._unscale_grads(gradients)

    def update(self, gradients, all_finite):
        update_op, _ = self.optimizer._loss_scale.update(gradients)  # its own finite test
        return [d for d in [as_control_input(update_op)] if d is not None]


class Keras2LossScaling(LossScaling):
    """Keras 2's ``LossScaleOptimizer`` (TF 2.4-2.15, tf-keras; V3 for the 2.11+ optimizers):
    public ``get_scaled_loss`` / ``get_unscaled_gradients``; the dynamic schedule is its private
    ``_loss_scale.update`` (the same in every Keras 2)."""

    @classmethod
    def speaks(cls, optimizer_class):
        return all(
            callable(getattr(optimizer_class, m, None)) for m in ("get_scaled_loss", "get_unscaled_gradients")
        )

    def inner_optimizer(self):
        return self.optimizer.inner_optimizer

    def current(self):
        return tf.cast(self.optimizer.loss_scale, tf.float32)

    def dynamic(self):
        return bool(self.optimizer.dynamic)

    def scaled_loss(self, loss):
        return self.optimizer.get_scaled_loss(loss)

    def unscale(self, gradients):
        return self.optimizer.get_unscaled_gradients(gradients)

    def update(self, gradients, all_finite):
        if not self.dynamic():
            return []
        update_op, _ = self.optimizer._loss_scale.update(gradients)  # its own finite test
        return [d for d in [as_control_input(update_op)] if d is not None]


class Keras3LossScaling(LossScaling):
    """Keras 3's ``LossScaleOptimizer``: the user scales the loss with ``scale_loss`` and hands it
    scaled gradients. Its schedule (``step_counter``, ``dynamic_scale``) is written out below as
    its ``_stateful_handle_*`` methods do it (which also apply the update)."""

    receives_scaled = True

    @classmethod
    def speaks(cls, optimizer_class):
        methods = ("check_finite", "scale_loss", "stateless_apply")
        return all(callable(getattr(optimizer_class, m, None)) for m in methods)

    def inner_optimizer(self):
        return self.optimizer.inner_optimizer

    def current(self):
        if not self.optimizer.built:
            return tf.constant(float(self.optimizer.initial_scale), tf.float32)
        return tf.convert_to_tensor(self.optimizer.dynamic_scale)

    def scaled_loss(self, loss):
        if callable(loss):
            return lambda: self.optimizer.scale_loss(loss())
        return self.optimizer.scale_loss(loss)

    def unscale(self, gradients):
        scale = self.current()
        return [_divide(g, scale) for g in gradients]

    def update(self, gradients, all_finite):
        optimizer = self.optimizer

        def on_finite():
            def upscale():
                optimizer.step_counter.assign(0)
                optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 2.0)
                return tf.constant(True)

            def increment():
                optimizer.step_counter.assign_add(1)
                return tf.constant(True)

            return tf.cond(
                tf.equal(tf.convert_to_tensor(optimizer.step_counter), optimizer.dynamic_growth_steps - 1),
                upscale, increment,
            )

        def on_nonfinite():
            optimizer.step_counter.assign(0)
            optimizer.dynamic_scale.assign(optimizer.dynamic_scale * 0.5)
            return tf.constant(True)

        return [d for d in [as_control_input(tf.cond(all_finite, on_finite, on_nonfinite))] if d is not None]

    def prepare(self, variables):
        with tf.init_scope():
            if not self.optimizer.built:
                self.optimizer.build(variables)


def _divide(gradient, scale):
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values / tf.cast(scale, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient / tf.cast(scale, gradient.dtype)


class LossScaleAdapter(OptimizerAdapter):
    """A loss-scale optimizer of any API: the step sees unscaled gradients, the inner optimizer's
    adapter applies them, the scale keeps its own schedule (see ``_loss_scale``)."""

    scaling_class = None

    def __init__(self, optimizer, inner):
        super().__init__(optimizer)
        self.scaling = self.scaling_class(optimizer)
        self.inner = inner

    @classmethod
    def build(cls, optimizer, adapter_for):
        return cls(optimizer, adapter_for(cls.scaling_class(optimizer).inner_optimizer()))

    @classmethod
    def speaks(cls, optimizer_class):
        return cls.scaling_class.speaks(optimizer_class)

    @property
    def sums_replicas_itself(self):
        return self.inner.sums_replicas_itself

    def graph_mode_unsupported(self):
        return self.inner.graph_mode_unsupported()

    def loss_scaling(self):
        return self.scaling

    def check_policy(self, policy):
        if policy.on_nonfinite == "ignore":
            raise ValueError(
                "`on_nonfinite` cannot be 'ignore' with a loss-scale optimizer, which skips "
                "non-finite steps itself: use 'skip' (its behaviour, with the counts) or 'raise' "
                "(raise only when lowering the scale cannot help). Received: "
                "on_nonfinite='ignore', optimizer={!r}".format(self.optimizer)
            )

    def compute_gradients(self, loss, var_list, tape, options=None):
        """Gradients of the SCALED loss, unscaled as the loss-scale optimizer unscales them."""
        options = dict(options or {})
        if callable(loss) and not isinstance(loss, (tf.Tensor, tf.Variable)):
            loss = self.scaling.scaled_loss(loss)
        else:  # d(S * loss) = backprop seeded with S: what a scaled loss gives, for a recorded tensor
            scale = tf.cast(self.scaling.current(), loss.dtype)
            grad_loss = options.get("grad_loss")
            options["grad_loss"] = scale if grad_loss is None else grad_loss * scale
        pairs = self.inner.compute_gradients(loss, var_list, tape, options)
        return list(zip(self.scaling.unscale([g for g, _ in pairs]), [v for _, v in pairs]))

    def prepare(self, grads_and_vars, name_scope):
        self.scaling.prepare([v for _, v in grads_and_vars])
        self.inner.prepare(grads_and_vars, name_scope)

    def apply(self, grads_and_vars, global_step=None, name=None, aggregated=False):
        return self.inner.apply(grads_and_vars, global_step, name, aggregated)

    def aggregate(self, grads_and_vars, requested):
        return self.inner.aggregate(grads_and_vars, requested)

    def can_fold_clip_scale(self):
        return self.inner.can_fold_clip_scale()

    def with_clip_scale_folded(self, scale):
        return self.inner.with_clip_scale_folded(scale)


class V1LossScaleAdapter(LossScaleAdapter):
    api = "tf.compat.v1 MixedPrecisionLossScaleOptimizer"
    scaling_class = V1LossScaling


class Keras2LossScaleAdapter(LossScaleAdapter):
    api = "Keras 2 LossScaleOptimizer"
    is_keras = True
    scaling_class = Keras2LossScaling


class Keras3LossScaleAdapter(LossScaleAdapter):
    api = "Keras 3 LossScaleOptimizer"
    is_keras = True
    scaling_class = Keras3LossScaling
