"""Steering statistics (emolens.stats.steering_stats): doses, matched nulls, specificity, choice, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from emolens import EMOTIONS
from emolens.stats.geometry import emotion_vectors
from emolens.stats.resampling import frame_label_permutations
from emolens.stats.steering_stats import (
    ItemBootstrap,
    choose_dose,
    choose_within_depth,
    chosen_dose_tests,
    gaussian_directions,
    permuted_vectors,
    projection_sd,
    readout_measures,
    specificity_forms,
)


def test_the_old_index_was_four_thirds_of_the_on_target_shift_and_the_forms_can_fail():
    """LDs against the mean of the other three sum to zero, so mean diagonal - mean off-diagonal is 4/3 of the
    mean diagonal whatever the matrix: it could not fail. The two forms can."""
    rng = np.random.default_rng(0)
    clean, steered = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    m = readout_measures(steered, np.zeros(4))[1] - readout_measures(clean, np.zeros(4))[1]  # rows: vectors
    off = ~np.eye(4, dtype=bool)
    assert np.diag(m).mean() - m[off].mean() == pytest.approx(4 / 3 * np.diag(m).mean())
    bad = np.diag([1.0, 1.0, 1.0, 1.0])
    bad[0, 2] = 2.0  # gratitude's vector moves apology's readout more than its own
    row, col = specificity_forms(bad)
    assert row[0] == -1.0 and col[2] == -1.0 and row[1] == 1.0 and col[1] == 1.0


def test_projection_sd_and_gaussian_directions_follow_the_fit_covariance():
    rng = np.random.default_rng(1)
    scales = np.array([10.0, 1.0, 0.1])
    x = rng.standard_normal((4000, 3)) * scales
    assert projection_sd(x, np.eye(3) * 5.0) == pytest.approx(scales, rel=0.05)  # the length of a direction is moot
    g = gaussian_directions(x, 4000, rng)
    np.testing.assert_allclose(g.std(0), scales, rtol=0.06)  # N(0, Sigma): they live where the residual varies


def test_permuted_vectors_are_the_vectors_of_the_permuted_labels():
    rng = np.random.default_rng(2)
    emotions = [EMOTIONS[i % 4] for i in range(48)]
    frames = [f"f{i // 8}" for i in range(48)]
    x = rng.standard_normal((48, 5))
    got = permuted_vectors(x, emotions, frames, 3, np.random.default_rng(3))
    perms = frame_label_permutations(np.array([EMOTIONS.index(e) for e in emotions]), frames, 3, 4,
                                     np.random.default_rng(3))
    for p in range(3):
        want = emotion_vectors(x[:, None], [EMOTIONS[c] for c in perms[p]])[:, 0]
        np.testing.assert_allclose(got[p], want, atol=1e-12)


def test_choose_dose_keeps_the_budget_and_says_when_it_cannot():
    alphas = [0.0, 1.0, 2.0, 4.0]
    on = np.zeros((2, 4, 4))
    on[1] = np.array([0.0, 1.0, 2.0, 3.0])[:, None]  # index 1 rises with the dose
    on[0] = np.array([0.0, 0.5, 0.8, 5.0])[:, None]  # index 0 is largest only at a costly dose
    kl = np.zeros((2, 4, 4))
    kl[:, 3] = 2.0  # the largest dose breaks the model
    pick = choose_dose(on, kl, alphas, budget=0.5)
    assert (pick["position"], pick["alpha_position"], pick["within_budget"]) == (1, 2, True)
    assert pick["half_max_position"] == 1  # half of the chosen shift (2.0) is first reached at dose 1
    none = choose_dose(on, kl + 1.0, alphas, budget=0.5)
    assert not none["within_budget"] and none["alpha_position"] == 1


def test_the_choice_within_depth_never_goes_deeper_and_is_the_choice_where_it_may_go_anywhere():
    rng = np.random.default_rng(0)
    layers, alphas = [0, 3, 6, 9, 12], [0.0, 1.0, 4.0]
    for _ in range(50):
        on, kl = rng.normal(size=(5, 3)), rng.exponential(0.4, size=(5, 3))
        pick = choose_within_depth(on, kl, layers, 12, alphas, 0.5, 0.75)
        assert layers[pick["position"]] <= 9
        anywhere = choose_within_depth(on, kl, layers, 12, alphas, 0.5, 1.0)
        assert anywhere == choose_dose(on[..., None], kl[..., None], alphas, 0.5)
    on[3], on[4] = 50.0, 100.0  # the last index is by far the best: the inner choice still stays inside
    assert choose_within_depth(on, kl * 0, layers, 12, alphas, 0.5, 0.75)["position"] == 3
    assert choose_within_depth(on, kl, layers[3:], 12, alphas, 0.5, 0.5) is None


def _simulated(rng: np.random.Generator, n_perm: int, planted: float) -> tuple[np.ndarray, dict, ItemBootstrap]:
    """Item shifts at the chosen dose built like ours: each vector (the real four and every permutation's
    four) moves each readout by a random amount, items add noise and share a frame effect; the real vectors
    add ``planted`` to their own readout."""
    n_items, n_frames = 24, 12
    frame = np.repeat(np.arange(n_frames), n_items // n_frames)
    sets = rng.standard_normal((1 + n_perm, 4, 1, 4)) * 0.5  # [set, vector, 1, readout]
    noise = rng.standard_normal((1 + n_perm, 4, n_items, 4)) + rng.standard_normal((1, 1, n_frames, 4))[:, :, frame]
    shift = sets + 0.5 * noise
    shift[0] += planted * np.eye(4)[:, None, :]
    boot = ItemBootstrap(rng.dirichlet(np.ones(n_items), size=50), frame)
    return shift[0], {"permuted": shift[1:].reshape(-1, n_items, 4)}, boot


@pytest.mark.parametrize("planted, lowest, highest", [(0.0, 0.0, 0.08), (2.5, 0.8, 1.0)])
def test_the_chosen_dose_tests_hold_their_size_and_find_a_planted_effect(planted, lowest, highest):
    """Calibration: with no emotion signal (the real vectors exchangeable with the permuted ones) the on-target
    and both specificity tests reject at about alpha = 0.05 (<= 0.08: 0.05 plus Monte Carlo error over 300
    studies); with a planted on-target effect they find it."""
    rng = np.random.default_rng(4)
    rates = {"on_target": [], "row": [], "column": []}
    for _ in range(300):
        own, nulls, boot = _simulated(rng, 49, planted)
        out = chosen_dose_tests(own, nulls, boot)
        rates["on_target"].append(out["on_target_p_permuted"][0] <= 0.05)
        rates["row"].append(out["specificity_row_p"][0] <= 0.05)
        rates["column"].append(out["specificity_column_p"][0] <= 0.05)
    found = {k: float(np.mean(v)) for k, v in rates.items()}
    print(f"planted {planted}: rejection rates {found}")
    assert all(lowest <= v <= highest for v in found.values()), found


def test_matched_subspaces_remove_as_much_variance_as_the_emotion_subspace():
    from emolens.phases.ablation import matched_bases, random_basis, removed_variance

    rng = np.random.default_rng(6)
    d = 40
    x = rng.standard_normal((300, d)) * np.geomspace(10.0, 0.1, d)  # a few directions hold most of the variance
    emotion = np.linalg.qr(np.eye(d)[:, [1, 4, 9]] + 0.1 * rng.standard_normal((d, 3)))[0].T
    target = removed_variance(x, emotion)
    isotropic = np.mean([removed_variance(x, random_basis(3, d, rng)) for _ in range(20)])
    assert isotropic < 0.5 * target  # isotropic subspaces remove far less: the old null was too easy
    matched = matched_bases(x, 3, target, 50, rng)
    assert matched.shape == (50, 3, d)
    for b in matched:
        np.testing.assert_allclose(b @ b.T, np.eye(3), atol=1e-10)
        assert abs(removed_variance(x, b) - target) <= 0.1 * target


@pytest.mark.parametrize("planted, lowest, highest", [(0.0, 0.0, 0.08), (1.0, 0.8, 1.0)])
def test_the_transfer_test_holds_its_size_and_finds_a_planted_map(planted, lowest, highest):
    """Calibration of transfer's permuted null: with the mapped vectors exchangeable with the label-permuted ones
    carried through the same map, p <= 0.05 about 5% of the time; with a map that carries the emotion, nearly always."""
    from emolens.phases.transfer import transfer_fraction

    rng = np.random.default_rng(9)
    n_items, n_perm = 24, 49
    frame = np.repeat(np.arange(12), 2)
    rejected = []
    for _ in range(300):
        own = 1.0 + rng.standard_normal((n_items, 4)) * 0.5  # b's own vectors steer b
        sets = rng.standard_normal((1 + n_perm, 1, 4)) * 0.3 + rng.standard_normal((1 + n_perm, n_items, 4)) * 0.5
        sets[0] += planted
        boot = ItemBootstrap(rng.dirichlet(np.ones(n_items), size=50), frame)
        out = transfer_fraction(own, sets[0], rng.standard_normal((8, n_items, 4)), boot, sets[1:])
        rejected.append(out["null_p_permuted"] <= 0.05)
    rate = float(np.mean(rejected))
    print(f"transfer, planted {planted}: rejection rate {rate}")
    assert lowest <= rate <= highest
