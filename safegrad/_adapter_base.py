"""The adapter base class: what safegrad's step asks of the optimizer it drives.

Every optimizer API (``_adapters``: TF1's ``tf.compat.v1.train.Optimizer``, Keras 2's
``OptimizerV2``, the Keras 2.11+ ``Optimizer``, Keras 3's ``Optimizer``; ``_loss_scale``: the
loss-scale optimizers of each) is one subclass, overriding what its API does differently.
"""

from safegrad._gradients import gradients_of
from safegrad._tf import as_control_input, outer_context_key, tf


class OptimizerAdapter:
    """How safegrad drives one optimizer API. Subclasses override what their API does differently.

    Attributes:
      api: how messages name the API, e.g. "Keras 3 optimizer".
      is_keras: whether ``SafeOptimizer`` must return a Keras optimizer for it (``compile``).
      sums_replicas_itself: whether its ``apply_gradients`` sums gradients across replicas even
        when they were summed already (then replica 0 passes the sums, the others zeros).
    """

    api = "optimizer"
    is_keras = False
    sums_replicas_itself = False

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @classmethod
    def build(cls, optimizer, adapter_for):
        """The adapter of ``optimizer``; ``adapter_for`` finds adapters of optimizers it wraps."""
        return cls(optimizer)

    @classmethod
    def speaks(cls, optimizer_class):
        """Whether instances of ``optimizer_class`` have this API (feature detection)."""
        raise NotImplementedError

    def graph_mode_unsupported(self):
        """Why this API cannot build a TF1-style graph step, or None if it can."""
        return None

    def check_policy(self, policy):
        """ValueError when ``policy`` cannot be kept with this optimizer (at the call)."""

    def loss_scaling(self):
        """The ``_loss_scale.LossScaling`` of a loss-scale optimizer, else None."""
        return None

    def require_supported_context(self):
        """ValueError naming `optimizer` when it cannot run where the step is being built."""
        reason = self.graph_mode_unsupported()
        if reason is not None and outer_context_key() is not None:
            raise ValueError("`optimizer` is a {}: {}".format(self.api, reason))

    def compute_gradients(self, loss, var_list, tape, options=None):
        """(gradient, variable) pairs of ``loss`` (see ``_gradients.gradients_of``)."""
        return gradients_of(loss, var_list, tape, options)

    def prepare(self, grads_and_vars, name_scope):
        """Creates the optimizer's variables for ``grads_and_vars`` now, outside any tf.cond, with
        the names the optimizer alone would give them when called in ``name_scope`` (the
        caller's name scope, "" for the root). A skipped step must leave every optimizer
        variable untouched, so none may be born in a branch; and adding safegrad must rename
        none (checkpoints written before keep restoring)."""

    def apply(self, grads_and_vars, global_step=None, name=None, aggregated=False):
        """Applies ``grads_and_vars`` (no None gradients) and advances ``global_step`` by one.

        ``aggregated``: the gradients are already summed across replicas; the optimizer must not
        sum them again. Returns the control inputs that complete the update (may be empty).
        """
        result = self.apply_gradients(list(grads_and_vars), name, aggregated)
        deps = [d for d in [as_control_input(result)] if d is not None]
        if global_step is None:
            return deps
        with tf.control_dependencies(deps):
            increment = as_control_input(global_step.assign_add(1, read_value=False))
        return deps + ([increment] if increment is not None else [])

    def apply_gradients(self, grads_and_vars, name, aggregated):
        """The optimizer's own ``apply_gradients``, spelled for its API."""
        raise NotImplementedError

    def aggregate(self, grads_and_vars, requested):
        """Sums gradients across replicas the way the optimizer itself would, when a caller asks a
        wrapper for it (``requested``). Returns ``(pairs, aggregated)``; ``aggregated=False``
        leaves the sum to the step (``_distribute.all_reduce_sum``)."""
        return grads_and_vars, False

    def can_fold_clip_scale(self):
        """Whether the global clip scale can go into the update instead of into every gradient
        (then safegrad writes no scaled copy of the gradients)."""
        return False

    def with_clip_scale_folded(self, scale):
        """An adapter whose update equals this one's on gradients scaled by ``scale``."""
        raise NotImplementedError
