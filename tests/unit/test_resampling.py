"""The resampling helpers keep the frame whole and agree with scipy where scipy has the same procedure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from emolens.stats.resampling import (
    frame_halves,
    frame_label_permutations,
    item_mean_bca,
    max_statistic_pvalues,
    perm_pvalue,
    perm_pvalues,
    ratio_of_sums,
    sign_flip_pvalue,
    simultaneous_band,
    two_stage_weights,
)


def test_frame_label_permutations_move_a_frame_as_a_whole():
    frames = np.repeat(np.arange(6), 8)  # 6 frames x 2 items x 4 emotions
    codes = np.tile(np.arange(4), 12)
    perms = frame_label_permutations(codes, frames, 300, 4, np.random.default_rng(0))
    assert perms.shape == (300, 48)
    for p in perms:
        for f in range(6):
            block = p[frames == f].reshape(2, 4)
            assert (block[0] == block[1]).all()  # one permutation for all the frame's items
            assert sorted(block[0]) == [0, 1, 2, 3]
    first = perms[:, :4]  # frame 0's permutation: uniform over the 24 orders
    counts = np.unique(first, axis=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 0


def test_frame_halves_split_whole_frames_within_each_register():
    frames = np.repeat([f"f{i:02d}" for i in range(10)], 4)
    registers = np.where(np.repeat(np.arange(10), 4) < 4, "explicit", "implicit")
    a, b = frame_halves(frames, registers, seed=1)
    assert not set(frames[a]) & set(frames[b]) and len(a) + len(b) == 40
    assert (registers[a] == "explicit").sum() == 8 and (registers[a] == "implicit").sum() == 12
    assert np.array_equal(a, frame_halves(frames, registers, seed=1)[0])


def test_perm_pvalue_counts_the_observed_draw():
    assert perm_pvalue(1.0, np.array([0.0, 2.0, 1.0, 0.5])) == pytest.approx(3 / 5)
    assert perm_pvalue(9.0, np.zeros(99)) == pytest.approx(0.01)


def test_sign_flip_pvalue_matches_scipy_permutation_test():
    rng = np.random.default_rng(2)
    x = rng.normal(0.35, 1.0, 25)
    ours = sign_flip_pvalue(x[:, None], 20000, np.random.default_rng(3))[0]
    ref = stats.permutation_test((x,), np.mean, permutation_type="samples", n_resamples=20000,
                                 alternative="two-sided", rng=np.random.default_rng(4)).pvalue
    assert ours == pytest.approx(ref, abs=0.01)


def test_two_stage_weights_resample_frames_then_items():
    frame_of_item = np.repeat(np.arange(5), 3)
    w = two_stage_weights(frame_of_item, 4000, np.random.default_rng(5))
    frame_w = np.stack([w[:, frame_of_item == f].sum(1) for f in range(5)], 1)
    assert (frame_w % 3 == 0).all()  # a drawn frame brings a resample of all 3 of its items' slots
    assert w.sum(1).mean() == pytest.approx(15, rel=0.02) and w.std(0).min() > 0
    single = two_stage_weights(np.arange(6), 10, np.random.default_rng(6))  # one item per frame: plain bootstrap
    assert (single.sum(1) == 6).all()


def test_ratio_of_sums_ci_matches_scipy_bca_with_one_item_per_frame():
    """With one item per frame the two-stage bootstrap is scipy's bootstrap of items."""
    rng = np.random.default_rng(7)
    den = rng.uniform(1, 3, 40)
    num = den * rng.normal(0.4, 0.8, 40)
    items = np.array([f"i{k:02d}" for k in range(40)])
    ratio, low, high = ratio_of_sums(num[:, None], den, items, items, 20000, seed=0)
    ref = stats.bootstrap((np.arange(40),), lambda i, axis=-1: num[i].sum(axis) / den[i].sum(axis),
                          n_resamples=20000, vectorized=True, method="BCa",
                          rng=np.random.default_rng(1)).confidence_interval
    assert ratio[0] == pytest.approx(num.sum() / den.sum())
    assert low[0] == pytest.approx(ref.low, abs=0.02) and high[0] == pytest.approx(ref.high, abs=0.02)


def test_item_mean_bca_matches_scipy_bca_with_one_item_per_frame():
    """Steering's CIs: BCa of a statistic of the item mean; with one item per frame, scipy's BCa of items."""
    rng = np.random.default_rng(8)
    values = rng.gamma(2.0, 1.0, (40, 2))  # skewed, so BCa differs from the percentile interval
    frames = np.arange(40)
    weights = two_stage_weights(frames, 20000, np.random.default_rng(0))
    low, high = item_mean_bca(values, weights / weights.sum(1, keepdims=True), frames, lambda m: m[..., 1] / m[..., 0])
    ref = stats.bootstrap((np.arange(40),), lambda i, axis=-1: values[i, 1].mean(axis) / values[i, 0].mean(axis),
                          n_resamples=20000, vectorized=True, method="BCa",
                          rng=np.random.default_rng(1)).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.02) and high == pytest.approx(ref.high, abs=0.02)


def test_ratio_of_sums_ci_widens_when_items_share_a_frame_effect():
    rng = np.random.default_rng(8)
    frames = np.repeat(np.arange(20), 4)  # 20 frames x 4 items, a strong frame effect
    items = np.arange(80)
    den = np.ones(80)
    num = 0.3 + rng.normal(0, 0.5, 20)[frames] + rng.normal(0, 0.1, 80)
    _, lo_f, hi_f = ratio_of_sums(num[:, None], den, items, frames, 2000, seed=0)
    _, lo_i, hi_i = ratio_of_sums(num[:, None], den, items, items, 2000, seed=0)
    assert (hi_f - lo_f)[0] > 1.5 * (hi_i - lo_i)[0]  # items as units would claim far more precision


def test_simultaneous_band_is_wider_than_pointwise_and_covers_jointly():
    rng = np.random.default_rng(9)
    boot = rng.standard_normal((4000, 8))
    low, high, crit = simultaneous_band(np.zeros(8), boot)
    assert crit > 1.96 and np.mean(((boot > low) & (boot < high)).all(1)) == pytest.approx(0.95, abs=0.01)


def test_frame_slot_permutations_keep_items_and_move_a_frame_in_register():
    from emolens.stats.resampling import frame_slot_permutations

    items = np.repeat(np.arange(6), 4)  # 6 items x 4 emotions, 2 items per frame
    frames, codes = items // 2, np.tile([2, 0, 3, 1], 6)
    perms = frame_slot_permutations(codes, items, frames, 200, 4, np.random.default_rng(3))
    for p in perms:
        assert sorted(p) == list(range(24)) and (items[p] == items).all()  # a permutation inside items
        mapping: dict[tuple[int, int], int] = {}
        for i in range(24):  # one map emotion -> emotion per frame, the same for both its items
            assert mapping.setdefault((frames[i], codes[i]), codes[p[i]]) == codes[p[i]]
    incomplete = frame_slot_permutations(np.array([0, 1, 1, 0]), np.zeros(4), np.zeros(4), 5, 2,
                                         np.random.default_rng(0))
    assert all(sorted(p) == [0, 1, 2, 3] for p in incomplete)  # an item with repeated emotions: shuffled on its own


def test_an_undefined_statistic_has_no_p_value():
    """A NaN statistic (no variance to compare) gets NaN, never the smallest p 1/(n+1)."""
    from emolens.stats.resampling import perm_pvalue

    assert np.isnan(perm_pvalue(float("nan"), np.zeros(99)))
    assert perm_pvalue(1.0, np.zeros(99)) == 0.01 and perm_pvalue(-1.0, np.zeros(99)) == 1.0


def test_max_statistic_pvalues_are_at_least_the_pointwise_ones_and_count_the_observed_draw():
    rng = np.random.default_rng(10)
    null = rng.standard_normal((999, 6))
    observed = np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.nan])
    pointwise, familywise = perm_pvalues(observed, null), max_statistic_pvalues(observed, null)
    assert np.isnan(pointwise[-1]) and np.isnan(familywise[-1])
    assert np.all(familywise[:-1] >= pointwise[:-1])
    assert familywise[0] == pytest.approx((1 + np.sum(null.max(1) >= 0.0)) / 1000)
    assert pointwise[2] == pytest.approx(perm_pvalue(2.0, null[:, 2]))
