"""Calibration suite v2: every label-reading test on data simulated from the real design.

Each simulated dataset keeps the built-in dataset's design exactly: its 900 prompts, their 225
items, 64 frames and 2 registers (``emolens.data.dataset.build_dataset``). Two "models" (widths 16 and
20, two layers each) embed a shared latent (dimension 8) through their own random maps and add
their own noise (sd 1). The latent of a prompt is its item's content (sd 1, shared by the item's
prompts), plus the *template* of its (frame, emotion slot) (sd ``TEMPLATE`` per latent dimension,
shared by the frame's items and by both models: what the frame's sentence for that emotion does
to any model), plus a *length* nuisance along a fixed latent axis whose value depends on the
(frame, slot) (sd ``LENGTH``; within a frame the emotions differ in length, but which emotion is
longest varies by frame), plus ``effect`` x the emotion's mean (``EMOTION_MEANS``: norms 2, 1,
0.5 and 0 on three latent axes, so the six distances differ; shared by every frame: the planted
emotion; ``EFFECT`` = 1). Under the null (``effect`` = 0) the
labels mark template slots and nothing else: the case the audit found item-level inference calls
emotion structure. The patching tests get per-pair gains with a frame effect (sd 0.3) and an item
effect (sd 0.1) around a mean that is 0 under the null and ``PATCH_EFFECT`` planted (d about 0.6
over frames); the probe-vs-lexical test gets per-prompt correctness with a frame difficulty shared
by probe and baseline, the planted probe ``PROBE_GAIN`` more accurate at one layer.

Every row calls the functions the workflow calls with the workflow's unit (frames: split by frame
and register, labels permuted by frame, sign flips of frame means, two-stage bootstrap), at alpha
0.05 with ``N_PERM`` permutations; the false-positive rate over ``N_SIMS`` null datasets must lie
within alpha + 3 Monte-Carlo standard errors, and the power at the planted effect above
``MIN_POWER``. The rows marked "items as unit" rerun the same data with the v2 unit (item split,
labels permuted within items) to show what the frame unit fixes. A nuisance that predicts the
emotion the same way in every frame (neutral always shortest) is indistinguishable from emotion
for any label test: that is for the dataset to remove, not for the statistics.

``python tests/unit/test_calibration_design.py`` prints the table for docs/statistics.md; ``pytest -s``
prints every row.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from emolens.data.dataset import build_dataset
from emolens.phases.aligned_dims import k_axis_scores, k_decision
from emolens.phases.alignment import split_halves
from emolens.phases.emotion_structure import (
    label_structure,
    permuted_labels,
    rsa_cross_validated,
    subspace_cosines,
    transfer_cosines,
)
from emolens.phases.statistics import frame_tests
from emolens.phases.vectors import decoding_test, probe_minus_lexical
from emolens.stats.geometry import item_centred
from emolens.stats.resampling import frame_slot_permutations, grouped_folds, perm_pvalue
from emolens.stats.similarity import center_gram, gram_cka, gram_permutation_null

pytestmark = pytest.mark.slow  # hundreds of studies: one test per table column, so no study runs twice

ALPHA, N_PERM, N_SIMS, N_POWER = 0.05, 99, 200, 40
LATENT, WIDTHS, N_LAYERS, TEMPLATE, LENGTH = 8, (16, 20), 2, 0.5, 1.0
EFFECT, MIN_POWER, PATCH_EFFECT, PROBE_GAIN = 1.0, 0.75, 0.2, 0.1
EMOTION_MEANS = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])  # unequal distances


@functools.cache
def design() -> dict[str, np.ndarray]:
    """The built-in dataset's items, frames, registers and emotion codes."""
    records = build_dataset()
    codes = np.unique([r["emotion"] for r in records], return_inverse=True)[1].ravel()
    return {"items": np.array([r["item_id"] for r in records]), "frames": np.array([r["frame"] for r in records]),
            "registers": np.array([r["register"] for r in records]), "codes": codes}


def simulate(rng: np.random.Generator, effect: float, shared_templates: bool = True) -> dict[str, np.ndarray]:
    """Two models' activations [n, layers, width] of one dataset built like ours (module docstring);
    with ``shared_templates`` False each model has its own templates and length nuisance."""
    d = design()
    items, frames, codes = (np.unique(d[k], return_inverse=True)[1] for k in ("items", "frames", "codes"))
    slot = frames * 4 + codes  # (frame, emotion slot)
    n, n_slots = len(codes), frames.max() * 4 + 4

    def templates() -> np.ndarray:  # [n_slots, LATENT]: each slot's template, and its length on the last axis
        return TEMPLATE * rng.standard_normal((n_slots, LATENT)) + LENGTH * np.outer(rng.standard_normal(n_slots),
                                                                                     np.eye(LATENT)[-1])

    base = rng.standard_normal((items.max() + 1, LATENT))[items] + effect * np.pad(
        EMOTION_MEANS, ((0, 0), (0, LATENT - 3)))[codes]
    shared = templates()
    models = []
    for width in WIDTHS:
        latent = base + (shared if shared_templates else templates())[slot]
        models.append(np.stack([latent @ rng.standard_normal((LATENT, width)) / np.sqrt(LATENT)
                                + rng.standard_normal((n, width)) for _ in range(N_LAYERS)], 1))
    return {"a": models[0], "b": models[1]}


def label_tests(data: dict[str, np.ndarray], rng: np.random.Generator, unit: str = "frames") -> dict[str, float]:
    """p-values of transfer, subspace and RSA (last layer), and k (all layers), with ``unit`` as the unit."""
    d = design()
    groups, registers = (d["frames"], d["registers"]) if unit == "frames" else (d["items"], None)
    split = split_halves(groups, registers, 0)
    labels = permuted_labels(d["codes"], groups, N_PERM, rng)
    grams = [label_structure(data["a"][:, layer], data["b"][:, layer], d["items"], split, labels, 0.1)
             for layer in range(N_LAYERS)]
    stats = {"transfer": transfer_cosines(grams[-1]).mean(1), "subspace": subspace_cosines(grams[-1]).mean(1),
             "rsa": rsa_cross_validated(grams[-1])}
    out = {name: perm_pvalue(s[0], s[1:]) for name, s in stats.items()}
    scores = np.stack([k_axis_scores(g, 3) for g in grams], axis=1)  # [P+1, layers, 3]
    out["k"] = float(k_decision(scores, ALPHA)["k"].max())
    return out


def decoding(data: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """Family-wise decoding-test p (min over layers) of model a, frames held out and permuted by frame."""
    d = design()
    fold = grouped_folds(list(d["frames"]), 5)
    out = decoding_test(data["a"], d["codes"].astype(str), d["frames"], fold, N_PERM, seed)
    return {"decoding": float(out["p_fwer"].min())}


def similarity(data: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, float]:
    """Item-centred linear CKA (last layer) against correspondence shuffled within items by frame (label-free)."""
    d = design()
    items = d["items"]
    ca, cb = item_centred(data["a"][:, -1], items), item_centred(data["b"][:, -1], items)
    ga, gb = center_gram(ca @ ca.T), center_gram(cb @ cb.T)
    within = frame_slot_permutations(d["codes"], items, d["frames"], N_PERM, 4, rng)
    return {"cka_item_centred": perm_pvalue(gram_cka(ga, gb), gram_permutation_null(ga, gb, within, rng))}


def patching(rng: np.random.Generator, mean: float, unit: str = "frames") -> dict[str, float]:
    """Frame sign-flip p of one cell whose pair gains carry frame (sd 0.3) and item (sd 0.1) effects."""
    d = design()
    items, frames = np.unique(d["items"]), d["frames"][::4]  # one frame per item, items in order
    f = np.unique(frames, return_inverse=True)[1]
    effect = mean + rng.normal(0, 0.3, f.max() + 1)[f] + rng.normal(0, 0.1, len(items))  # [items]
    pair_items = np.repeat(items, 12)
    separation = rng.uniform(1, 3, len(pair_items))
    gain = separation * (np.repeat(effect, 12) + rng.normal(0, 0.3, len(pair_items)))
    groups = np.repeat(frames, 12) if unit == "frames" else pair_items
    return {"patching": float(frame_tests(gain[:, None], separation, pair_items, groups, 100, 999,
                                          int(rng.integers(1 << 30)))["p_perm"][0])}


def probe_vs_lexical(rng: np.random.Generator, gain: float) -> dict[str, float]:
    """1 if probe minus lexical is declared above 0 at some layer (simultaneous band), else 0.

    Correct/incorrect per prompt with a frame difficulty (sd 0.15) shared by probe and lexical;
    under the null all three layers have the lexical accuracy (0.6), the planted one adds ``gain``
    at the last layer.
    """
    d = design()
    f = np.unique(d["frames"], return_inverse=True)[1]
    difficulty = rng.normal(0, 0.15, f.max() + 1)[f]
    lexical = rng.random(len(f)) < 0.6 + difficulty
    correct = np.stack([rng.random(len(f)) < 0.6 + difficulty + (gain if layer == 2 else 0.0) for layer in range(3)])
    out = probe_minus_lexical(correct, lexical, d["items"], d["frames"], 400, int(rng.integers(1 << 30)))
    return {"probe_above_lexical": 0.0 if out["first_above"] is None else 1.0}


ROWS = {  # test -> (null, how the p-value is computed)
    "decoding": "labels permuted by frame; frames held out in the folds; FWER over layers",
    "patching": "sign flips of frame effects",
    "transfer": "labels permuted by frame, halves split by frame",
    "subspace": "labels permuted by frame, halves split by frame",
    "rsa": "labels permuted by frame, halves split by frame",
    "k": "labels permuted by frame, max-statistic over layers and k (rejects: k > 0)",
    "probe_above_lexical": "simultaneous 95% band (two-stage frame bootstrap) above 0 at some layer",
    "cka_item_centred": "correspondence shuffled within items, one slot permutation per frame; null: templates "
                        "and length each model's own "
                        "(label-free, so shared templates pass it: 1.00)",
}


def study(seed: int, effect: float, unit: str = "frames") -> dict[str, float]:
    """Every test's p-value (k: its value; probe_above_lexical: its decision) on one simulated dataset."""
    rng = np.random.default_rng([seed, int(effect * 100), unit == "frames"])
    data = simulate(rng, effect)
    out = label_tests(data, rng, unit) | patching(rng, PATCH_EFFECT if effect else 0.0, unit)
    if unit == "frames":
        out |= decoding(data, seed) | probe_vs_lexical(rng, PROBE_GAIN if effect else 0.0)
        out |= similarity(data if effect else simulate(rng, 0.0, shared_templates=False), rng)
    return out


@functools.cache
def rejections(effect: float, n_sims: int, unit: str = "frames") -> dict[str, float]:
    """Per test, the share of simulated datasets where it rejects at alpha (k: where k > 0)."""
    runs = [study(seed, effect, unit) for seed in range(n_sims)]
    out = {}
    for name in runs[0]:
        values = np.array([r[name] for r in runs])
        out[name] = float(np.mean(values > 0)) if name in ("k", "probe_above_lexical") else float(
            np.mean(values <= ALPHA))
    return out


def mc_error(rate: float, n: int) -> float:
    return float(np.sqrt(max(rate * (1 - rate), ALPHA * (1 - ALPHA)) / n))


def test_false_positive_rates_on_the_design_are_within_alpha():
    rates, bound = rejections(0.0, N_SIMS), ALPHA + 3 * mc_error(ALPHA, N_SIMS)
    print("".join(f"\n{name}: FPR {rates[name]:.3f} over {N_SIMS} null datasets built like ours" for name in ROWS))
    assert {name: rate for name, rate in rates.items() if rate > bound} == {}, bound


def test_power_on_the_design_under_a_planted_effect():
    rates = rejections(EFFECT, N_POWER)
    print("".join(f"\n{name}: power {rates[name]:.3f} over {N_POWER} planted datasets" for name in ROWS))
    assert {name: rate for name, rate in rates.items() if rate < MIN_POWER} == {}


def test_items_as_the_unit_call_templates_emotion():
    """The v2 unit on the same null data: the label tests and the item sign flip reject far too often."""
    rates = rejections(0.0, N_POWER, "items")
    print(f"\nitems as the unit, null: {rates}")
    assert rates["transfer"] > 0.15 and rates["k"] > 0.15 and rates["patching"] > 0.15


def table() -> str:
    """The docs/statistics.md table: test, null, FPR (MC SE), power, simulations."""
    started = time.time()
    null, planted, items = rejections(0.0, N_SIMS), rejections(EFFECT, N_POWER), rejections(0.0, N_POWER, "items")
    lines = ["| test | null | FPR under no emotion (MC SE) | same data, items as unit | power (planted) | sims |",
             "|---|---|---|---|---|---|"]
    for name, how in ROWS.items():
        old = f"{items[name]:.3f}" if name in items else "-"
        lines.append(f"| {name} | {how} | {null[name]:.3f} ({mc_error(null[name], N_SIMS):.3f}) | {old} | "
                     f"{planted[name]:.2f} | {N_SIMS}+{N_POWER} |")
    return "\n".join(lines) + f"\n\n({time.time() - started:.0f} s)"


if __name__ == "__main__":
    print(table())
