"""Global and per-gradient L2 norms: sparse-aware, float32-accumulated, over- and underflow-safe.

One read of every gradient computes a float32 sum of squares per gradient (``2 * l2_loss``, a
single fused kernel) and their total. If the total is finite and not tiny, every element was
finite and the norm is ``sqrt(total)``: that is the whole success path, plus two scalar tests.
Only otherwise does a ``tf.cond`` branch run the expensive work: a rescaled recomputation in
float64 (exact when the plain sum of squares overflowed float32, or when squares below float32's
smallest normal number flushed to zero) and the per-gradient NaN/Inf diagnosis that names the
offending variables.
"""

import collections

from safegrad._compat import do_not_convert, in_xla_context, lazy_cond
from safegrad._structure import GradientList
from safegrad._tf import tf, tf1
from safegrad._validate import flag as validate_flag

HALF_TYPES = (tf.float16, tf.bfloat16)

# A float32 sum of squares at least this large is accurate: squares that underflowed (|x| below
# ~1.1e-19 gives a square below float32's smallest normal 1.18e-38) add at most 1.2e-38 each,
# i.e. a relative error below 1e-8 for up to 1e10 elements. A smaller total takes the exact
# (rescaled, float64) path; so does a norm below EXACT_NORM_BELOW compared against a bound.
ACCURATE_SUM_OF_SQUARES = 1e-20
EXACT_NORM_BELOW = 1e-10


def accumulable(values):
    """``values`` in a dtype whose squares can be summed: float16/bfloat16 -> float32, complex ->
    magnitudes; float32/float64 unchanged."""
    if values.dtype in HALF_TYPES:
        return tf.cast(values, tf.float32)
    if values.dtype.is_complex:
        return tf.abs(values)
    return values


def dedup_slices(slices):
    """(summed values, unique indices) of ``IndexedSlices``: its dense equivalent, still sparse.

    Repeated indices add up in the dense tensor, so its norm is that of the per-index sums
    (``tf.clip_by_global_norm`` squares each slice instead: [1], [1] at index 0 gives sqrt(2)).
    """
    if in_xla_context():
        # XLA has no Unique: sum into every row of the dense shape instead (dense memory, but
        # still no dense gradient handed to the optimizer).
        rows = tf.cast(slices.dense_shape[0], slices.indices.dtype)
        summed = tf.math.unsorted_segment_sum(slices.values, slices.indices, rows)
        return summed, tf.range(rows)
    unique_indices, positions = tf.unique(slices.indices)
    summed = tf.math.unsorted_segment_sum(slices.values, positions, tf.shape(unique_indices)[0])
    return summed, unique_indices


def dense_equivalent_values(gradient, tf_compatible=False):
    """Values whose sum of squares is the dense gradient's, in an accumulable dtype.

    ``tf_compatible``: for IndexedSlices, the slices' own values, as ``tf.clip_by_global_norm``
    counts them (repeated indices each counted, not summed first: [1], [1] at index 0 give
    sqrt(2), where the dense gradient [2] has norm 2).
    """
    if isinstance(gradient, tf.IndexedSlices) and tf_compatible:
        return accumulable(gradient.values)
    if isinstance(gradient, tf.IndexedSlices):
        values = accumulable(gradient.values)
        return dedup_slices(tf.IndexedSlices(values, gradient.indices, gradient.dense_shape))[0]
    return accumulable(gradient)


def _half_sum_of_squares(values):
    """``sum(values**2) / 2`` as float32: ``l2_loss`` is one fused kernel (square + sum)."""
    return tf.cast(tf.nn.l2_loss(values), tf.float32)


def rescaled_norm(values):
    """``m * sqrt(sum((x / m)^2))`` with ``m = max|x|``: finite whenever every x is finite."""
    largest = tf.reduce_max(tf.abs(values))
    safe = tf.where(largest > 0, largest, tf.ones_like(largest))
    return tf.cast(safe * tf.sqrt(tf.reduce_sum(tf.square(values / safe))), tf.float32)


Inspection = collections.namedtuple(
    "Inspection", ["global_norm", "all_finite", "norms", "report", "step", "message"], defaults=(None, None)
)
Inspection.__doc__ = """What one read of the gradients tells.

global_norm: float32 scalar; NaN/Inf when some element is.
all_finite: bool scalar; True iff every element of every gradient (dense equivalent) is finite.
norms: float32 vector of per-gradient norms (in the order given), or None if not requested.
report: string scalar naming each non-finite gradient as 'name (NaN)', 'name (Inf)' or
  'name (NaN and Inf)', comma-separated; '' when all are finite. None if no names were given.
step: int64 scalar, the step number (0 on the success path); None unless asked for.
message: string scalar, ``describe(report, step)`` on the diagnosis path, '' on the success path;
  None unless asked for.
"""


def inspect_gradients(
    values, names=None, per_gradient=False, per_gradient_bound=None, step_number=None, describe=None
):
    """Norms and finiteness of ``values`` (dense-equivalent, accumulable tensors).

    Args:
      values: non-empty list of tensors from ``dense_equivalent_values``.
      names: optional display names, one per value; enables ``report``.
      per_gradient: whether to return the per-gradient norms too.
      per_gradient_bound: the bound the per-gradient norms will be compared with (a number or
        scalar tensor), if any. Per-gradient norms below ``EXACT_NORM_BELOW`` are then computed
        exactly too, when the bound itself is that small (costs nothing for ordinary bounds).
      step_number: optional callable returning the int64 number of the step, evaluated only on
        the diagnosis path (with ``names``); enables ``step`` (0 on the success path).
      describe: optional callable ``describe(report, step)`` returning a string tensor (``step``
        None without ``step_number``), called only on the diagnosis path (with ``names``); enables
        ``message``: an error message whose string ops run only when there may be something to
        report, not on every healthy step.
    """
    # The success path: one fused read per gradient (l2_loss = sum of squares / 2), one stack,
    # one sum, two scalar tests. The cond's fast branch sees only two tensors.
    halves = tf.stack([_half_sum_of_squares(v) for v in values])
    total = 2.0 * tf.reduce_sum(halves)
    fast_path = tf.logical_and(tf.math.is_finite(total), total >= ACCURATE_SUM_OF_SQUARES)
    if per_gradient and per_gradient_bound is not None and not _static_at_least(
        per_gradient_bound, EXACT_NORM_BELOW
    ):
        fast_path = tf.logical_and(
            fast_path,
            tf.logical_or(
                tf.cast(per_gradient_bound, tf.float32) >= EXACT_NORM_BELOW,
                2.0 * tf.reduce_min(halves) >= ACCURATE_SUM_OF_SQUARES,
            ),
        )

    def fast():
        result = {"global_norm": tf.sqrt(total), "all_finite": tf.constant(True)}
        if per_gradient:
            result["norms"] = tf.sqrt(2.0 * halves)
        if names is not None:
            result["report"] = tf.constant("")
            if step_number is not None:
                result["step"] = tf.constant(0, tf.int64)
            if describe is not None:
                result["message"] = tf.constant("")
        return result

    def slow():
        # Only reached when the float32 sum of squares is Inf/NaN (some element is non-finite,
        # or the squares overflowed) or tiny (squares underflowed). Cost does not matter here;
        # accuracy, diagnosis and a small graph do (this branch is built once per step and
        # captures every gradient).
        result = _slow_inspection(values, names, per_gradient)
        if names is not None and step_number is not None:
            result["step"] = tf.cast(step_number(), tf.int64)
        if names is not None and describe is not None:
            result["message"] = describe(result["report"], result.get("step"))
        return result

    out = lazy_cond(fast_path, fast, slow)
    return Inspection(
        global_norm=out["global_norm"],
        all_finite=out["all_finite"],
        norms=out.get("norms"),
        report=out.get("report"),
        step=out.get("step"),
        message=out.get("message"),
    )


def _static_at_least(value, limit):
    static = tf.get_static_value(value) if isinstance(value, tf.Tensor) else value
    return static is not None and float(static) >= limit


def _slow_inspection(values, names, per_gradient):
    """Exact per-gradient norms, finiteness and NaN/Inf flags, vectorised.

    All gradients are flattened into one float64 vector (exact for float32 values, and float32
    squares cannot overflow float64); per-gradient results come from segment reductions. That is
    a handful of ops whatever the number of gradients, instead of ~20 per gradient.
    """
    count = len(values)
    # float32 gradients are concatenated first and cast once; float64 ones follow. Segment k is
    # then the gradient order[k]; per-gradient results are put back in the callers' order.
    order = [i for i, v in enumerate(values) if v.dtype == tf.float32]
    order += [i for i, v in enumerate(values) if v.dtype != tf.float32]
    values = [values[i] for i in order]
    flatten = tf.constant([-1])  # one shape constant for all reshapes
    single = [tf.reshape(v, flatten) for v in values if v.dtype == tf.float32]
    double = [tf.reshape(v, flatten) for v in values if v.dtype != tf.float32]
    parts = ([tf.cast(tf.concat(single, 0), tf.float64)] if single else []) + double
    flat = tf.concat(parts, 0) if len(parts) > 1 else parts[0]
    if not tf.executing_eagerly() and not in_xla_context():
        # Its length made unknown to the graph: else Grappler folds the per-element segment ids
        # below (an int64 range over every gradient element) into a constant of this branch when
        # the branch is instantiated, although it rarely runs (TF 1.15, M1: 634 -> 615 MiB peak).
        # XLA needs the static length (and folds nothing).
        flat = tf1.placeholder_with_default(flat, [None])
    static = [v.shape.num_elements() for v in values]
    if all(size is not None for size in static):
        sizes = tf.constant(static, tf.int64)
    else:
        sizes = tf.stack([tf.size(v, out_type=tf.int64) for v in values])
    segment = tf.searchsorted(
        tf.cumsum(sizes), tf.range(tf.size(flat, out_type=tf.int64), dtype=tf.int64),
        side="right", out_type=tf.int64,
    )
    finite_elements = tf.math.is_finite(flat)
    finite = tf.math.unsorted_segment_min(tf.cast(finite_elements, tf.int32), segment, count) > 0
    all_finite = tf.reduce_all(finite)
    magnitudes = tf.where(finite_elements, tf.abs(flat), tf.zeros_like(flat))
    largest = tf.maximum(tf.math.unsorted_segment_max(magnitudes, segment, count), 0.0)
    safe = tf.where(largest > 0, largest, tf.ones_like(largest))
    scaled = flat / tf.gather(safe, segment)
    rescaled = safe * tf.sqrt(tf.math.unsorted_segment_sum(tf.square(scaled), segment, count))
    plain = tf.sqrt(tf.math.unsorted_segment_sum(tf.square(flat), segment, count))  # NaN/Inf kept
    norms = tf.where(finite, rescaled, plain)
    global_norm = tf.where(all_finite, _join(norms), tf.sqrt(tf.reduce_sum(tf.square(plain))))
    inverse = [order.index(i) for i in range(count)]
    unorder = (lambda x: x) if inverse == list(range(count)) else (lambda x: tf.gather(x, inverse))
    result = {"global_norm": tf.cast(global_norm, tf.float32), "all_finite": all_finite}
    if per_gradient:
        result["norms"] = unorder(tf.cast(norms, tf.float32))
    if names is not None:
        has_nan = tf.math.unsorted_segment_max(tf.cast(tf.math.is_nan(flat), tf.int32), segment, count) > 0
        has_inf = tf.math.unsorted_segment_max(tf.cast(tf.math.is_inf(flat), tf.int32), segment, count) > 0
        result["report"] = _report(unorder(has_nan), unorder(has_inf), names)
    return result


def _join(norms):
    """The L2 norm of finite per-gradient norms, rescaled by the largest (no overflow)."""
    largest = tf.reduce_max(norms)
    safe = tf.where(largest > 0, largest, tf.ones_like(largest))
    return safe * tf.sqrt(tf.reduce_sum(tf.square(norms / safe)))


def _report(has_nan, has_inf, names):
    names = tf.constant(list(names))
    labels = tf.where(
        tf.logical_and(has_nan, has_inf),
        tf.strings.join([names, " (NaN and Inf)"]),
        tf.where(has_nan, tf.strings.join([names, " (NaN)"]), tf.strings.join([names, " (Inf)"])),
    )
    # (gather + where rather than boolean_mask, which logs a deprecation warning on TF 1.15)
    offending = tf.gather(labels, tf.reshape(tf.where(tf.logical_or(has_nan, has_inf)), [-1]))
    return tf.strings.reduce_join(offending, separator=", ")


@do_not_convert
def global_norm(grads, tf_compatible_norm=False):
    """The L2 norm of all gradients together, as ``tf.linalg.global_norm`` but correct everywhere.

    * ``None`` entries are ignored.
    * ``IndexedSlices`` count as their dense equivalent (repeated indices summed first), computed
      without building the dense tensor.
    * float16/bfloat16 gradients are accumulated in float32 (100 x 300.0 in float16 gives 3000,
      not Inf).
    * Finite and accurate whenever every element is finite, even when the plain sum of squares
      overflows float32 (1000 x 1e20 gives 3.1623e21) or underflows it ([1e-20] gives 1e-20,
      not 0); the rescaled recomputation runs only in those cases, in a ``tf.cond`` branch, so
      the normal path reads each gradient once.
    * NaN/Inf when some element is NaN/Inf.

    Args:
      grads: a list of gradients (Tensor, IndexedSlices or None), or of (gradient, variable)
        pairs as returned by ``compute_gradients``.
      tf_compatible_norm: count IndexedSlices as ``tf.linalg.global_norm`` does (each slice, so
        repeated indices are not summed first), to reproduce a run made without safegrad.

    Returns:
      A float32 scalar tensor (0.0 when every gradient is None).

    Example:
      >>> safegrad.global_norm([tf.constant([3.0, 4.0]), None])  # 5.0
    """
    tf_compatible_norm = validate_flag(tf_compatible_norm, "tf_compatible_norm")
    form = GradientList.parse(grads, "grads")
    present = [g for g in form.gradients if g is not None]
    if not present:
        return tf.constant(0.0, tf.float32)
    with tf.name_scope("safegrad_global_norm"):
        values = [dense_equivalent_values(g, tf_compatible_norm) for g in present]
        return inspect_gradients(values).global_norm
