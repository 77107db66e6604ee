"""``safegrad.ExplainHook``: a ``MonitoredTrainingSession`` explains its first skipped step.

Built on TensorFlow's ``SessionRunHook`` on first access (a lazy attribute of ``safegrad``, like
the Keras callbacks); the replay itself is ``explain_session``.
"""

from safegrad._explain_session import explain_session, in_graph_batch
from safegrad._log import log_report
from safegrad._state import step_outputs, step_report
from safegrad._tf import tf, tf1


def explain_hook_class():
    """``safegrad.ExplainHook``, a ``tf.compat.v1.train.SessionRunHook`` (built on first use)."""
    if not _HOOK:
        _HOOK.append(_make_hook_class(tf1.train.SessionRunHook))
    return _HOOK[0]


_HOOK = []


def _make_hook_class(base):
    class ExplainHook(base):
        """Explains the first skipped step of a ``MonitoredTrainingSession`` automatically.

        After each run it looks at the safegrad step's ``applied`` output; the first time a step
        was skipped it replays that step (same feed, without its update) with
        ``safegrad.explain_session``, logs the report on the ``safegrad`` logger (WARNING) and
        keeps it in ``report``. Later skips are only logged by the step itself. A raising step
        stops the run before any hook sees its end: catch the error and call
        ``hook.explain_last_step()``, which replays the last training run's feed in the
        session the hook was given (a step fed by placeholders; a batch read inside the graph
        cannot be recovered from a run that raised).

        A batch read inside the graph (a ``tf.data`` iterator, a queue) is fetched with every
        training run until the first report (a host copy of the batch), so that the replay
        explains that batch and does not read, and use up, the next one.

        Args:
          train_op: the op returned by ``clip_and_apply`` / ``SafeOptimizer.minimize``.
          every_skip: explain every skipped step, not only the first (slow on each).

        Example:
          >>> hook = safegrad.ExplainHook(train_op)
          >>> with tf.compat.v1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
          ...   while not sess.should_stop():
          ...     sess.run(train_op, feed_dict=next_feed())
          >>> print(hook.report)

          In raise mode:
          >>> try:
          ...   sess.run(train_op, feed_dict=feed)
          ... except tf.errors.InvalidArgumentError:
          ...   print(hook.explain_last_step())
          ...   raise
        """

        def __init__(self, train_op, every_skip=False):
            super().__init__()
            outputs = step_outputs(train_op)
            self._applied = outputs.applied
            self._train_op = train_op
            # A batch read inside the graph (tf.data iterator, queue) is fetched with each
            # training run until a report is made, and fed back to replay THAT batch.
            behind = [outputs.global_norm] + [t for t in step_report(train_op)[1:] if t is not None]
            self._batch = [t for op in in_graph_batch(behind) for t in op.outputs]
            self._every_skip = bool(every_skip)
            self.report = None
            self.reports = []
            self._session = None
            self._last_feed = None
            self._trained = False

        def after_create_session(self, session, coord):
            self._session = session

        def before_run(self, run_context):
            fetches = tf.nest.flatten(run_context.original_args.fetches)
            if not any(f is self._train_op for f in fetches):
                return None  # not a training run (fetching `applied` would train)
            self._last_feed = run_context.original_args.feed_dict
            self._trained = True
            if self.reports and not self._every_skip:
                return None
            return tf1.train.SessionRunArgs({"applied": self._applied, "batch": self._batch})

        def explain_last_step(self):
            """The ``NonFiniteReport`` of the last training run (e.g. one that raised), replayed
            with its feed and without its update; None if it produces no NaN/Inf.

            Raises:
              RuntimeError: before the session was created or any training step ran.
            """
            if self._session is None or not self._trained:
                raise RuntimeError(
                    "ExplainHook.explain_last_step: no training step ran yet in a session this hook "
                    "was given (pass the hook to MonitoredTrainingSession(hooks=[...]))."
                )
            report = explain_session(self._session, self._train_op, self._last_feed)
            if report is not None:
                self.reports.append(report)
                self.report = self.reports[0]
            return report

        def after_run(self, run_context, run_values):
            if run_values.results is None or bool(run_values.results["applied"]):
                return
            feed = dict(run_context.original_args.feed_dict or {})
            feed.update(zip(self._batch, run_values.results["batch"]))
            report = explain_session(run_context.session, self._train_op, feed)
            self.reports.append(report)
            self.report = self.reports[0]
            log_report(report, "step")

    ExplainHook.__module__ = "safegrad"
    return ExplainHook
