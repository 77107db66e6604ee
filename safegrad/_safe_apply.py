"""The shared engine of every safe step: check (raw) -> clip -> apply or skip, given gradients.

``apply_gradients_safely`` is the same code whatever produced the gradients (a TF1 Session
graph, a TF2 graph, ``tf.function``, eager) and whatever applies them: it asks the optimizer's
adapter (``_adapters``) for everything that differs between optimizer APIs. The apply/skip
decision is a single ``tf.cond`` on one scalar - under tf.distribute taken once, in
cross-replica context (``_distribute``). ``clip_and_apply``, ``apply_gradients`` and every
``SafeOptimizer`` call it.
"""

from safegrad import _distribute, _validate
from safegrad._check import check_no_xla, fail_unless, failure_message
from safegrad._clip import clip_for_policy
from safegrad._compat import do_not_convert, graph_cond, in_xla_context
from safegrad._log import log_skipped_step
from safegrad._norm import dense_equivalent_values, inspect_gradients
from safegrad._replay import is_replaying, note_replayed_step
from safegrad._state import StepOutputs, record_step_outputs, step_state
from safegrad._structure import GradientList
from safegrad._tf import building_v1_graph, current_name_scope, tf, tf1
from safegrad._variables import is_trainable_dtype, variable_name


def _decide(pred, apply_fn, skip_fn):
    """``apply_fn()`` if ``pred`` else ``skip_fn()``: in a Session graph a ``graph_cond`` (built for
    the cost of the update itself, and taking ref variables), else ``tf.cond``.

    In a ``tf.function`` the ``tf.cond`` is lowered to Switch/Merge, as TensorFlow does by
    default. Kept as an ``If`` call instead (``_compat.lazy_cond``'s choice for the diagnosis
    branch), the untaken skip branch costs nothing, but the update runs in a called function:
    in one process with 16 builds of each (TF 2.21, 2 CPUs), the MLP step of ``bench_models``
    took 1.068 x the hand-clipped step instead of 1.023, the hand-written skip (HS) 1.040 instead
    of 1.000; only on its 8-4-4-2 version (FIX), with next to no arithmetic, was the skip step
    faster (by 23 us)."""
    cond = graph_cond if building_v1_graph() else tf.cond
    return cond(pred, apply_fn, skip_fn)


def _no_gradients_error(form):
    names = [variable_name(v) for v in form.variables]
    if not any(is_trainable_dtype(v) for v in form.variables):
        return ValueError(
            "No gradients provided for any variable: {}. None of them has a floating-point dtype, "
            "so none can be trained.".format(names)
        )
    return ValueError(
        "No gradients provided for any variable: {}. Check that the loss depends on these "
        "variables through differentiable ops.".format(names)
    )


EXPLAIN_HINT = (
    ". To find the op that produced it, replay the step with safegrad.explain(step_fn, *args) "
    "(tf.function, eager, Keras) or safegrad.explain_session(sess, train_op, feed_dict) (Session); "
    "or skip such steps (on_nonfinite='skip') and let safegrad.ExplainCallback() (Keras fit) or "
    "safegrad.ExplainHook(train_op) (MonitoredTrainingSession) explain the first one."
)


def _where(step):
    """The end of an error message: the step number and how to find the cause."""
    if step is None:
        return tf.constant(EXPLAIN_HINT)
    return tf.strings.join(["; at safegrad step ", tf.strings.as_string(step), EXPLAIN_HINT])


def _raise_message(report, step):
    """The error of a raise-mode step: the non-finite gradients, the step number, how to explain."""
    return failure_message(report, suffix=_where(step))


@do_not_convert
def apply_gradients_safely(
    adapter, grads_and_vars, policy, global_step=None, name=None, state_owner=None, aggregated=False,
    name_scope=None, gradients_scaled=None, loss=None,
):
    """Check, clip and apply already-computed (gradient, variable) pairs under ``policy``.

    Args:
      adapter: the ``OptimizerAdapter`` of the optimizer that applies the update.
      grads_and_vars: (gradient, variable) pairs; None gradients are left out.
      policy: the ``StepPolicy``.
      global_step: optional integer variable advanced once per applied update.
      name: optional name of the update ops.
      state_owner: the object whose ``StepState`` is updated: the optimizer (default), or the
        ``SafeOptimizer`` wrapping it.
      aggregated: the gradients are already summed across replicas; nobody may sum them again.
      name_scope: the caller's name scope, where the optimizer's own variables are created (as
        without safegrad); default: the current one.
      gradients_scaled: with a loss-scale optimizer, whether the gradients are still multiplied
        by the loss scale; default: what its own ``apply_gradients`` takes (``_loss_scale``).
      loss: the loss tensor the gradients came from, if known (a graph step lists it, for
        ``explain_session`` to recompute the whole forward pass).

    Returns:
      What ``clip_and_apply`` returns.
    """
    form = GradientList.parse(grads_and_vars, "grads_and_vars")
    if form.variables is None:
        raise TypeError(
            "`grads_and_vars` must be a list of (gradient, variable) pairs. Received: "
            "grads_and_vars={!r}".format(grads_and_vars)
        )
    _validate.distinct_variables(form.variables, "grads_and_vars")
    present = form.present
    if not present:
        raise _no_gradients_error(form)
    if policy.on_nonfinite == "raise":
        check_no_xla("on_nonfinite='raise'")
    if policy.max_consecutive_skips is not None:
        check_no_xla("max_consecutive_skips")
    if name_scope is None:
        name_scope = current_name_scope()
    train_ops_before = list(tf1.get_collection(tf1.GraphKeys.TRAIN_OP)) if building_v1_graph() else None
    gradients = [form.gradients[i] for i in present]
    variables = [form.variables[i] for i in present]
    state = step_state(state_owner if state_owner is not None else adapter.optimizer)
    # Under XLA (skip/ignore only) there are no string ops: the report naming variables is not
    # built, since nothing would show it.
    checking = policy.on_nonfinite != "ignore" and not in_xla_context()

    # Under tf.distribute (inside strategy.run) everything below works on the SUM over replicas:
    # every replica then holds the same gradients, computes the same norm and takes the same
    # decision, and applies what one device with the global batch would.
    replica = _distribute.replica_context()
    if replica is not None and not aggregated:
        gradients = _distribute.all_reduce_sum(replica, gradients)
        aggregated = True
    # A loss-scale optimizer: everything below works on the unscaled gradients.
    scaling = adapter.loss_scaling()
    if scaling is not None:
        if replica is not None:
            raise ValueError(
                "safegrad does not support a loss-scale optimizer under tf.distribute yet: "
                "{} inside strategy.run. Use it on one device, or without loss scaling.".format(adapter.api)
            )
        if scaling.receives_scaled if gradients_scaled is None else gradients_scaled:
            gradients = scaling.unscale(gradients)

    values = [dense_equivalent_values(g, policy.tf_compatible_norm) for g in gradients]
    raw = inspect_gradients(
        values,
        names=form.names(present) if checking else None,
        per_gradient=policy.per_variable_clip_norm is not None and policy.clip_value is None,
        per_gradient_bound=policy.per_variable_clip_norm,
        # (the step's number: the steps taken before it, from 0, like a global_step)
        step_number=(lambda: tf.identity(state.steps)) if checking else None,
        # (raise mode: the error message is built only on the diagnosis path, not every step)
        describe=_raise_message if checking and policy.on_nonfinite == "raise" else None,
    )
    if is_replaying():
        # safegrad.explain replays a failing step to find where its NaN was born: everything up
        # to the decision ran; nothing is applied or counted.
        return note_replayed_step(raw.all_finite, raw.global_norm, raw.report)
    # (Folding the scale into the learning rate rounds differently from scaling the gradients.)
    fold = policy.clip_norm is not None and adapter.can_fold_clip_scale() and not policy.tf_compatible_norm
    clipped, was_clipped, scale, clip_ratio = clip_for_policy(gradients, values, raw, policy, fold_global_scale=fold)
    if replica is not None and adapter.sums_replicas_itself:
        # The optimizer sums the replicas' gradients again, whatever it is given: replica 0 gives
        # the (already summed) gradients, the others zeros, so the sum is exact.
        clipped = [_distribute.first_replica_only(replica, g) for g in clipped]

    def apply_update(grads, global_norm, clipped_flag, folded_scale):
        target = adapter.with_clip_scale_folded(folded_scale) if fold else adapter
        deps = target.apply(zip(grads, variables), global_step, name, aggregated=aggregated)
        # The statistics need only the norm: recorded beside the update, not after it, so they
        # stay off the step's critical path (raise mode: both wait for the check).
        recorded = state.record_applied(
            global_norm, clipped_flag, reset_streak=policy.on_nonfinite == "skip", clip_ratio=clip_ratio
        )
        with tf.control_dependencies(deps + recorded):
            return tf.identity(tf.constant(True))

    def skip_update(global_norm, report, overflow=None, number=None):
        checks = []
        if policy.max_consecutive_skips is not None:
            limit = policy.max_consecutive_skips
            streak = state.consecutive_skips + 1
            suffix = tf.strings.join(
                [
                    "; ",
                    tf.strings.as_string(streak),
                    " non-finite steps in a row, more than max_consecutive_skips={}".format(limit),
                ]
            )
            check = fail_unless(
                streak <= limit, failure_message(report, suffix=tf.strings.join([suffix, _where(number)]))
            )
            checks = [check] if check is not None else []
        with tf.control_dependencies(checks):
            # (logged before the counters move: the step number is read from them)
            logged = log_skipped_step(number, global_norm, report, overflow) if number is not None else []
        # (In a graph, after this step's total_skips output read the counter: see below.)
        with tf.control_dependencies(checks + logged + skips_before):
            recorded = state.record_skipped(global_norm, overflow)
        with tf.control_dependencies(checks + recorded):
            return tf.identity(tf.constant(False))

    # A graph step's outputs hold THIS step's values when fetched with the train op: the skip
    # counter is read before the skip branch moves it.
    skips_before = [tf.identity(state.total_skips)] if building_v1_graph() else []
    # Every optimizer variable must exist before the cond (none may be born in a branch), with
    # the names it has without safegrad.
    adapter.prepare(form.rebuild(form.gradients), name_scope)
    step = (clipped, raw.global_norm, was_clipped, scale)
    # With a loss-scale optimizer, an overflow that lowering the scale can still fix is routine:
    # skipped (and counted), never raised; only a non-finite step at the scale's floor is not.
    fixable = None if scaling is None else tf.logical_and(tf.logical_not(raw.all_finite), scaling.can_lower())
    if policy.on_nonfinite == "ignore":
        applied = apply_update(*step)
    elif policy.on_nonfinite == "raise":
        # Every replica evaluates the same assertion on the same summed gradients: all fail
        # together, before any update (no decision to share, no cond around merge_call).
        ok = raw.all_finite if fixable is None else tf.logical_or(raw.all_finite, fixable)
        check = fail_unless(ok, raw.message)
        with tf.control_dependencies([check] if check is not None else []):
            if scaling is None:
                applied = apply_update(*step)
            else:
                applied = _decide(
                    raw.all_finite,
                    lambda: apply_update(*step),
                    lambda: skip_update(raw.global_norm, raw.report, fixable, raw.step),
                )
    else:
        if replica is None:
            applied = _decide(
                raw.all_finite,
                lambda: apply_update(*step),
                lambda: skip_update(raw.global_norm, raw.report, fixable, raw.step),
            )
        else:
            # Optimizers update mirrored variables through merge_call, which TF forbids inside a
            # cond in replica context: the one decision is taken in cross-replica context.
            applied = _distribute.decide_across_replicas(
                replica, raw.all_finite, apply_update, step, skip_update,
                (raw.global_norm, raw.report, None, raw.step),
            )

    if scaling is not None:
        # The scale's own schedule (lowered on overflow, raised after its growth steps), after
        # the step read the scale to unscale the gradients.
        with tf.control_dependencies([applied]):
            updates = scaling.update(gradients, raw.all_finite)
        with tf.control_dependencies(updates):
            applied = tf.identity(applied)
    if not building_v1_graph():
        return applied
    train_op = tf.group(applied, name=name or "safegrad_step")
    can_skip = policy.on_nonfinite == "skip" or scaling is not None
    skipped = tf.logical_not(raw.all_finite) if can_skip else tf.constant(False)
    outputs = StepOutputs(
        global_norm=raw.global_norm,
        applied=applied,
        clipped=tf.logical_and(applied, was_clipped),
        skipped=skipped,
        clip_ratio=tf.identity(clip_ratio) if clip_ratio is not None else tf.constant(1.0),
        total_skips=skips_before[0] + tf.cast(skipped, tf.int64),
    )
    record_step_outputs(train_op, outputs, raw.report, loss)
    # The op to run is this one, not the optimizer's own update inside the cond (which
    # `apply_gradients` listed and which cannot be fetched): code that takes its train op from
    # the collection (e.g. after import_meta_graph) runs the whole safe step.
    tf1.get_collection_ref(tf1.GraphKeys.TRAIN_OP)[:] = train_ops_before + [train_op]
    return train_op
