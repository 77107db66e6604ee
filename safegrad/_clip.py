"""Clipping that keeps None in place, IndexedSlices sparse, dtypes intact, and damage local."""

from safegrad import _validate
from safegrad._compat import colocate_with, do_not_convert
from safegrad._norm import HALF_TYPES, dedup_slices, dense_equivalent_values, inspect_gradients, rescaled_norm
from safegrad._structure import GradientList
from safegrad._tf import tf


def clip_scale(norm, clip_norm, tf_compatible=False):
    """``min(1, clip_norm / norm)`` elementwise, as float32; exactly 1.0 when ``norm <= clip_norm``
    (so unclipped gradients stay bit-for-bit unchanged), when ``norm`` is 0 (no 0/0), and when
    ``norm`` is NaN/Inf (a non-finite gradient is not smeared over the others).

    ``tf_compatible``: rounded as ``tf.clip_by_global_norm`` computes it,
    ``clip_norm * min(1 / norm, 1 / clip_norm)`` (two roundings; not always exactly 1.0).
    """
    clip_norm = tf.cast(clip_norm, tf.float32)
    if tf_compatible:
        scale = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm)
    else:
        scale = clip_norm / tf.maximum(norm, clip_norm)
    return tf.where(tf.math.is_finite(norm), scale, tf.ones_like(scale))


def scale_gradient(gradient, scale):
    """``gradient * scale`` (float32 scalar) with the gradient's dtype and form kept."""
    if gradient is None:
        return None
    sparse = isinstance(gradient, tf.IndexedSlices)
    values = gradient.values if sparse else gradient
    with colocate_with(values):
        if values.dtype in HALF_TYPES:
            # A float16 scale would underflow for large norms; scale in float32 instead.
            scaled = tf.cast(tf.cast(values, tf.float32) * scale, values.dtype)
        else:
            scaled = values * tf.cast(scale, values.dtype)
    if sparse:
        return tf.IndexedSlices(scaled, gradient.indices, gradient.dense_shape)
    return scaled


def value_bounds(clip_value):
    """``(min, max)`` of a validated ``clip_value``: ``c`` means ``(-c, c)``."""
    if isinstance(clip_value, (tuple, list)):
        return tuple(clip_value)
    return -clip_value, clip_value


def clip_values(gradient, bounds, tf_compatible=False):
    """Elementwise clip to ``bounds`` = (min, max); IndexedSlices are first summed per index, so
    the clip applies to the dense equivalent (and the result has unique indices) - unless
    ``tf_compatible``: then each slice is clipped, as ``tf.clip_by_value`` does."""
    if gradient is None:
        return None
    low, high = bounds
    if isinstance(gradient, tf.IndexedSlices) and tf_compatible:
        values = gradient.values
        clipped = tf.clip_by_value(values, tf.cast(low, values.dtype), tf.cast(high, values.dtype))
        return tf.IndexedSlices(clipped, gradient.indices, gradient.dense_shape)
    if isinstance(gradient, tf.IndexedSlices):
        summed, unique_indices = dedup_slices(gradient)
        clipped = tf.clip_by_value(summed, tf.cast(low, summed.dtype), tf.cast(high, summed.dtype))
        return tf.IndexedSlices(clipped, unique_indices, gradient.dense_shape)
    with colocate_with(gradient):
        return tf.clip_by_value(gradient, tf.cast(low, gradient.dtype), tf.cast(high, gradient.dtype))


@do_not_convert
def clip_by_global_norm(grads, clip_norm, use_norm=None, tf_compatible_norm=False):
    """Scales gradients so their global norm is at most ``clip_norm``; drop-in for
    ``tf.clip_by_global_norm``.

    Differences from TensorFlow's version, all deliberate:

    * ``grads`` may also be (gradient, variable) pairs; the result has the same form.
    * The norm is that of ``safegrad.global_norm``: sparse duplicates summed, float16 accumulated
      in float32, no overflow for finite gradients.
    * When the global norm is NaN/Inf the gradients are returned unscaled, so the damage stays in
      the variables that caused it (TensorFlow turns every entry into NaN).
    * A zero norm leaves the gradients unchanged; ``None`` stays ``None``; ``IndexedSlices`` stay
      ``IndexedSlices`` with the same indices and dense_shape; dtypes are kept.

    Args:
      grads: a list of gradients (Tensor, IndexedSlices or None), or of (gradient, variable)
        pairs as returned by ``compute_gradients``.
      clip_norm: the maximum global norm, a number > 0 or a scalar tensor.
      use_norm: optional precomputed global norm to use instead of computing it.
      tf_compatible_norm: TensorFlow's arithmetic - IndexedSlices counted slice by slice
        (repeated indices not summed first) and TF's rounding of the scale - so that the result
        is bit for bit ``tf.clip_by_global_norm``'s whenever the norm is finite: for reproducing
        a run made without safegrad.

    Returns:
      ``(clipped, global_norm)``: the clipped gradients in the form of ``grads`` and the float32
      global norm before clipping (``use_norm`` if given).

    Example:
      >>> grads_and_vars = optimizer.compute_gradients(loss)
      >>> clipped, norm = safegrad.clip_by_global_norm(grads_and_vars, 1.0)
      >>> train_op = optimizer.apply_gradients(clipped)
    """
    if clip_norm is None:
        raise ValueError("`clip_norm` must be > 0 and finite. Received: clip_norm=None")
    _validate.positive_scalar(clip_norm, "clip_norm")
    tf_compatible_norm = _validate.flag(tf_compatible_norm, "tf_compatible_norm")
    form = GradientList.parse(grads, "grads")
    with tf.name_scope("safegrad_clip_by_global_norm"):
        if use_norm is None:
            present = [g for g in form.gradients if g is not None]
            if not present:
                return form.rebuild(form.gradients), tf.constant(0.0, tf.float32)
            values = [dense_equivalent_values(g, tf_compatible_norm) for g in present]
            norm = inspect_gradients(values).global_norm
        else:
            _validate.static_scalar(use_norm, "use_norm")
            norm = tf.cast(use_norm, tf.float32)
        scale = clip_scale(norm, _validate.runtime_positive(clip_norm, "clip_norm"), tf_compatible_norm)
        clipped = [scale_gradient(g, scale) for g in form.gradients]
    return form.rebuild(clipped), norm


@do_not_convert
def clip_per_variable(grads, clip_norm=None, clip_value=None, tf_compatible_norm=False):
    """Clips each gradient on its own: elementwise to ``clip_value``, then to norm ``clip_norm``.

    Args:
      grads: a list of gradients (Tensor, IndexedSlices or None), or of (gradient, variable)
        pairs as returned by ``compute_gradients``.
      clip_norm: optional maximum L2 norm of each gradient (number > 0 or scalar tensor). The norm
        is that of the dense equivalent; a gradient whose norm is NaN/Inf is left unscaled.
      clip_value: optional elementwise bound: ``c`` means [-c, c] (c > 0), or a ``(min, max)``
        pair. ``IndexedSlices`` are summed per index first, so the bound holds for the dense
        equivalent; the result then has unique indices.
      tf_compatible_norm: IndexedSlices clipped and measured slice by slice, as
        ``tf.clip_by_value`` / ``tf.clip_by_norm`` do (repeated indices not summed first).

    Returns:
      The clipped gradients, in the form of ``grads`` (None stays None in place).

    Raises:
      ValueError: if neither ``clip_norm`` nor ``clip_value`` is given, or either is invalid.

    Example:
      >>> safegrad.clip_per_variable(grads_and_vars, clip_norm=5.0, clip_value=10.0)
    """
    _validate.positive_scalar(clip_norm, "clip_norm")
    _validate.clip_value_bounds(clip_value)
    tf_compatible_norm = _validate.flag(tf_compatible_norm, "tf_compatible_norm")
    if clip_norm is None and clip_value is None:
        raise ValueError(
            "clip_per_variable needs `clip_norm` or `clip_value`. Received: clip_norm=None, "
            "clip_value=None"
        )
    form = GradientList.parse(grads, "grads")
    present = form.present
    gradients = list(form.gradients)
    if not present:
        return form.rebuild(gradients)
    with tf.name_scope("safegrad_clip_per_variable"):
        if clip_value is not None:
            gradients = [clip_values(g, value_bounds(clip_value), tf_compatible_norm) for g in gradients]
        if clip_norm is not None:
            limit = _validate.runtime_positive(clip_norm, "clip_norm")
            values = [dense_equivalent_values(gradients[i], tf_compatible_norm) for i in present]
            norms = inspect_gradients(values, per_gradient=True, per_gradient_bound=limit).norms
            scales = clip_scale(norms, limit)
            for k, i in enumerate(present):
                gradients[i] = scale_gradient(gradients[i], scales[k])
    return form.rebuild(gradients)


def clip_for_policy(gradients, values, raw, policy, fold_global_scale=False):
    """The clipping of one safegrad step: value, then per-variable norm, then global norm.

    Args:
      gradients: the present (non-None) raw gradients.
      values: their dense-equivalent accumulable values (as inspected into ``raw``).
      raw: the ``Inspection`` of the raw gradients; its norms are reused whenever the gradients
        they describe have not been changed by an earlier clipping stage, so the common cases
        read every gradient only once.
      policy: the step's ``StepPolicy``.
      fold_global_scale: leave the global-norm scale out of the gradients and return it, for an
        optimizer that can fold it into its update (plain gradient descent: one write of every
        gradient less).

    Returns:
      ``(clipped gradients, clipped, global_scale, clip_ratio)``: ``clipped`` is a bool scalar,
      True when a per-variable or the global norm bound was active; ``global_scale`` is the scale
      still to apply (a float32 scalar) when ``fold_global_scale``, else None; ``clip_ratio`` the
      global-norm bound's scale, ``min(1, clip_norm / norm)`` (None without ``clip_norm``).
    """
    clipped = tf.constant(False)
    norms = raw.norms
    global_norm = raw.global_norm
    if policy.clip_value is not None:
        bounds = value_bounds(policy.clip_value)
        gradients = [clip_values(g, bounds, policy.tf_compatible_norm) for g in gradients]
        values = [dense_equivalent_values(g, policy.tf_compatible_norm) for g in gradients]
        fresh = inspect_gradients(
            values,
            per_gradient=policy.per_variable_clip_norm is not None,
            per_gradient_bound=policy.per_variable_clip_norm,
        )
        norms, global_norm = fresh.norms, fresh.global_norm
    if policy.per_variable_clip_norm is not None:
        limit = _validate.runtime_positive(policy.per_variable_clip_norm, "per_variable_clip_norm")
        scales = clip_scale(norms, limit)
        gradients = [scale_gradient(g, scales[k]) for k, g in enumerate(gradients)]
        clipped = tf.logical_or(clipped, tf.reduce_any(scales < 1.0))
        # The global norm of the scaled gradients follows from the per-gradient norms: no re-read.
        global_norm = tf.where(
            tf.reduce_all(tf.math.is_finite(norms)), rescaled_norm(norms * scales), global_norm
        )
    folded = ratio = None
    if policy.clip_norm is not None:
        limit = _validate.runtime_positive(policy.clip_norm, "clip_norm")
        scale = clip_scale(global_norm, limit, policy.tf_compatible_norm)
        if fold_global_scale:
            folded = scale
        else:
            gradients = [scale_gradient(g, scale) for g in gradients]
        clipped = tf.logical_or(clipped, scale < 1.0)
        ratio = scale
    return gradients, clipped, folded, ratio
