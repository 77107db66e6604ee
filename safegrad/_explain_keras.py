"""``safegrad.ExplainCallback``: Keras ``fit`` explains its first skipped batch by itself.

During ``fit`` the callback wraps the model's ``train_step``: after each step, a ``tf.cond`` on
the safe optimizer's ``skipped`` flag copies the batch to Python only when the step was skipped
(healthy steps run one cond and copy nothing). Before the next batch (or at the end of the epoch)
the callback replays it with ``safegrad.explain`` and logs the report: the skipped step changed no
weight, so the replay sees the weights the step saw. It implements no batch-END hook and takes
its logs as tensors (``_supports_tf_logs``): Keras 2 would otherwise convert every step's logs to
Python numbers (waiting for the step), and Keras 3 dispatches batch-end callbacks asynchronously
only when none implements that hook (where its backend allows). Built on the installed Keras's
``Callback`` on first access, so that ``import safegrad`` never imports Keras.
"""

import numpy as np

from safegrad import _keras_compat
from safegrad._compat import in_xla_context
from safegrad._explain_eager import explain
from safegrad._log import log_report
from safegrad._state import step_state
from safegrad._tf import tf, tf1
from safegrad._wrapping import is_wrapper


def explain_callback_class():
    """``safegrad.ExplainCallback``, built on the installed Keras's Callback on first use."""
    return _keras_compat.callback_class(_make_callback_class)


def _metric_variables(model):
    variables = []
    for metric in getattr(model, "metrics", []) or []:
        variables += list(getattr(metric, "variables", []) or [])
    return variables


def _compiled_with(model):
    """What the model's train function is built from; ``compile`` replaces some of them.

    Instance attributes only (Keras 3: ``_compile_loss``...; Keras 2: ``compiled_loss``...):
    properties and methods would give a new object on each read."""
    names = ("optimizer", "_compile_loss", "compiled_loss", "_compile_metrics", "compiled_metrics",
             "_steps_per_execution", "steps_per_execution", "_jit_compile", "jit_compile", "_run_eagerly")
    return [vars(model).get(name) for name in names]


def _same(a, b):
    return len(a) == len(b) and all(x is y or (isinstance(x, (bool, int)) and x == y) for x, y in zip(a, b))


def _make_callback_class(base):
    class ExplainCallback(base):
        """Explains the first skipped step of Keras ``fit``: which op made the NaN, and where.

        The model must be compiled with a ``safegrad.SafeOptimizer`` (``on_nonfinite="skip"``).
        The first time a step is skipped, the batch is replayed with ``safegrad.explain``
        (without applying anything; the epoch's metrics are restored after the replay), the
        report is logged on the ``safegrad`` logger (WARNING) and kept in ``report``.

        Healthy steps pay one ``tf.cond`` on a flag; the batch is copied to Python only on a
        skipped step. The wrapped train function is traced once and reused by later ``fit``
        calls until the model is compiled again. Not under XLA (``jit_compile=True``): Python
        cannot run there.

        Args:
          every_skip: explain every skipped batch, not only the first (slow on each).

        Example:
          >>> callback = safegrad.ExplainCallback()
          >>> model.fit(x, y, callbacks=[callback])
          >>> print(callback.report)
        """

        def __init__(self, every_skip=False):
            super().__init__()
            self._supports_tf_logs = True  # Keras 2: its logs need not become numbers each batch
            self._every_skip = bool(every_skip)
            self._batches = []
            self._structure = None
            self._original = None
            self._restore = None
            self._wrapped = None  # (model, compiled with, its train_step, wrapper, train_function)
            self.report = None
            self.reports = []

        def on_train_begin(self, logs=None):
            model = self.model
            optimizer = getattr(model, "optimizer", None)
            if not is_wrapper(optimizer):
                raise ValueError(
                    "ExplainCallback explains the steps a safegrad.SafeOptimizer skipped, but the "
                    "model's optimizer is {!r}. Compile with optimizer=safegrad.SafeOptimizer(..., "
                    "on_nonfinite='skip').".format(optimizer)
                )
            self._restore = model.train_function
            compiled = _compiled_with(model)
            cached = self._wrapped
            if cached is not None and cached[0] is model and _same(cached[1], compiled):
                # The same model and compilation as in the last fit: its wrapped train function
                # is reused (built and traced again, it would cost each fit call a retrace).
                self._original = cached[2]
                model.train_step, model.train_function = cached[3], cached[4]
                return
            state = step_state(optimizer)
            original = self._original = model.train_step
            batches, callback = self._batches, self

            def keep(*arrays):
                if callback._every_skip or not (batches or callback.reports):
                    batches.append(arrays)
                return np.int64(0)

            def train_step(data):
                logs = original(data)
                flat = tf.nest.flatten(data)
                if not all(isinstance(t, tf.Tensor) for t in flat):
                    raise ValueError(
                        "ExplainCallback copies skipped batches of dense tensors; this batch has {}. "
                        "Remove the callback, or call safegrad.explain(model.train_step, batch) "
                        "yourself.".format([type(t).__name__ for t in flat])
                    )
                if in_xla_context():
                    raise ValueError(
                        "ExplainCallback cannot run under XLA (Python cannot be called there): "
                        "compile with jit_compile=False."
                    )
                callback._structure = data

                def copy_batch():
                    with tf.control_dependencies([tf1.numpy_function(keep, flat, tf.int64)]):
                        return tf.constant(True)

                kept = tf.cond(state.skipped, copy_batch, lambda: tf.constant(False))
                with tf.control_dependencies([kept]):
                    return tf.nest.map_structure(tf.identity, logs)

            model.train_step = train_step  # an instance attribute: the class's method is untouched
            model.train_function = None  # rebuilt around the wrapper (make_train_function has no
            model.make_train_function()  # `force` argument on TF 2.4's Keras)
            self._wrapped = (model, compiled, original, train_step, model.train_function)

        def on_train_batch_begin(self, batch, logs=None):
            self._explain_kept_batches()

        def on_epoch_end(self, epoch, logs=None):
            self._explain_kept_batches()

        def _explain_kept_batches(self):
            """Replays the batches kept from skipped steps (before any later step changes weights)."""
            while self._batches:
                arrays = self._batches.pop(0)
                data = tf.nest.pack_sequence_as(self._structure, [tf.constant(a) for a in arrays])
                metrics = _metric_variables(self.model)
                saved = [v.numpy() for v in metrics]
                try:
                    report = explain(self._original, data)
                finally:
                    for variable, value in zip(metrics, saved):
                        variable.assign(value)
                self.reports.append(report)
                self.report = self.reports[0]
                log_report(report, "batch")

        def on_train_end(self, logs=None):
            self._explain_kept_batches()  # (fit stopped early: nothing kept is left unexplained)
            if self._original is not None:
                self.model.__dict__.pop("train_step", None)
                self.model.train_function = self._restore  # the model's own, as before the fit
                self._original = self._restore = None

    ExplainCallback.__module__ = "safegrad"
    return ExplainCallback
