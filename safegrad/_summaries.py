"""``safegrad.add_summaries``: TensorBoard scalars of every step, TF1 graphs and TF2 alike.

In a graph the summaries are built from the step's own outputs (``step_outputs``: this step's
values, computed before the apply/skip decision) and listed in ``GraphKeys.SUMMARIES``, so
``tf.compat.v1.summary.merge_all()`` merges them with the user's. In TF2 they are written to the
default writer from the ``StepState`` (which holds the step's values once it returned).
"""

from safegrad._state import StepOutputs, step_outputs, step_state
from safegrad._tf import building_v1_graph, tf, tf1

SCALARS = ("global_norm", "clip_ratio", "skipped", "total_skips")


def add_summaries(step, step_number=None, family="safegrad"):
    """Scalar summaries of safegrad's per-step statistics for TensorBoard.

    Four scalars, under ``family/``: ``global_norm`` (of the raw gradients, before clipping),
    ``clip_ratio`` (``min(1, clip_norm / global_norm)``, the scale the global-norm bound applied),
    ``skipped`` (1 for a skipped step) and ``total_skips``.

    * TF1 graph: pass the train op. Summary ops are built from THIS step's outputs and added to
      ``GraphKeys.SUMMARIES`` (``tf.compat.v1.summary.merge_all()`` includes them); run them in
      the same ``sess.run`` as the train op. They do not apply the step: run alone (e.g. on
      evaluation data) they recompute the gradients and change nothing.
    * TF2 (eager, ``tf.function``): pass the optimizer (or ``SafeOptimizer``) after the step; the
      scalars are written to the default summary writer (``writer.as_default()``), at
      ``step_number`` (default: ``tf.summary.experimental.get_step()``, else the step's number
      as safegrad's log gives it: the steps taken before it, from 0).

    Args:
      step: a graph train op from safegrad, or (TF2) the optimizer of the safe step.
      step_number: TF2 only: the summary step (an int or int64 tensor).
      family: the name scope of the summaries.

    Returns:
      TF1: the merged summary op of the four scalars (also in ``GraphKeys.SUMMARIES``). TF2: a
      bool tensor, True if a default writer wrote them.

    Raises:
      TypeError: for a graph op safegrad did not build, ``step_number`` in a graph, or a train op
        outside a graph.
      ValueError: for an empty ``family``.

    Example:
      >>> train_op = safegrad.clip_and_apply(opt, loss, clip_norm=5.0, on_nonfinite="skip")
      >>> safegrad.add_summaries(train_op)
      >>> merged = tf.compat.v1.summary.merge_all()
      >>> _, summary = sess.run([train_op, merged], feed_dict=feed)
      >>> writer.add_summary(summary, step)
    """
    if not isinstance(family, str) or not family:
        raise ValueError("`family` must be a non-empty string. Received: family={!r}".format(family))
    if isinstance(step, tf1.Operation):
        if step_number is not None:
            raise TypeError(
                "`step_number` is for TF2 summaries; in a graph pass the step to "
                "FileWriter.add_summary(summary, step). Received: step_number={!r}".format(step_number)
            )
        outputs = step_outputs(step)
        with tf1.name_scope(family + "/"):
            ops = [tf1.summary.scalar(name, tf.cast(getattr(outputs, name), tf.float32)) for name in SCALARS]
        return tf1.summary.merge(ops, collections=[])
    if building_v1_graph():
        raise TypeError(
            "In a tf.compat.v1 graph, `step` must be the train op a safegrad step returned. "
            "Received: step={!r}".format(step)
        )
    state = step_state(step)
    if step_number is None:
        step_number = tf.summary.experimental.get_step()
        if step_number is None:
            step_number = state.steps - 1  # the step just taken, numbered from 0 as in the log
    values = StepOutputs(
        global_norm=state.global_norm, applied=None, clipped=None, skipped=state.skipped,
        clip_ratio=state.clip_ratio, total_skips=state.total_skips,
    )
    written = []
    for name in SCALARS:
        # (tag "family/name": a name scope would be uniquified inside a tf.function, "safegrad_1")
        value = tf.cast(tf.convert_to_tensor(getattr(values, name)), tf.float32)
        written.append(tf.summary.scalar("{}/{}".format(family, name), value, step=step_number))
    return tf.reduce_all(tf.stack([tf.convert_to_tensor(w) for w in written]))
