"""safegrad.global_norm against numpy, in every execution mode."""

import numpy as np
import pytest

import safegrad
from safegrad._tf import tf

from helpers import np_norm


def test_dense_list_with_none(mode):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([-3.0, 4.0], np.float32)
    result = mode.run(lambda x, y: safegrad.global_norm([x, None, y]), a, b)
    np.testing.assert_allclose(result, np_norm(a, b), rtol=1e-6)


def test_pairs_form_gives_same_norm(mode):
    w = mode.variable([1.0, 2.0], "w")
    v = mode.variable([3.0], "v")
    g = np.array([3.0, 4.0], np.float32)
    result = mode.run(lambda x: safegrad.global_norm([(x, w), (None, v)]), g)
    np.testing.assert_allclose(result, 5.0, rtol=1e-7)


def test_all_none_is_zero(mode):
    assert mode.run(lambda: safegrad.global_norm([None, None])) == 0.0


def test_indexed_slices_sum_repeated_indices_first(mode):
    def body():
        slices = tf.IndexedSlices(
            tf.constant([[1.0], [1.0]]), tf.constant([0, 0]), tf.constant([3, 1])
        )
        ours = safegrad.global_norm([slices])
        _, tfs = tf.clip_by_global_norm([slices], 10.0)
        return ours, tfs

    ours, tfs = mode.run(body)
    np.testing.assert_allclose(ours, 2.0, rtol=1e-7)  # dense equivalent [[2], [0], [0]]
    np.testing.assert_allclose(tfs, np.sqrt(2.0), rtol=1e-6)  # what TensorFlow reports


def test_indexed_slices_match_dense_equivalent(mode):
    rng = np.random.RandomState(0)
    values = rng.randn(7, 3).astype(np.float32)
    indices = np.array([4, 1, 4, 0, 1, 4, 2], np.int64)
    dense = np.zeros((5, 3), np.float32)
    np.add.at(dense, indices, values)

    def body(v, i):
        return safegrad.global_norm([tf.IndexedSlices(v, i, tf.constant([5, 3], tf.int64))])

    np.testing.assert_allclose(mode.run(body, values, indices), np_norm(dense), rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_accumulates_in_float32(mode, dtype):
    def body():
        g = tf.cast(tf.fill([100], 300.0), getattr(tf, dtype))
        norm = safegrad.global_norm([g])
        # TensorFlow's own: float16 overflows; bfloat16 has no CPU L2Loss kernel before TF 2.5.
        theirs = tf.linalg.global_norm([g]) if dtype == "float16" else tf.constant(np.inf)
        return norm, theirs

    ours, theirs = mode.run(body)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, 3000.0, rtol=1e-6)
    assert not np.isfinite(theirs)


def test_float64_gradients(mode):
    a = np.array([1e-3, 2.0, -7.5], np.float64)
    result = mode.run(lambda x: safegrad.global_norm([x]), a)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, np_norm(a), rtol=1e-6)


def test_no_overflow_when_sum_of_squares_overflows(mode):
    big = np.full([1000], 1e20, np.float32)
    small = np.array([3.0, 4.0], np.float32)
    result = mode.run(lambda x, y: safegrad.global_norm([x, None, y]), big, small)
    assert np.isfinite(result)
    np.testing.assert_allclose(result, 3.1622776e21, rtol=1e-5)
    np.testing.assert_allclose(result, np_norm(big, small), rtol=1e-5)


def test_overflow_in_several_gradients_and_sparse(mode):
    a = np.full([10, 10], 3e19, np.float32)
    b = np.full([50], -2e19, np.float32)
    dense_sparse = np.zeros([4, 2], np.float32)
    sparse_values = np.array([[1e19, 1e19], [1e19, 1e19]], np.float32)
    dense_sparse[1] = 2e19

    def body(x, y, s):
        slices = tf.IndexedSlices(s, tf.constant([1, 1]), tf.constant([4, 2]))
        return safegrad.global_norm([x, y, slices])

    result = mode.run(body, a, b, sparse_values)
    np.testing.assert_allclose(result, np_norm(a, b, dense_sparse), rtol=1e-5)


@pytest.mark.parametrize("bad, expected", [(np.inf, np.inf), (np.nan, np.nan), (-np.inf, np.inf)])
def test_nonfinite_element_gives_nonfinite_norm(mode, bad, expected):
    a = np.array([1.0, bad], np.float32)
    result = mode.run(lambda x, y: safegrad.global_norm([x, y]), a, np.ones(3, np.float32))
    if np.isnan(expected):
        assert np.isnan(result)
    else:
        assert result == expected


def test_random_mixture_matches_numpy(mode):
    rng = np.random.RandomState(42)
    arrays = [np.asarray(rng.randn(*shape), np.float32) for shape in [(3, 4), (5,), (), (2, 2, 2)]]
    result = mode.run(lambda *xs: safegrad.global_norm(list(xs)), *arrays)
    np.testing.assert_allclose(result, np_norm(*arrays), rtol=1e-6)


def test_empty_gradient_tensor(mode):
    result = mode.run(lambda x: safegrad.global_norm([x]), np.zeros([0, 3], np.float32))
    assert result == 0.0


def test_mixed_dtypes_overflow_and_per_gradient_order(mode):
    big64 = np.full([10], 1e200, np.float64)  # its squares overflow even float64
    small32 = np.array([3.0, 4.0], np.float32)
    big32 = np.full([1000], 1e20, np.float32)

    def body(a, b, c):
        norm = safegrad.global_norm([a, b, c])
        per = safegrad.clip_per_variable([a, b, c], clip_norm=1e38)  # nothing clipped
        return norm, per[0], per[1]

    norm, out_a, out_b = mode.run(body, big64, small32, big32)
    assert np.isinf(norm)  # 3.2e200 is not representable as the float32 result
    np.testing.assert_array_equal(out_a, big64)
    np.testing.assert_array_equal(out_b, small32)


def test_mixed_dtypes_report_names_in_order(mode):
    w = [
        mode.variable(np.zeros(2), "a", dtype=tf.float64),
        mode.variable(np.zeros(2), "b"),
        mode.variable(np.zeros(2), "c", dtype=tf.float64),
    ]

    def body(x, y, z):
        check = safegrad.assert_finite([(x, w[0]), (y, w[1]), (z, w[2])])
        with tf.control_dependencies([check] if check is not None else []):
            return tf.constant(1.0) * 1.0

    run = mode.step(body, np.zeros(2), np.zeros(2, np.float32), np.zeros(2))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"for: a \(Inf\), c \(NaN\)"):
        run(np.array([np.inf, 0.0]), np.ones(2, np.float32), np.array([np.nan, 0.0]))


def test_no_underflow_when_every_square_is_below_float32s_smallest_normal(mode):
    tiny = np.full([4], 1e-20, np.float32)  # squares 1e-40: below 1.18e-38, flushed to zero
    norm = mode.run(lambda g: safegrad.global_norm([g]), tiny)
    np.testing.assert_allclose(norm, 2e-20, rtol=1e-6)
    zeros = mode.run(lambda g: safegrad.global_norm([g]), np.zeros(3, np.float32))
    assert zeros == 0.0  # an all-zero gradient is exactly 0 (it takes the exact path too)


def test_underflow_with_float64_and_sparse_gradients(mode):
    dense64 = np.array([3e-30, 4e-30])  # representable as a float32 norm, squares are not

    def body(g):
        slices = tf.IndexedSlices(tf.constant([[1e-20], [1e-20]], tf.float32), tf.constant([0, 0]), [3, 1])
        return safegrad.global_norm([g]), safegrad.global_norm([slices])

    norm64, sparse = mode.run(body, dense64)
    np.testing.assert_allclose(norm64, 5e-30, rtol=1e-6)
    np.testing.assert_allclose(sparse, 2e-20, rtol=1e-6)  # repeated index summed: [2e-20]


def test_clipping_to_a_bound_below_the_underflow_level(mode):
    g = np.array([1e-20, 0.0], np.float32)
    big = np.array([3.0, 4.0], np.float32)

    def body(a, b):
        clipped, norm = safegrad.clip_by_global_norm([a], 1e-21)
        per = safegrad.clip_per_variable([a, b], clip_norm=1e-21)
        return clipped[0], norm, per[0], per[1]

    clipped, norm, per_tiny, per_big = mode.run(body, g, big)
    np.testing.assert_allclose(norm, 1e-20, rtol=1e-6)
    np.testing.assert_allclose(clipped, [1e-21, 0.0], rtol=1e-5)
    # Each gradient clipped to norm 1e-21 on its own, the tiny one included.
    np.testing.assert_allclose(per_tiny, [1e-21, 0.0], rtol=1e-5)
    np.testing.assert_allclose(per_big, [6e-22, 8e-22], rtol=1e-5)
