"""Calibration suite: every phase-4 test and k hold their false-positive rate and find a planted effect.

Each simulated dataset has ``N_ITEMS`` items x 4 emotions. Two "models" (widths 12 and 16, three
layers each) are independent random linear maps (isometric embeddings with axis scales in [0.5,
1.5]) of a shared latent (dimension 8) plus their own noise (sd 0.5). The latent of a prompt = its
item's content (sd 2, shared by the item's four prompts) + prompt content (sd 1) + ``effect`` x its
emotion's mean (shared by both models).
Null scenarios, the labels carrying nothing (``effect`` = 0):

- label tests (transfer, subspace, RSA, k): the prompt content is shared by both models, so the
  models agree on how each item's four prompts differ, only not by emotion: the hard case for a null
  that must isolate emotion;
- item-centred similarity (CKA, debiased CKA, mutual k-NN, Procrustes): the prompt content is each
  model's own, so nothing within items is shared.

Planted scenarios add ``effect`` x ``EMOTION_MEANS`` (a fixed configuration in three latent
dimensions with unequal distances; the latent prompt noise has sd 1 per dimension): at effect 0.5
the emotion explains 5.5% of the latent within-item variance, at 1.5 34.5%. Every test runs
``N_PERM`` permutations at alpha = 0.05; the false-positive rate over ``N_SIMS`` null datasets must
lie within alpha + 3 Monte-Carlo standard errors, and the power at the largest effect above
``MIN_POWER``. No closed-form power analysis applies to these permutation tests; power is measured
here. (A 1000-dataset run of the label null gave 0.053 transfer, 0.038 subspace, 0.053 RSA, and
P(k > 0) = 0.020.)

``python tests/unit/test_calibration.py`` prints the table for docs/statistics.md ("How the statistics are
calibrated"); ``pytest -s`` prints one row per test.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from emolens.phases.aligned_dims import k_axis_scores, k_decision
from emolens.phases.alignment import split_halves
from emolens.phases.emotion_structure import (
    label_structure,
    permuted_labels,
    rsa_cross_validated,
    subspace_cosines,
    transfer_cosines,
)
from emolens.stats.geometry import item_centred
from emolens.stats.resampling import perm_pvalue, within_group_permutations
from emolens.stats.similarity import (
    center_gram,
    gram_cka,
    gram_permutation_null,
    knn_indices,
    knn_overlap,
    knn_permutation_null,
    pca_scores,
    permutation_null,
    procrustes_score,
    u_center_gram,
)

pytestmark = pytest.mark.slow  # hundreds of simulated studies

ALPHA, N_PERM, N_ITEMS, N_LAYERS = 0.05, 99, 40, 3
N_SIMS = {"label": 400, "similarity": 200}  # null datasets per scenario (label tests are cheap)
N_POWER_SIMS = 100  # planted datasets per effect size
WIDTHS, LATENT = (12, 16), 8
EFFECTS = (0.5, 1.5)  # planted effect sizes: multiples of EMOTION_MEANS (latent prompt noise sd = 1)
MIN_POWER = 0.8  # at the largest effect
# planted emotion means in three latent dimensions (gratitude, anger, apology, neutral): unequal distances
EMOTION_MEANS = np.array([[1.5, 0.0, 0.0], [-1.5, 1.0, 0.0], [-0.5, -1.0, 0.5], [0.5, 0.0, -0.5]])
LABEL_TESTS = ("transfer_cosine_mean", "subspace_mean_cos", "rsa", "k")
SIMILARITY_TESTS = ("linear_cka_item_centred", "debiased_cka_item_centred", "mutual_knn_item_centred",
                    "procrustes_item_centred")


def embedding(rng: np.random.Generator, width: int) -> np.ndarray:
    """[LATENT, width] random linear map: a random isometric embedding with axis scales drawn in [0.5, 1.5]."""
    q = np.linalg.qr(rng.standard_normal((width, LATENT)))[0].T  # [LATENT, width], orthonormal rows
    return rng.uniform(0.5, 1.5, LATENT)[:, None] * q


def simulate(rng: np.random.Generator, effect: float, shared_prompt: bool) -> dict[str, np.ndarray]:
    """One dataset: activations [n, N_LAYERS, width] of two models, labels, items (see the module doc)."""
    n = 4 * N_ITEMS
    items = np.repeat(np.arange(N_ITEMS), 4)
    codes = np.concatenate([rng.permutation(4) for _ in range(N_ITEMS)])  # each item: all four emotions
    means = np.zeros((4, LATENT))
    means[:, :3] = EMOTION_MEANS
    base = 2.0 * rng.standard_normal((N_ITEMS, LATENT))[items] + effect * means[codes]  # [n, LATENT]
    prompt = rng.standard_normal((n, LATENT))
    models = []
    for width in WIDTHS:
        own = prompt if shared_prompt else rng.standard_normal((n, LATENT))
        latent = base + own
        models.append(np.stack([latent @ embedding(rng, width) + 0.5 * rng.standard_normal((n, width))
                                for _ in range(N_LAYERS)], 1))
    return {"a": models[0], "b": models[1], "codes": codes, "items": items}


def label_tests(data: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, float]:
    """p-values of the three emotion-specific alignment tests (last layer) and k (all layers)."""
    items, codes = data["items"], data["codes"]
    split = split_halves(items, None, 0)
    labels = permuted_labels(codes, items, N_PERM, rng)
    grams = [label_structure(data["a"][:, layer], data["b"][:, layer], items, split, labels, 0.1)
             for layer in range(N_LAYERS)]
    last = grams[-1]
    stats = {"transfer_cosine_mean": transfer_cosines(last).mean(1),
             "subspace_mean_cos": subspace_cosines(last).mean(1), "rsa": rsa_cross_validated(last)}
    out = {name: perm_pvalue(s[0], s[1:]) for name, s in stats.items()}
    scores = np.stack([k_axis_scores(g, 3) for g in grams], axis=1)  # [P+1, layers, 3]
    out["k"] = float(k_decision(scores, ALPHA)["k"].max())
    return out


def similarity_tests(data: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, float]:
    """p-values of the item-centred similarity tests (last layer) under the within-item correspondence null."""
    items = data["items"]
    split = split_halves(items, None, 0)
    ca, cb = item_centred(data["a"][:, -1], items), item_centred(data["b"][:, -1], items)
    within = within_group_permutations(items, N_PERM, rng)
    ga, gb = center_gram(ca @ ca.T), center_gram(cb @ cb.T)
    ua, ub = u_center_gram(ca @ ca.T), u_center_gram(cb @ cb.T)
    na, nb = knn_indices(ca, 10), knn_indices(cb, 10)
    xs, ys = pca_scores(ca, 6, split[0]), pca_scores(cb, 6, split[0])

    def procrustes(x, y):
        return procrustes_score(x, y, *split)

    return {
        "linear_cka_item_centred": perm_pvalue(gram_cka(ga, gb), gram_permutation_null(ga, gb, within, rng)),
        "debiased_cka_item_centred": perm_pvalue(gram_cka(ua, ub), gram_permutation_null(ua, ub, within, rng)),
        "mutual_knn_item_centred": perm_pvalue(knn_overlap(na, nb), knn_permutation_null(na, nb, within, rng)),
        "procrustes_item_centred": perm_pvalue(procrustes(xs, ys), permutation_null(procrustes, xs, ys, within, rng)),
    }


@functools.cache
def simulations(kind: str, effect: float) -> tuple[dict[str, np.ndarray], float]:
    """Datasets of one scenario: each test's p-values (k: the chosen k) and the seconds they took."""
    started = time.perf_counter()
    rng = np.random.default_rng([1 if kind == "label" else 2, int(100 * effect)])
    run = label_tests if kind == "label" else similarity_tests
    n_sims = N_SIMS[kind] if effect == 0 else N_POWER_SIMS
    rows = [run(simulate(rng, effect, shared_prompt=kind == "label"), rng) for _ in range(n_sims)]
    return {name: np.array([r[name] for r in rows]) for name in rows[0]}, time.perf_counter() - started


def _kind(test: str) -> str:
    return "label" if test in LABEL_TESTS else "similarity"


def rejection_rate(test: str, effect: float) -> float:
    """Share of simulated datasets in which the test rejects (k: chooses k > 0)."""
    values = simulations(_kind(test), effect)[0][test]
    return float(np.mean(values > 0) if test == "k" else np.mean(values <= ALPHA))


def calibration_rows() -> list[dict[str, object]]:
    """One row per test: false-positive rate under the null, power at each planted effect, runtime."""
    rows = []
    for test in (*LABEL_TESTS, *SIMILARITY_TESTS):
        kind = _kind(test)
        row: dict[str, object] = {"test": test, "fpr": rejection_rate(test, 0.0),
                                  "power": {e: rejection_rate(test, e) for e in EFFECTS},
                                  "seconds": sum(simulations(kind, e)[1] for e in (0.0, *EFFECTS))}
        if test == "k":
            row["k3"] = float(np.mean(simulations(kind, EFFECTS[-1])[0]["k"] == 3))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, object]]) -> str:
    """The docs/statistics.md table: test, null, false-positive rate, power at the planted effects, sims, time."""
    power_cols = " | ".join(f"power, effect {e}" for e in EFFECTS)
    lines = [f"| test | null | false-positive rate at alpha {ALPHA} (MC SE) "
             f"| {power_cols} | simulations | seconds, 1 core (scenario, all its tests) |",
             "|---|---|---|" + "---|" * len(EFFECTS) + "---|---|"]
    for r in rows:
        label = r["test"] in LABEL_TESTS
        n_null = N_SIMS[_kind(str(r["test"]))]
        fpr = f"{r['fpr']:.3f} ({np.sqrt(ALPHA * (1 - ALPHA) / n_null):.3f})"
        fpr = f"P(k > 0) = {fpr}" if r["test"] == "k" else fpr
        power = " | ".join(f"{p:.2f}" for p in r["power"].values())
        if r["test"] == "k":
            power += f" (k = 3, the planted rank: {r['k3']:.2f})"
        lines.append(f"| {r['test']} | {'within-item label permutation' if label else 'within-item correspondence'} "
                     f"| {fpr} | {power} | {n_null} null + {N_POWER_SIMS} per effect, {N_PERM} permutations "
                     f"| {r['seconds']:.1f} |")
    shares = ", ".join(f"{emotion_share(e):.1%} at {e}" for e in EFFECTS)
    lines.append(f"\nPlanted effect e: emotion means e x EMOTION_MEANS, shared by both models, explaining {shares} "
                 "of the latent within-item variance; k's power is P(k > 0).")
    return "\n".join(lines)


def emotion_share(effect: float) -> float:
    """Share of the latent within-item variance that the planted emotion means explain at ``effect``."""
    between = effect**2 * float((EMOTION_MEANS**2).sum(1).mean())
    return between / (between + LATENT)


@pytest.mark.parametrize("test", [*LABEL_TESTS, *SIMILARITY_TESTS])
def test_false_positive_rate_is_within_alpha(test):
    fpr, n_sims = rejection_rate(test, 0.0), N_SIMS[_kind(test)]
    bound = ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / n_sims)
    print(f"\n{test}: false-positive rate {fpr:.3f} over {n_sims} null datasets (bound {bound:.3f})")
    assert fpr <= bound


@pytest.mark.parametrize("test", [*LABEL_TESTS, *SIMILARITY_TESTS])
def test_power_under_planted_effect(test):
    power = {e: rejection_rate(test, e) for e in EFFECTS}
    print(f"\n{test}: power {power} over {N_POWER_SIMS} datasets per planted effect")
    assert power[EFFECTS[-1]] >= MIN_POWER and power[EFFECTS[0]] <= power[EFFECTS[-1]]


def test_table_has_a_row_per_test():
    table = markdown_table(calibration_rows())
    print("\n" + table)
    assert all(f"| {t} |" in table for t in (*LABEL_TESTS, *SIMILARITY_TESTS))


if __name__ == "__main__":
    print(markdown_table(calibration_rows()))
