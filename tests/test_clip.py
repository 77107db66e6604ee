"""clip_by_global_norm and clip_per_variable against numpy, in every execution mode."""

import numpy as np
import pytest

import safegrad
from safegrad._tf import tf

from helpers import np_norm


def np_clip_global(arrays, clip):
    norm = np_norm(*arrays)
    scale = clip / max(norm, clip) if np.isfinite(norm) else 1.0
    return [a * scale for a in arrays], norm


def test_clip_by_global_norm_scales_when_above(mode):
    a = np.array([3.0, 4.0], np.float32)
    b = np.array([[12.0]], np.float32)

    def body(x, y):
        clipped, norm = safegrad.clip_by_global_norm([x, None, y], 1.3)
        assert clipped[1] is None and len(clipped) == 3
        return clipped[0], clipped[2], norm

    ca, cb, norm = mode.run(body, a, b)
    (ea, eb), enorm = np_clip_global([a, b], 1.3)
    np.testing.assert_allclose(norm, enorm, rtol=1e-6)
    np.testing.assert_allclose(ca, ea, rtol=1e-6)
    np.testing.assert_allclose(cb, eb, rtol=1e-6)
    np.testing.assert_allclose(np_norm(ca, cb), 1.3, rtol=1e-6)


def test_below_bound_is_bit_for_bit_unchanged(mode):
    a = np.array([0.1, -0.2, 0.3], np.float32)
    ca, _ = mode.run(lambda x: safegrad.clip_by_global_norm([x], 1.0)[0][0], a), None
    assert ca.tobytes() == a.tobytes()


def test_pairs_in_pairs_out(mode):
    w = mode.variable([1.0, 1.0], "w")
    v = mode.variable([1.0], "v")

    def body(g):
        clipped, _ = safegrad.clip_by_global_norm([(g, w), (None, v)], 2.5)
        assert [var for _, var in clipped] == [w, v] or (clipped[0][1] is w and clipped[1][1] is v)
        assert clipped[1][0] is None
        return clipped[0][0]

    np.testing.assert_allclose(mode.run(body, np.array([3.0, 4.0], np.float32)), [1.5, 2.0], rtol=1e-6)


def test_indexed_slices_stay_sparse_with_same_indices(mode):
    values = np.array([[3.0], [4.0], [12.0]], np.float32)

    def body(v):
        slices = tf.IndexedSlices(v, tf.constant([2, 0, 2]), tf.constant([4, 1]))
        clipped, norm = safegrad.clip_by_global_norm([slices], 1.0)
        out = clipped[0]
        assert isinstance(out, tf.IndexedSlices)
        assert out.indices is slices.indices and out.dense_shape is slices.dense_shape
        return out.values, norm

    out, norm = mode.run(body, values)
    expected_norm = np.hypot(15.0, 4.0)  # dense: index 2 -> 15, index 0 -> 4
    np.testing.assert_allclose(norm, expected_norm, rtol=1e-6)
    np.testing.assert_allclose(out, values / expected_norm, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_dtypes_are_kept(mode, dtype):
    def body():
        g = tf.cast(tf.fill([100], 300.0), getattr(tf, dtype))
        clipped, norm = safegrad.clip_by_global_norm([g], 30.0)
        assert clipped[0].dtype == getattr(tf, dtype)
        return tf.cast(clipped[0], tf.float32), norm

    out, norm = mode.run(body)
    np.testing.assert_allclose(norm, 3000.0, rtol=1e-6)
    np.testing.assert_allclose(out, np.full([100], 3.0), rtol=1e-2)


def test_zero_norm_leaves_gradients_unchanged(mode):
    out, _norm = mode.run(lambda x: safegrad.clip_by_global_norm([x], 1.0)[0][0], np.zeros(3, np.float32)), None
    assert np.all(out == 0) and not np.any(np.isnan(out))


def test_nonfinite_norm_keeps_damage_local(mode):
    bad = np.array([np.inf, 1.0], np.float32)
    good = np.array([3.0, 4.0], np.float32)

    def body(x, y):
        ours, norm = safegrad.clip_by_global_norm([x, y], 1.0)
        theirs, _ = tf.clip_by_global_norm([x, y], 1.0)
        return ours, theirs, norm

    ours, theirs, norm = mode.run(body, bad, good)
    assert norm == np.inf
    np.testing.assert_array_equal(ours[1], good)  # untouched
    np.testing.assert_array_equal(ours[0], bad)
    assert np.all(np.isnan(theirs[1]))  # TensorFlow smears NaN over every gradient


def test_clip_norm_as_tensor_fed_at_run_time(mode):
    a = np.array([3.0, 4.0], np.float32)
    run = mode.step(lambda x, c: safegrad.clip_by_global_norm([x], c)[0][0], a, np.float32(1.0))
    np.testing.assert_allclose(run(a, np.float32(1.0)), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(run(a, np.float32(10.0)), a)
    # Eagerly the tensor's value is known at the call, so it is rejected there.
    expected = ValueError if mode.eager else tf.errors.InvalidArgumentError
    with pytest.raises(expected, match="clip_norm"):
        run(a, np.float32(-1.0))


def test_use_norm(mode):
    a = np.array([3.0, 4.0], np.float32)
    out, norm = mode.run(lambda x: safegrad.clip_by_global_norm([x], 1.0, use_norm=10.0), a)
    np.testing.assert_allclose(out[0], a / 10.0, rtol=1e-6)
    assert norm == 10.0


# clip_per_variable -----------------------------------------------------------------------------


def test_per_variable_norm(mode):
    a = np.array([3.0, 4.0], np.float32)  # norm 5 -> clipped to 2
    b = np.array([0.5, 0.5], np.float32)  # norm 0.707 -> unchanged

    def body(x, y):
        out = safegrad.clip_per_variable([x, None, y], clip_norm=2.0)
        assert out[1] is None
        return out[0], out[2]

    ca, cb = mode.run(body, a, b)
    np.testing.assert_allclose(ca, a * 2.0 / 5.0, rtol=1e-6)
    assert cb.tobytes() == b.tobytes()


def test_per_variable_norm_overflow_safe(mode):
    big = np.full([1000], 1e20, np.float32)
    out = mode.run(lambda x: safegrad.clip_per_variable([x], clip_norm=1.0)[0], big)
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("clip_value, low, high", [(1.5, -1.5, 1.5), ((-0.5, 2.0), -0.5, 2.0)])
def test_per_variable_value(mode, clip_value, low, high):
    a = np.array([-3.0, -1.0, 0.0, 1.0, 3.0], np.float32)
    out = mode.run(lambda x: safegrad.clip_per_variable([x], clip_value=clip_value)[0], a)
    np.testing.assert_array_equal(out, np.clip(a, low, high))


def test_per_variable_value_then_norm(mode):
    a = np.array([10.0, -10.0, 1.0], np.float32)
    out = mode.run(lambda x: safegrad.clip_per_variable([x], clip_norm=1.0, clip_value=2.0)[0], a)
    expected = np.clip(a, -2, 2)
    expected = expected / np.linalg.norm(expected)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_per_variable_sparse_value_clip_uses_dense_equivalent(mode):
    values = np.array([[3.0], [3.0], [-1.0]], np.float32)

    def body(v):
        slices = tf.IndexedSlices(v, tf.constant([0, 0, 1]), tf.constant([2, 1]))
        out = safegrad.clip_per_variable([slices], clip_value=5.0)[0]
        assert isinstance(out, tf.IndexedSlices)
        return tf.convert_to_tensor(out)  # densify only here, to check

    np.testing.assert_allclose(mode.run(body, values), [[5.0], [-1.0]])


def test_per_variable_sparse_norm(mode):
    values = np.array([[3.0], [3.0], [8.0]], np.float32)

    def body(v):
        slices = tf.IndexedSlices(v, tf.constant([0, 0, 1]), tf.constant([2, 1]))
        out = safegrad.clip_per_variable([slices], clip_norm=5.0)[0]
        assert isinstance(out, tf.IndexedSlices) and out.indices is slices.indices
        return out.values

    np.testing.assert_allclose(mode.run(body, values), values * 0.5, rtol=1e-6)  # dense norm 10


def test_per_variable_nonfinite_left_unscaled(mode):
    a = np.array([np.nan, 100.0], np.float32)
    b = np.array([30.0, 40.0], np.float32)
    out = mode.run(lambda x, y: safegrad.clip_per_variable([x, y], clip_norm=5.0), a, b)
    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_allclose(out[1], [3.0, 4.0], rtol=1e-6)
