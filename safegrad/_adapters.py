"""One adapter per optimizer API: what safegrad's step asks of the optimizer it drives.

The step (check, clip, apply or skip) is the same code for every optimizer. What differs between
the optimizer APIs - TF1's ``tf.compat.v1.train.Optimizer``, Keras 2's ``OptimizerV2``, the
Keras 2.11+ ``Optimizer`` and Keras 3's ``Optimizer`` - is answered by an adapter: how gradients
are computed, which optimizer variables must exist before the apply/skip ``tf.cond``, how to
apply without summing replicas a second time, whether the optimizer sums replicas whatever it is
told, whether it runs in a TF1 graph, and how messages name it (the base class is in
``_adapter_base``). The loss-scale optimizers of each API are adapters too (``_loss_scale``);
another API is one more subclass listed in ``ADAPTERS``.

Example:
  >>> adapter = adapter_for(tf.compat.v1.train.AdamOptimizer(1e-3))
  >>> grads_and_vars = adapter.compute_gradients(loss, var_list, tape=None)
  >>> control_inputs = adapter.apply(grads_and_vars, global_step=None, name=None)
"""

from safegrad import _keras_compat
from safegrad._adapter_base import OptimizerAdapter
from safegrad._gradients import called_in_v1_graph
from safegrad._loss_scale import Keras2LossScaleAdapter, Keras3LossScaleAdapter, V1LossScaleAdapter
from safegrad._tf import TF_VERSION_STRING, as_control_input, in_name_scope, tf, tf1

class V1OptimizerAdapter(OptimizerAdapter):
    """``tf.compat.v1.train.Optimizer``: every TF, in graphs, tf.function and eagerly."""

    api = "tf.compat.v1.train.Optimizer"
    sums_replicas_itself = True  # `_distributed_apply` always reduces

    @classmethod
    def speaks(cls, optimizer_class):
        return issubclass(optimizer_class, tf1.train.Optimizer)

    def compute_gradients(self, loss, var_list, tape, options=None):
        """The optimizer's own ``compute_gradients`` where it matters: a subclass hooking it (loss
        scaling, Horovod's all-reduce), a tf.distribute strategy (it divides the loss by the
        replica count), or gradient options given (its exact semantics). Otherwise the base
        method only adds cost: in a graph it gates every gradient op (GATE_OP) and under TF2 it
        makes every gradient wait for the loss value, 20% of an M1 step in tf.function
        (benchmarks/). It cannot take a callable ``var_list``."""
        options = options or {}
        loss = called_in_v1_graph(loss)
        own = type(self.optimizer).compute_gradients is not tf1.train.Optimizer.compute_gradients
        needed = own or tf.distribute.has_strategy() or bool(options)
        if tape is None and needed and not (callable(loss) and callable(var_list)):
            if callable(var_list):
                var_list = var_list()
            return list(self.optimizer.compute_gradients(loss, var_list=var_list, **options))
        return super().compute_gradients(loss, var_list, tape, options)

    def prepare(self, grads_and_vars, name_scope):
        # `apply_gradients` creates slots and non-slot variables (Adam's beta1_power) in the name
        # scope it is called in: do it first in the caller's scope. `_create_slots` is the v1
        # optimizer's own (idempotent) hook, stable from TF 1.15 to 2.21. Under a strategy,
        # `_distributed_apply` creates them in cross-replica context itself.
        if tf.distribute.has_strategy():
            return
        variables = [v for g, v in grads_and_vars if g is not None]
        with in_name_scope(name_scope), tf.init_scope():
            self.optimizer._create_slots(variables)

    def apply(self, grads_and_vars, global_step=None, name=None, aggregated=False):
        # v1 optimizers advance global_step themselves (colocated, after the update).
        update = self.optimizer.apply_gradients(list(grads_and_vars), global_step=global_step, name=name)
        return [d for d in [as_control_input(update)] if d is not None]

    def can_fold_clip_scale(self):
        # Exactly plain gradient descent: w - lr * (s * g) == w - (lr * s) * g. A subclass may
        # change the update, so only the exact class.
        return type(self.optimizer) is tf1.train.GradientDescentOptimizer

    def with_clip_scale_folded(self, scale):
        # Gradient descent has no slots, so a per-step twin with learning rate lr * scale is
        # stateless. `_learning_rate` is a float, tensor, or (TF2) zero-argument callable.
        optimizer = self.optimizer
        learning_rate = optimizer._learning_rate
        if callable(learning_rate):
            learning_rate = learning_rate()
        learning_rate = tf.convert_to_tensor(learning_rate)
        twin = tf1.train.GradientDescentOptimizer(
            learning_rate * tf.cast(scale, learning_rate.dtype),
            use_locking=optimizer._use_locking,
            name=optimizer.get_name(),
        )
        return V1OptimizerAdapter(twin)


class KerasOptimizerV2Adapter(OptimizerAdapter):
    """Keras 2 ``OptimizerV2``: ``tf.keras.optimizers`` in TF 2.2-2.10, ``.legacy`` in TF
    2.11-2.15 and tf-keras. Runs in TF1 graphs too."""

    api = "Keras OptimizerV2"
    is_keras = True

    @classmethod
    def speaks(cls, optimizer_class):
        return callable(getattr(optimizer_class, "_create_all_weights", None)) and callable(
            getattr(optimizer_class, "get_slot", None)
        )

    def prepare(self, grads_and_vars, name_scope):
        # Named as its own `apply_gradients` names them: in the caller's scope, under its name.
        variables = [v for g, v in grads_and_vars if g is not None]
        with in_name_scope(name_scope), tf.name_scope(self.optimizer._name), tf.init_scope():
            self.optimizer._create_all_weights(variables)

    def apply_gradients(self, grads_and_vars, name, aggregated):
        if aggregated:
            return self.optimizer.apply_gradients(
                grads_and_vars, name=name, experimental_aggregate_gradients=False
            )
        return self.optimizer.apply_gradients(grads_and_vars, name=name)

    def aggregate(self, grads_and_vars, requested):
        if requested:
            transform = getattr(self.optimizer, "_transform_unaggregated_gradients", None)
            if transform is not None:
                grads_and_vars = transform(grads_and_vars)
            grads_and_vars = self.optimizer._aggregate_gradients(grads_and_vars)
        return grads_and_vars, True


class Keras3OptimizerAdapter(OptimizerAdapter):
    """Keras 3 ``Optimizer`` (``tf.keras`` in TF >= 2.16): eagerly and in tf.function only."""

    api = "Keras 3 optimizer"
    is_keras = True
    sums_replicas_itself = True  # `_backend_update_step` all-reduces in replica context

    @classmethod
    def speaks(cls, optimizer_class):
        # Only Keras 3 has the JAX-style `stateless_apply` shared by all its backends.
        return callable(getattr(optimizer_class, "apply_gradients", None)) and callable(
            getattr(optimizer_class, "stateless_apply", None)
        )

    def graph_mode_unsupported(self):
        return (
            "Keras 3 optimizers run only eagerly or inside tf.function, not in a "
            "tf.compat.v1 graph/Session. Use a tf.compat.v1.train optimizer there."
        )

    def prepare(self, grads_and_vars, name_scope):
        with tf.init_scope():
            if not self.optimizer.built:
                self.optimizer.build([v for _, v in grads_and_vars])

    def apply_gradients(self, grads_and_vars, name, aggregated):
        return self.optimizer.apply_gradients(grads_and_vars)  # Keras 3 takes no `name`


class Keras2OptimizerAdapter(OptimizerAdapter):
    """The Keras 2.11+ ``Optimizer`` (TF 2.11-2.15, tf-keras): eagerly and in tf.function only."""

    api = "Keras 2.11+ optimizer"
    is_keras = True

    @classmethod
    def speaks(cls, optimizer_class):
        return all(
            callable(getattr(optimizer_class, method, None))
            for method in ("apply_gradients", "build", "exclude_from_weight_decay")
        )

    def graph_mode_unsupported(self):
        # Its apply_gradients builds update ops but returns the iterations variable, so a graph
        # step would silently not train (seen with TF 2.15).
        return (
            "the Keras 2.11+ optimizers do not support tf.compat.v1 graphs/Sessions. Use "
            "tf.keras.optimizers.legacy.* or a tf.compat.v1.train optimizer there, or run "
            "eagerly / inside tf.function."
        )

    def prepare(self, grads_and_vars, name_scope):
        with tf.init_scope():
            self.optimizer.build([v for _, v in grads_and_vars])  # idempotent once built

    def apply_gradients(self, grads_and_vars, name, aggregated):
        return self.optimizer.apply_gradients(
            grads_and_vars, name=name, skip_gradients_aggregation=aggregated
        )

    def aggregate(self, grads_and_vars, requested):
        if requested:
            grads_and_vars = self.optimizer.aggregate_gradients(grads_and_vars)
        return grads_and_vars, True


# Tried in this order: a loss-scale optimizer is also an optimizer of its API, so they come
# first; Keras 3 before the Keras 2.11+ optimizer, whose methods it also has.
ADAPTERS = (
    V1LossScaleAdapter, Keras3LossScaleAdapter, Keras2LossScaleAdapter,
    V1OptimizerAdapter, Keras3OptimizerAdapter, KerasOptimizerV2Adapter, Keras2OptimizerAdapter,
)


def adapter_class_for(optimizer_class):
    """The adapter class for optimizers of ``optimizer_class``, or None."""
    for adapter in ADAPTERS:
        if adapter.speaks(optimizer_class):
            return adapter
    return None


def supported_optimizers():
    """How messages list the optimizers safegrad drives with the installed TF and Keras."""
    names = ["a " + V1OptimizerAdapter.api]
    for base, module in _keras_compat.optimizer_base_classes():
        adapter = adapter_class_for(base)
        if adapter is not None:
            names.append("a {} ({}.*)".format(adapter.api, module))
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def adapter_for(optimizer):
    """The adapter driving ``optimizer``; TypeError naming `optimizer` if nothing drives it."""
    adapter = adapter_class_for(type(optimizer))
    if adapter is not None:
        return adapter.build(optimizer, adapter_for)
    if _keras_compat.is_unsupported_keras_optimizer(optimizer):
        raise TypeError(
            "`optimizer` is a Keras OptimizerV2 of TensorFlow 1.x (tf.keras.optimizers), which "
            "safegrad does not support: on TensorFlow {} use {} (e.g. "
            "tf.compat.v1.train.AdamOptimizer). Received: optimizer={!r}".format(
                TF_VERSION_STRING, supported_optimizers(), optimizer
            )
        )
    hint = " (a string; pass an optimizer object)" if isinstance(optimizer, str) else ""
    raise TypeError(
        "`optimizer` must be, with TensorFlow {}, {}. Received: optimizer={!r}{}".format(
            TF_VERSION_STRING, supported_optimizers(), optimizer, hint
        )
    )
