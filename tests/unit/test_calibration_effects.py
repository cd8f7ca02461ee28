"""Calibration of the patching tests (residual cells and heads share :func:`emolens.phases.statistics.frame_tests`)
and of the decoding test (probe above chance, :func:`emolens.phases.vectors.decoding_test`).

Each simulated study has ``N_ITEMS`` items of 12 ordered pairs. A pair's clean separation is drawn
in [1, 3] logits, and its patching gain is separation x (the item's effect + pair noise): the item
effect (sd ``TAU``) is shared by the item's 12 pairs, which is what makes pairs dependent. Under no
effect the items' effects have mean 0; the planted effect sets their mean so that Cohen's d of the
item effects is ``D``. The false-positive rate must lie within alpha + 3 Monte-Carlo standard
errors, and the power must match what statsmodels' one-sample t-test power analysis
(``TTestPower``) predicts for d and the number of items, within 3 standard errors plus 0.03 (the
sign-flip test is close to, not exactly, the t-test). The same data tested with pairs as the unit
shows why the pair is not the unit: its false-positive rate is far above alpha. Items here are
i.i.d., so each is its own frame (the i.i.d. table); the design-based suite with frames and shared
templates is ``test_calibration_design.py``.

The decoding test's studies have 40 items x 4 emotions in 10 frames, three layers of width 16: item
content (sd 2, shared by an item's prompts) plus prompt noise (sd 1), and under the planted effect
each emotion adds ``DECODE_EFFECT`` along its own axis. Its false-positive rate is of the
family-wise decision (any layer significant, max-statistic over layers).

``python tests/unit/test_calibration_effects.py`` prints the rows for docs/statistics.md.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from statsmodels.stats.power import TTestPower

from emolens.phases.statistics import frame_tests
from emolens.phases.vectors import decoding_test
from emolens.stats.resampling import grouped_folds, sign_flip_pvalue

pytestmark = pytest.mark.slow  # hundreds of simulated studies

ALPHA, N_ITEMS, PAIRS, TAU, NOISE = 0.05, 30, 12, 0.3, 0.3
N_SIMS, N_PERM, D = 400, 199, 0.5
DECODE_SIMS, DECODE_POWER_SIMS, DECODE_EFFECT, DECODE_ITEMS = 200, 40, 1.0, 40
EMOTIONS4 = ("gratitude", "anger", "apology", "neutral")


def simulate(rng: np.random.Generator, d: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Gains [P, 1], separations [P] and items [P] of one study whose item effects have Cohen's d ``d``."""
    sd_item = np.sqrt(TAU**2 + NOISE**2 / PAIRS)  # sd of an item's effect r_i, about
    effect = rng.normal(d * sd_item, TAU, N_ITEMS)
    separation = rng.uniform(1, 3, (N_ITEMS, PAIRS))
    gain = separation * (effect[:, None] + rng.normal(0, NOISE, (N_ITEMS, PAIRS)))
    items = [f"i{i:02d}" for i in range(N_ITEMS) for _ in range(PAIRS)]
    return gain.reshape(-1, 1), separation.ravel(), items


@functools.cache
def rejection_rates(d: float) -> dict[str, float]:
    """How often the item-level test, and a pair-level test of the same data, reject at alpha."""
    rng = np.random.default_rng(int(d * 1000))
    item, pair = [], []
    for seed in range(N_SIMS):
        gain, separation, items = simulate(rng, d)
        item.append(frame_tests(gain, separation, items, items, 100, N_PERM, seed)["p_perm"][0] <= ALPHA)
        pair.append(sign_flip_pvalue(gain / separation[:, None], N_PERM, rng)[0] <= ALPHA)
    return {"item": float(np.mean(item)), "pair": float(np.mean(pair))}


def mc_error(rate: float) -> float:
    return float(np.sqrt(max(rate * (1 - rate), ALPHA * (1 - ALPHA)) / N_SIMS))


def test_item_level_test_holds_alpha_and_pair_level_does_not():
    rates = rejection_rates(0.0)
    assert rates["item"] <= ALPHA + 3 * mc_error(ALPHA)
    assert rates["pair"] > 3 * ALPHA  # twelve dependent pairs per item counted as twelve units


def test_power_matches_the_power_analysis():
    predicted = float(TTestPower().power(D, N_ITEMS, ALPHA))
    observed = rejection_rates(D)["item"]
    assert abs(observed - predicted) <= 3 * mc_error(predicted) + 0.03, (observed, predicted)


@functools.cache
def decoding_rejections(effect: float, n_sims: int) -> float:
    """How often the decoding test finds the emotion decodable at some layer (FWER-controlled) at alpha."""
    rng = np.random.default_rng(int(effect * 1000) + 7)
    items = np.repeat([f"i{i:02d}" for i in range(DECODE_ITEMS)], 4)
    labels = np.tile(EMOTIONS4, DECODE_ITEMS)
    fold = grouped_folds([f"f{i % 10}" for i in range(DECODE_ITEMS) for _ in range(4)], 5)
    y = np.tile(np.arange(4), DECODE_ITEMS)
    hits = []
    for seed in range(n_sims):
        x = (rng.normal(0, 2, (DECODE_ITEMS, 3, 16)).repeat(4, 0) + rng.normal(0, 1, (len(items), 3, 16))
             + effect * np.eye(4, 16)[y][:, None, :])
        hits.append(decoding_test(x, labels, items, fold, 99, seed)["p_fwer"].min() <= ALPHA)
    return float(np.mean(hits))


def test_decoding_test_holds_alpha_and_finds_a_planted_emotion():
    fpr = decoding_rejections(0.0, DECODE_SIMS)
    assert fpr <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / DECODE_SIMS)
    assert decoding_rejections(DECODE_EFFECT, DECODE_POWER_SIMS) >= 0.8


def calibration_rows() -> list[str]:
    """Markdown rows: test, null, false-positive rate, power (observed vs predicted), simulations."""
    null, planted = rejection_rates(0.0), rejection_rates(D)
    predicted = float(TTestPower().power(D, N_ITEMS, ALPHA))
    return [
        f"| residual cell / head effect (item sign-flip) | effect 0 | {null['item']:.3f} ({mc_error(ALPHA):.3f}) "
        f"| d={D}: {planted['item']:.2f} (t-test analysis: {predicted:.2f}) | {N_SIMS} + {N_SIMS} |",
        f"| the same data, pairs as units (not used) | effect 0 | {null['pair']:.3f} | - | {N_SIMS} |",
        f"| probe above chance (ridge decoding test, FWER over layers) | within-item label permutation "
        f"| {decoding_rejections(0.0, DECODE_SIMS):.3f} ({np.sqrt(ALPHA * (1 - ALPHA) / DECODE_SIMS):.3f}) "
        f"| {DECODE_EFFECT} per emotion axis: {decoding_rejections(DECODE_EFFECT, DECODE_POWER_SIMS):.2f} "
        f"| {DECODE_SIMS} + {DECODE_POWER_SIMS} |",
    ]


if __name__ == "__main__":
    print("\n".join(calibration_rows()))
