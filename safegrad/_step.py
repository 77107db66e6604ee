"""The public safe steps: ``clip_and_apply`` (from a loss) and ``apply_gradients`` (from gradients).

Both validate their arguments at the call (before any op is built), find the optimizer's adapter
and hand the gradients to ``_safe_apply.apply_gradients_safely``: obtain -> check (raw) -> clip
(value, per-variable, global) -> apply or skip.
"""

from safegrad import _validate
from safegrad._adapters import adapter_for
from safegrad._compat import do_not_convert
from safegrad._policy import StepPolicy
from safegrad._safe_apply import apply_gradients_safely
from safegrad._tf import current_name_scope, tf
from safegrad._wrapping import refuse_wrapper


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
    tf_compatible_norm=False,
    global_step=None,
    gate_gradients=None,
    aggregation_method=None,
    colocate_gradients_with_ops=None,
    grad_loss=None,
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
        trainable variables (the graph collection; eagerly, those the tape watched). Each at most
        once; non-float variables in it are left alone, as TensorFlow does.
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
      tf_compatible_norm: TensorFlow's arithmetic for the norms: IndexedSlices (embeddings)
        counted slice by slice, repeated ids not summed first, and ``tf.clip_by_global_norm``'s
        rounding of the scale. For reproducing a run made before safegrad bit for bit; the
        default is the norm of the dense gradient (what the optimizer applies).
      global_step: optional integer variable advanced by one for each APPLIED update.
      gate_gradients, aggregation_method, colocate_gradients_with_ops: the options of
        ``tf.compat.v1.train.Optimizer.compute_gradients`` (same values and semantics), for a
        loss computed in a graph (``tf.gradients``); refused where a GradientTape computes the
        gradients. None: not given (no gating, as ``tf.gradients``).
      grad_loss: optional gradient of the loss (``compute_gradients``' ``grad_loss``, a tape's
        ``output_gradients``).
      name: optional name for the ops (and of the returned op in a graph).

    The skip counters and last-step statistics live in ``safegrad.step_state(optimizer)``: one set
    per optimizer (per graph), shared by every ``clip_and_apply`` call that passes the same
    optimizer (e.g. two losses, one optimizer: the streak counts non-finite steps of both).

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
    policy = StepPolicy.from_arguments(locals())
    refuse_wrapper(
        optimizer,
        "call its minimize()/apply_gradients(), or pass its `inner_optimizer` to clip_and_apply",
    )
    adapter = adapter_for(optimizer)
    adapter.require_supported_context()
    adapter.check_policy(policy)
    _validate.loss_and_tape(loss, tape)
    options = _validate.gradient_options(
        loss, tape, gate_gradients, aggregation_method, colocate_gradients_with_ops, grad_loss
    )
    var_list = _validate.var_list(var_list)
    global_step = _validate.global_step(global_step)
    name = _validate.name(name)
    outer_scope = current_name_scope()
    with tf.name_scope(name or "safegrad"):
        if "grad_loss" in options:  # (after every check: a refused call builds nothing)
            options["grad_loss"] = tf.convert_to_tensor(options["grad_loss"])
        grads_and_vars = adapter.compute_gradients(loss, var_list, tape, options)  # unscaled
        return apply_gradients_safely(
            adapter, grads_and_vars, policy, global_step=global_step, name=name, name_scope=outer_scope,
            gradients_scaled=False, loss=loss if isinstance(loss, tf.Tensor) else None,
        )


@do_not_convert
def apply_gradients(
    optimizer,
    grads_and_vars,
    *,
    clip_norm=None,
    per_variable_clip_norm=None,
    clip_value=None,
    on_nonfinite="raise",
    max_consecutive_skips=None,
    tf_compatible_norm=False,
    global_step=None,
    name=None
):
    """The second half of ``clip_and_apply``, for gradients you already have.

    For code that computes its gradients itself: accumulated over micro-batches, all-reduced by
    Horovod, edited by hand. Same semantics as ``clip_and_apply``: the finite check on the raw
    gradients (summed across replicas first under tf.distribute), clipping value -> per-variable
    norm -> global norm, ``on_nonfinite`` raise / skip / ignore, ``global_step`` advanced only by
    applied updates, the same counters (``safegrad.step_state(optimizer)``) and errors.

    Args:
      optimizer: a ``tf.compat.v1.train.Optimizer`` or a ``tf.keras`` optimizer (TF2).
      grads_and_vars: (gradient, variable) pairs; None gradients are left out, their variables
        left alone. Each variable at most once.
      clip_norm, per_variable_clip_norm, clip_value, on_nonfinite, max_consecutive_skips,
        tf_compatible_norm, global_step, name: as in ``clip_and_apply``.

    Returns:
      In a graph: the train op. Eagerly or in ``tf.function``: a bool scalar tensor, True when
      the update was applied (with every optimizer API, Keras 2 and 3 included).

    Raises:
      ValueError / TypeError: at call time, for invalid arguments or when every gradient is None.
      tf.errors.InvalidArgumentError: when a step has non-finite gradients and the policy says
        raise.

    Example:
      >>> grads = [tf.zeros_like(v) for v in variables]
      >>> for micro_batch in micro_batches:  # accumulate, then one checked and clipped update
      ...   with tf.GradientTape() as tape:
      ...     loss = loss_fn(micro_batch) / len(micro_batches)
      ...   grads = [a + g for a, g in zip(grads, tape.gradient(loss, variables))]
      >>> applied = safegrad.apply_gradients(optimizer, zip(grads, variables), clip_norm=1.0,
      ...                                    on_nonfinite="skip")
    """
    policy = StepPolicy.from_arguments(locals())
    refuse_wrapper(
        optimizer,
        "call its apply_gradients(), or pass its `inner_optimizer` to safegrad.apply_gradients",
    )
    adapter = adapter_for(optimizer)
    adapter.require_supported_context()
    adapter.check_policy(policy)
    global_step = _validate.global_step(global_step)
    name = _validate.name(name)
    outer_scope = current_name_scope()
    with tf.name_scope(name or "safegrad"):
        return apply_gradients_safely(
            adapter, grads_and_vars, policy, global_step=global_step, name=name, name_scope=outer_scope
        )
