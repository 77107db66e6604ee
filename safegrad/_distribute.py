"""tf.distribute: sum gradients over replicas first, then take ONE apply/skip decision for all.

Inside ``strategy.run`` every replica holds its own gradients. safegrad checks and clips the SUM
over replicas (what the optimizer applies), so every replica sees the same norm and takes the same
decision; the decision itself is taken in cross-replica context, because TF forbids an
optimizer's ``merge_call`` inside a ``tf.cond`` in replica context.
"""

from safegrad._tf import tf


def replica_context():
    """The ReplicaContext of a real tf.distribute strategy (inside ``strategy.run``), else None.

    Raises ValueError in cross-replica context (inside ``strategy.scope()`` but not
    ``strategy.run``), where a training step cannot be taken.
    """
    if not tf.distribute.has_strategy():
        return None
    if tf.distribute.in_cross_replica_context():
        raise ValueError(
            "safegrad steps run in replica context: call them inside strategy.run(...), not "
            "directly under strategy.scope()."
        )
    return tf.distribute.get_replica_context()


def all_reduce_sum(replica, gradients):
    """The gradients summed over all replicas (every replica gets the same sums)."""
    return replica.all_reduce(tf.distribute.ReduceOp.SUM, list(gradients))


def first_replica_only(replica, gradient):
    """``gradient`` on replica 0, zeros elsewhere: their sum is exactly ``gradient``."""
    first = tf.equal(replica.replica_id_in_sync_group, 0)
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(first, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(first, gradient.dtype)


def decide_across_replicas(replica, pred, apply_fn, apply_args, skip_fn, skip_args):
    """``apply_fn(*apply_args)`` on every replica if ``pred`` else ``skip_fn(*skip_args)`` once.

    The decision is taken once, in cross-replica context (Keras's LossScaleOptimizer does the
    same): ``pred`` is the same on every replica (computed from all-reduced gradients); replica
    0's value decides. Arguments pass through merge_call, so each replica applies its own copies.
    """
    apply_args = [_placeholder_for_none(a) for a in apply_args]
    skip_args = [_placeholder_for_none(a) for a in skip_args]

    def merge_fn(strategy, pred, apply_args, skip_args):
        decision = strategy.experimental_local_results(pred)[0]
        first = [_none_for_placeholder(strategy.experimental_local_results(a)[0]) for a in skip_args]

        def apply_all():
            strategy.extended.call_for_each_replica(
                lambda *args: apply_fn(*[_none_for_placeholder(a) for a in args]), args=tuple(apply_args)
            )
            return tf.constant(True)

        return tf.cond(decision, apply_all, lambda: skip_fn(*first))

    return replica.merge_call(merge_fn, args=(pred, apply_args, skip_args))


# merge_call cannot pass None through: it travels as this string constant.
_NONE = "safegrad-none"


def _placeholder_for_none(value):
    return tf.constant(_NONE) if value is None else value


def _none_for_placeholder(value):
    if isinstance(value, tf.Tensor) and value.dtype == tf.string and tf.get_static_value(value) == _NONE.encode():
        return None
    return value
