"""What every ``SafeOptimizer`` shares, for v1 and Keras optimizers alike: the surface, declared once.

* One name for the wrapped optimizer, ``inner_optimizer`` (as Keras's LossScaleOptimizer);
  ``optimizer`` is kept as an alias because the v1 wrapper documented it first.
* The double-wrap rule: a wrapper is never wrapped or driven by ``clip_and_apply`` (it would
  check and clip twice), and one optimizer has at most one wrapper (both would own its slots and
  checkpoint).
* ``policy`` and ``step_state``: the validated policy and this wrapper's counters.
"""

from safegrad._state import step_state


def is_wrapper(optimizer):
    """Whether ``optimizer`` is a safegrad ``SafeOptimizer`` (v1 or any Keras generation)."""
    return getattr(type(optimizer), "_safegrad_wrapper", False)


def refuse_wrapper(optimizer, instead):
    """TypeError if ``optimizer`` is a SafeOptimizer; ``instead`` says what to do instead."""
    if is_wrapper(optimizer):
        raise TypeError(
            "`optimizer` is already a safegrad.SafeOptimizer, which checks and clips by itself; "
            "{}. Received: optimizer={!r}".format(instead, optimizer)
        )


class WrapperSurface:
    """Mixin of every SafeOptimizer class: call ``_safegrad_wrap`` in ``__init__``."""

    _safegrad_wrapper = True

    def _safegrad_wrap(self, adapter, policy):
        """Takes ``adapter.optimizer`` as the wrapped optimizer, unless the rule refuses it."""
        inner = adapter.optimizer
        refuse_wrapper(inner, "wrapping it twice would check and clip twice")
        if getattr(inner, "_safegrad_wrapped_by", False):
            raise ValueError(
                "`optimizer` is already wrapped by another safegrad.SafeOptimizer (both would own "
                "its slots and checkpoint). Wrap a fresh optimizer. Received: "
                "optimizer={!r}".format(inner)
            )
        self._safegrad_adapter = adapter
        self._safegrad_inner = inner
        self._safegrad_policy = policy
        inner._safegrad_wrapped_by = True

    @property
    def inner_optimizer(self):
        """The wrapped optimizer."""
        return self._safegrad_inner

    @property
    def optimizer(self):
        """Alias of ``inner_optimizer``, kept for code written against safegrad 0.1's v1 wrapper."""
        return self._safegrad_inner

    @property
    def policy(self):
        """The validated clipping / non-finite policy (a ``StepPolicy`` namedtuple)."""
        return self._safegrad_policy

    @property
    def step_state(self):
        """This wrapper's ``safegrad.StepState`` (counters, last and summed global norms) in the
        current graph, or eagerly."""
        return step_state(self)
