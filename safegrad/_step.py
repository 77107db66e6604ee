"""One safe training step: obtain -> check (raw) -> clip (value, per-variable, global) -> apply.

The data flow is split so that every stage after "raw gradients" is the same code whatever
produced them (a TF1 Session graph, a TF2 graph, ``tf.function``, eager) and whatever applies them
(v1 optimizer, Keras 2, Keras 3); ``apply_gradients_safely`` is that shared part, also used by
``SafeOptimizer``. The apply/skip decision is a single ``tf.cond`` on one scalar, taken where the
optimizer's own update is issued, so it can later be moved to a cross-replica context unchanged.
"""

import collections

from safegrad import _compat, _validate
from safegrad._check import check_no_xla, fail_unless, failure_message
from safegrad._clip import clip_for_policy
from safegrad._compat import do_not_convert, tf
from safegrad._norm import dense_equivalent_values, inspect
from safegrad._state import step_state
from safegrad._structure import GradientList


class StepPolicy(
    collections.namedtuple(
        "StepPolicy",
        ["clip_norm", "per_variable_clip_norm", "clip_bounds", "on_nonfinite", "max_consecutive_skips"],
    )
):
    """The validated clipping and non-finite policy of a step."""

    @classmethod
    def create(
        cls,
        clip_norm=None,
        per_variable_clip_norm=None,
        clip_value=None,
        on_nonfinite="raise",
        max_consecutive_skips=None,
    ):
        policy = _validate.on_nonfinite(on_nonfinite)
        return cls(
            clip_norm=_validate.positive_scalar(clip_norm, "clip_norm"),
            per_variable_clip_norm=_validate.positive_scalar(
                per_variable_clip_norm, "per_variable_clip_norm"
            ),
            clip_bounds=_validate.clip_value_bounds(clip_value),
            on_nonfinite=policy,
            max_consecutive_skips=_validate.max_consecutive_skips(max_consecutive_skips, policy),
        )


def check_optimizer(optimizer, allowed=None):
    """The optimizer's family; TypeError naming `optimizer` if it is not a supported optimizer."""
    family = _compat.optimizer_family(optimizer)
    if family is None or (allowed is not None and family not in allowed):
        expected = (
            "a tf.compat.v1.train.Optimizer or a tf.keras optimizer"
            if allowed is None
            else " or ".join(allowed)
        )
        raise TypeError(
            "`optimizer` must be {}. Received: optimizer={!r} (of type {})".format(
                expected, optimizer, type(optimizer).__name__
            )
        )
    reason = _compat.graph_mode_unsupported(family)
    if reason is not None and _compat.outer_context_key() is not None:
        raise ValueError("`optimizer` is a {}: {}".format(family, reason))
    return family


def _check_loss(loss, tape):
    if callable(loss) and not isinstance(loss, (tf.Tensor, tf.Variable)):
        if tape is not None:
            raise ValueError(
                "`loss` is a callable, so safegrad records its own GradientTape; `tape` must be "
                "None. Pass the loss TENSOR computed under `tape` instead. Received: tape={!r}".format(
                    tape
                )
            )
        return
    if not isinstance(loss, (tf.Tensor, tf.Variable)):
        raise TypeError(
            "`loss` must be a scalar tensor or a zero-argument callable returning one. Received: "
            "loss={!r} (of type {})".format(loss, type(loss).__name__)
        )
    if tape is not None and not isinstance(tape, tf.GradientTape):
        raise TypeError(
            "`tape` must be the tf.GradientTape that recorded `loss`. Received: tape={!r} (of "
            "type {})".format(tape, type(tape).__name__)
        )
    if tape is None and _compat.executing_eagerly():
        raise ValueError(
            "`loss` is a tensor but TensorFlow is executing eagerly, where a tensor does not "
            "remember how it was computed. Pass tape=<the tf.GradientTape that recorded it>, or "
            "pass loss as a zero-argument callable. Received: loss={!r}, tape=None".format(loss)
        )


@do_not_convert
def clip_and_apply(
    optimizer,
    loss,
    var_list=None,
    *,
    tape=None,
    clip_norm=None,
    per_variable_clip_norm=None,
    clip_value=None,
    on_nonfinite="raise",
    max_consecutive_skips=None,
    global_step=None,
    name=None
):
    """One training step: gradients, a finite check, clipping, and the optimizer's update.

    Behaves the same in a TF1 ``tf.compat.v1.Session`` graph, a TF2 graph, ``tf.function`` and
    eagerly; with ``tf.compat.v1.train`` optimizers everywhere and, in TF2, with the ``tf.keras``
    optimizers of the installed Keras (2 or 3).

    The finite check looks at the RAW gradients, before any clipping (``clip_value`` would turn an
    Inf into a finite number). On the success path it costs one scalar test beyond the global
    norm; the per-variable diagnosis runs only on failure. Clipping then runs in the order
    value -> per-variable norm -> global norm. Variables whose gradient is None are left alone.

    Args:
      optimizer: a ``tf.compat.v1.train.Optimizer`` or a ``tf.keras`` optimizer (TF2).
      loss: a scalar loss tensor (in a graph, or with ``tape``), or a zero-argument callable that
        returns it (then safegrad records the tape; works in every mode).
      var_list: variables to train (list, or zero-argument callable returning one). Default: the
        trainable variables (the graph collection; eagerly, those the tape watched).
      tape: the ``tf.GradientTape`` that recorded a loss tensor (TF2 eager / ``tf.function``).
      clip_norm: optional bound on the global norm of all gradients.
      per_variable_clip_norm: optional bound on the norm of each gradient.
      clip_value: optional elementwise bound: ``c`` for [-c, c], or a ``(min, max)`` pair.
      on_nonfinite: what a NaN/Inf gradient does:
        ``"raise"`` - the step fails with ``tf.errors.InvalidArgumentError`` naming every
        offending variable, and changes nothing (no variable, slot, accumulator, global_step);
        ``"skip"`` - the step is skipped, leaving all of those bit-for-bit unchanged, and counted
        in ``safegrad.step_state(optimizer)``; training continues;
        ``"ignore"`` - no check, clipping only.
      max_consecutive_skips: with ``"skip"``, raise (as ``"raise"``) on the N+1-th non-finite
        step in a row; a finite step resets the streak. None: never.
      global_step: optional integer variable advanced by one for each APPLIED update.
      name: optional name for the ops (and of the returned op in a graph).

    Returns:
      In a graph: the train op; ``sess.run`` it to take the step (drop-in for
      ``optimizer.minimize(loss)``). Eagerly or in ``tf.function``: a bool scalar tensor, True
      when the update was applied, False when it was skipped.

    Raises:
      ValueError / TypeError: at call time, for invalid arguments (each names the argument and
        echoes the value), an unsupported optimizer, a tensor ``loss`` in eager mode without
        ``tape``, or when every gradient is None ("No gradients provided for any variable").
      tf.errors.InvalidArgumentError: when a step has non-finite gradients and the policy says
        raise.

    Example (TF1 Session):
      >>> train_op = safegrad.clip_and_apply(
      ...     tf.compat.v1.train.AdamOptimizer(1e-3), loss, clip_norm=1.0, on_nonfinite="skip")
      >>> sess.run(train_op)

    Example (TF2):
      >>> @tf.function
      ... def train_step(x, y):
      ...   return safegrad.clip_and_apply(
      ...       optimizer, lambda: loss_fn(model(x), y), model.trainable_variables, clip_norm=1.0)
    """
    policy = StepPolicy.create(
        clip_norm=clip_norm,
        per_variable_clip_norm=per_variable_clip_norm,
        clip_value=clip_value,
        on_nonfinite=on_nonfinite,
        max_consecutive_skips=max_consecutive_skips,
    )
    _reject_wrapped(optimizer)
    family = check_optimizer(optimizer)
    _check_loss(loss, tape)
    var_list = _validate.var_list(var_list)
    global_step = _validate.global_step(global_step)
    name = _validate.name(name)
    with tf.name_scope(name or "safegrad"):
        grads_and_vars = _compat.compute_gradients(optimizer, family, loss, var_list, tape)
        return apply_gradients_safely(
            optimizer, family, grads_and_vars, policy, global_step=global_step, name=name
        )


def _reject_wrapped(optimizer):
    if getattr(type(optimizer), "_safegrad_wrapper", False):  # a SafeOptimizer
        raise TypeError(
            "`optimizer` is already a safegrad.SafeOptimizer, which checks and clips by itself; "
            "call its minimize()/apply_gradients(), or pass the wrapped optimizer "
            "(`.optimizer`) to clip_and_apply. Received: optimizer={!r}".format(optimizer)
        )


def _no_gradients_error(form):
    names = [_compat.variable_name(v) for v in form.variables]
    return ValueError(
        "No gradients provided for any variable: {}. Check that the loss depends on these "
        "variables through differentiable ops.".format(names)
    )


@do_not_convert
def apply_gradients_safely(
    optimizer, family, grads_and_vars, policy, global_step=None, name=None, state_owner=None,
    aggregated=False,
):
    """Check, clip and apply already-computed (gradient, variable) pairs under ``policy``.

    Returns what ``clip_and_apply`` returns. ``state_owner`` is the object whose ``StepState`` is
    updated (the optimizer itself, or the ``SafeOptimizer`` wrapping it). ``aggregated``: the
    gradients are already summed across replicas; the optimizer must not sum them again.
    """
    form = GradientList.parse(grads_and_vars, "grads_and_vars")
    if form.variables is None:
        raise TypeError(
            "`grads_and_vars` must be a list of (gradient, variable) pairs. Received: "
            "grads_and_vars={!r}".format(grads_and_vars)
        )
    present = form.present
    if not present:
        raise _no_gradients_error(form)
    gradients = [form.gradients[i] for i in present]
    variables = [form.variables[i] for i in present]
    state = step_state(state_owner if state_owner is not None else optimizer)
    if policy.on_nonfinite == "raise":
        check_no_xla("on_nonfinite='raise'")
    if policy.max_consecutive_skips is not None:
        check_no_xla("max_consecutive_skips")
    # Under XLA (skip/ignore only) there are no string ops: the report naming variables is not
    # built, since nothing would show it.
    checking = policy.on_nonfinite != "ignore" and not _compat.in_xla_context()

    # Under tf.distribute (inside strategy.run) everything below works on the SUM over replicas:
    # every replica then holds the same gradients, computes the same norm and takes the same
    # decision, and applies what one device with the global batch would.
    replica = _compat.replica_context()
    if replica is not None and not aggregated:
        gradients = _compat.all_reduce_sum(replica, gradients)
        aggregated = True

    values = [dense_equivalent_values(g) for g in gradients]
    raw = inspect(
        values,
        names=form.names(present) if checking else None,
        per_gradient=policy.per_variable_clip_norm is not None and policy.clip_bounds is None,
    )
    fold = policy.clip_norm is not None and _compat.can_fold_scale(optimizer)
    clipped, was_clipped, scale = clip_for_policy(gradients, values, raw, policy, fold_global_scale=fold)
    if replica is not None and _compat.sums_replicas_itself(family):
        # v1 and Keras 3 optimizers sum the replicas' gradients again, whatever they are given:
        # replica 0 gives the (already summed) gradients, the others zeros, so the sum is exact.
        clipped = [_compat.first_replica_only(replica, g) for g in clipped]

    def apply_update(grads, global_norm, clipped_flag, folded_scale):
        target = _compat.scaled_gradient_descent(optimizer, folded_scale) if fold else optimizer
        deps = _compat.apply_gradients(
            target, family, zip(grads, variables), global_step, name, aggregated=aggregated
        )
        # The statistics need only the norm: recorded beside the update, not after it, so they
        # stay off the step's critical path (raise mode: both wait for the check).
        recorded = state.record_applied(
            global_norm, clipped_flag, reset_streak=policy.on_nonfinite == "skip"
        )
        with tf.control_dependencies(deps + recorded):
            return tf.identity(tf.constant(True))

    def skip_update(global_norm, report):
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
            check = fail_unless(streak <= limit, failure_message(report, suffix=suffix))
            checks = [check] if check is not None else []
        with tf.control_dependencies(checks):
            recorded = state.record_skipped(global_norm)
        with tf.control_dependencies(checks + recorded):
            return tf.identity(tf.constant(False))

    step = (clipped, raw.global_norm, was_clipped, scale)
    if policy.on_nonfinite == "ignore":
        applied = apply_update(*step)
    elif policy.on_nonfinite == "raise":
        # Every replica evaluates the same assertion on the same summed gradients: all fail
        # together, before any update (no decision to share, no cond around merge_call).
        check = fail_unless(raw.all_finite, failure_message(raw.report))
        with tf.control_dependencies([check] if check is not None else []):
            applied = apply_update(*step)
    else:
        # Every optimizer variable must exist before the cond: none may be born in a branch.
        _compat.prepare_optimizer(optimizer, family, list(form.variables))
        if replica is None:
            applied = tf.cond(
                raw.all_finite,
                lambda: apply_update(*step),
                lambda: skip_update(raw.global_norm, raw.report),
            )
        else:
            # Optimizers update mirrored variables through merge_call, which TF forbids inside a
            # cond in replica context: the one decision is taken in cross-replica context.
            applied = _compat.decide_across_replicas(
                replica, raw.all_finite, apply_update, step, skip_update, (raw.global_norm, raw.report)
            )

    if not _compat.executing_eagerly() and not _compat.inside_function():
        return tf.group(applied, name=name or "safegrad_step")
    return applied
