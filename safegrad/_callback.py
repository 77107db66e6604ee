"""``safegrad.StepStatsCallback``: safegrad's statistics per epoch (or batch) in Keras ``fit`` logs.

Built on the installed Keras's ``Callback`` on first access (``safegrad.StepStatsCallback`` is a
lazy module attribute), so that ``import safegrad`` never imports Keras.
"""

import math

from safegrad import _keras_compat
from safegrad._log import logger
from safegrad._state import step_state
from safegrad._wrapping import is_wrapper


def step_stats_callback_class():
    """``safegrad.StepStatsCallback``, built on the installed Keras's Callback on first use."""
    return _keras_compat.callback_class(_make_callback_class)


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

        With ``per_batch=True`` it also adds, at the end of each batch, that step's
        ``safegrad_global_norm``, ``safegrad_clip_ratio``, ``safegrad_skipped`` (0/1) and
        ``safegrad_total_skips`` to the batch logs (the progress bar shows them; ``TensorBoard``
        with ``update_freq="batch"`` or an integer writes them). This reads the counters once per
        batch (a device-to-host copy of a few scalars).

        A loss shown as ``nan`` for an epoch whose non-finite steps were skipped: Keras averages
        every batch's loss, the skipped ones' too, while those steps changed nothing. This
        callback puts ``safegrad_skipped_steps`` next to it (progress bar and History) and logs,
        on the ``safegrad`` logger, how many steps of the epoch were skipped.

        Args:
          optimizer: the safegrad-wrapped optimizer (or an optimizer driven by
            ``clip_and_apply``); default: ``model.optimizer``.
          per_batch: also report each batch (see above).

        Example:
          >>> model.compile(optimizer=safegrad.SafeOptimizer(tf.keras.optimizers.Adam(), clip_norm=1.0,
          ...                                                on_nonfinite="skip"), loss="mse")
          >>> history = model.fit(x, y, callbacks=[safegrad.StepStatsCallback(),
          ...                                      tf.keras.callbacks.TensorBoard("logs")])
          >>> history.history["safegrad_skipped_steps"]
        """

        def __init__(self, optimizer=None, per_batch=False):
            super().__init__()
            if not isinstance(per_batch, bool):
                raise TypeError("`per_batch` must be a bool. Received: per_batch={!r}".format(per_batch))
            self._stats_optimizer = optimizer
            self._per_batch = per_batch
            self._start = None
            # Keras 2 hands callbacks that do not "support TF logs" a converted COPY of the logs
            # (made at the first such callback); TensorBoard gets the original. Taking the original
            # and adding plain Python numbers to it reaches both History and TensorBoard.
            self._supports_tf_logs = True

        def _state(self):
            optimizer = self._stats_optimizer
            if optimizer is None:
                optimizer = getattr(self.model, "optimizer", None)
                if not is_wrapper(optimizer):
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
            if skipped:
                loss = (logs or {}).get("loss")
                logger.warning(
                    "safegrad: epoch %d: %d of %d steps were skipped (non-finite gradients; they changed "
                    "nothing)%s", epoch + 1, skipped, steps,
                    "; the epoch's loss ({}) averages their losses too".format(loss)
                    if loss is not None and not math.isfinite(float(loss)) else "",
                )

        def on_train_batch_end(self, batch, logs=None):
            if not self._per_batch or logs is None:
                return
            state = self._state()
            logs.update({
                "safegrad_global_norm": float(state.global_norm.numpy()),
                "safegrad_clip_ratio": float(state.clip_ratio.numpy()),
                "safegrad_skipped": int(bool(state.skipped.numpy())),
                "safegrad_total_skips": int(state.total_skips.numpy()),
            })

    StepStatsCallback.__module__ = "safegrad"
    return StepStatsCallback
