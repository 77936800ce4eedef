import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.stats import ActivationStats


def reference(a):
    flat = a.reshape(-1, a.shape[-1]).astype(np.float64)
    return flat.mean(0), flat.std(0), (flat == 0).mean(0), np.abs(flat).max(0)


def test_one_batch_matches_numpy():
    a = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    a[:, 3] = 0
    s = ActivationStats.of(a)
    mean, std, zf, mx = reference(a)
    # float32 activations: differences from the float64 reference are at float32 rounding
    np.testing.assert_allclose(s.mean, mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s.std, std, rtol=1e-6)
    s64 = ActivationStats.of(a.astype(np.float64))
    np.testing.assert_allclose(s64.mean, mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s64.std, std, rtol=1e-10)
    np.testing.assert_array_equal(s.zero_fraction, zf)
    np.testing.assert_array_equal(s.max_abs, mx)
    assert s.dead.tolist() == [False, False, False, True, False, False, False]


def test_reduces_every_axis_but_the_last():
    a = np.random.default_rng(1).standard_normal((4, 9, 5))
    s = ActivationStats.of(a)
    assert s.count == 36
    np.testing.assert_allclose(s.mean, a.reshape(-1, 5).mean(0))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=6), st.integers(0, 10_000))
def test_streaming_over_any_batching_equals_one_pass(sizes, seed):
    rng = np.random.default_rng(seed)
    # A large offset makes a naive sum-of-squares variance lose all precision.
    batches = [1e4 + rng.standard_normal((n, 3)) for n in sizes]
    total = np.concatenate(batches)
    s = ActivationStats.empty(3)
    for b in batches:
        s.update(b)
    assert s.count == len(total)
    if len(total):
        mean, std, _, mx = reference(total)
        np.testing.assert_allclose(s.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(s.std, std, rtol=1e-7, atol=1e-9)
        np.testing.assert_array_equal(s.max_abs, mx)


def test_merge_of_shards_equals_single_pass():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 6))
    left = ActivationStats.of(a[:123])
    right = ActivationStats.of(a[123:])
    both = left.merge(right)
    whole = ActivationStats.of(a)
    np.testing.assert_allclose(both.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(both.m2, whole.m2, rtol=1e-10)
    assert both.count == whole.count
    np.testing.assert_array_equal(both.zeros, whole.zeros)


def test_mask_leaves_positions_out():
    a = np.ones((2, 4, 3))
    a[:, 2:] = 100.0  # padding positions
    mask = np.zeros((2, 4), bool)
    mask[:, :2] = True
    s = ActivationStats.of(a, mask)
    assert s.count == 4
    np.testing.assert_array_equal(s.mean, [1, 1, 1])
    np.testing.assert_array_equal(s.std, [0, 0, 0])


def test_state_does_not_grow_with_samples():
    s = ActivationStats.empty(8)
    for _ in range(50):
        s.update(np.random.default_rng(0).standard_normal((100, 8)))
    assert s.count == 5000
    assert all(x.shape == (8,) for x in (s.mean, s.m2, s.zeros, s.max_abs))


def test_empty_stats_report_nothing_dead():
    s = ActivationStats.empty(3)
    assert not s.dead.any()
    assert s.std.tolist() == [0, 0, 0]
