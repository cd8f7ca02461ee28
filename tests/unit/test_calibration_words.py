"""Calibration of phase 4's words control and of the RDM over cells, on data built like ours.

The built-in dataset's 900 prompts (225 items, 64 frames, 2 registers) and their real texts; two "models"
(widths 24 and 32) read a prompt through their own random maps of a shared latent plus their own noise (sd 1).
Three worlds:

- no emotion: the latent is the item's content (sd 1) and a (frame, slot) template (sd 0.5): the labels mark
  template slots and nothing else;
- words only: the latent is a fixed random linear function of the prompt's words (its TF-IDF word 1-2-grams,
  :func:`emolens.stats.words.word_features`) plus the item's content: the emotion reaches the models only
  through the words that carry it (the explicit texts name it);
- beyond the words: words only, plus an emotion mean shared by every frame (norms 2, 1, 0.5, 0) that no word
  carries: the planted emotion.

Each world is scored by the transfer cosine (an emotion-specific test of phase 4: labels permuted by frame,
``N_PERM`` labellings) and the RDM over emotion x frame cells (b's cells relabelled by frame), raw and with the
words partialled out (:func:`emolens.stats.words.words_partialled`, as the workflow). The rates: the
false-positive rate under no emotion, the rate at which the words-only emotion is still called significant
after the control (the control's leak), and the power under the planted one. The RDM rejects under no emotion
too: a frame's cells carry its templates, which both models share, so it belongs with the label-free
"emotion alike" tests, not the emotion-specific ones. ``python tests/unit/test_calibration_words.py`` prints
the table for docs/statistics.md at ``N_SIMS`` = 200.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

from emolens.data.dataset import build_dataset
from emolens.phases.alignment import make_design, split_halves
from emolens.phases.emotion_structure import (
    cv_rdm,
    emotion_grams,
    label_codes,
    permuted_labels,
    rdm_spearman,
    transfer_cosines,
)
from emolens.stats.geometry import item_centred
from emolens.stats.resampling import codes_of, frame_groups, perm_pvalue
from emolens.stats.similarity import fit_linear_map
from emolens.stats.words import word_features, words_partialled

ALPHA, N_PERM, RIDGE = 0.05, 19, 0.1
LATENT, WIDTHS, TEMPLATE = 8, (24, 32), 0.5
EMOTION_NORMS = (2.0, 1.0, 0.5, 0.0)


@functools.cache
def design() -> dict:
    records = build_dataset()
    frames, items = np.asarray(frame_groups(records)), np.array([r["item_id"] for r in records])
    registers = np.array([r["register"] for r in records])
    split = split_halves(frames, registers, 0)
    words = word_features([r["text"] for r in records], split[0])
    return {"frames": frames, "items": items, "codes": label_codes([r["emotion"] for r in records]),
            "split": split, "words": words}


def simulate(world: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two models' activations [n, 24], [n, 32] of one simulated study in ``world``."""
    d = design()
    n = len(d["items"])
    latent = rng.standard_normal((codes_of(d["items"]).max() + 1, LATENT))[codes_of(d["items"])]  # item content
    if world == "no emotion":
        slots = codes_of(d["frames"]) * 4 + d["codes"]
        latent = latent + TEMPLATE * rng.standard_normal((slots.max() + 1, LATENT))[slots]
    else:
        words = d["words"] @ rng.standard_normal((d["words"].shape[1], LATENT))
        latent = latent + words / words.std(0)
    if world == "beyond the words":
        means = np.zeros((4, LATENT))
        means[np.arange(3), np.arange(3)] = EMOTION_NORMS[:3]
        latent = latent + means[rng.permutation(4)][d["codes"]]
    return tuple(latent @ rng.standard_normal((LATENT, w)) + rng.standard_normal((n, w)) for w in WIDTHS)


def pvalues(xa: np.ndarray, xb: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    """Transfer cosine and RDM rho p-values of one study, as phase 4 computes them."""
    d = design()
    labels = permuted_labels(d["codes"], d["frames"], N_PERM, rng)
    des = make_design(d["items"], d["frames"], labels, d["split"], 0, rng)
    ca, cb = item_centred(xa, d["items"]), item_centred(xb, d["items"])
    lmap = fit_linear_map(xa[des.split[0]], xb[des.split[0]], RIDGE)
    transfer = transfer_cosines(emotion_grams(ca, cb, lmap.directions(ca[des.split[0]]), des.split,
                                              labels)).mean(1)
    rho = rdm_spearman(cv_rdm(ca, des.cells), cv_rdm(cb, des.cells), des.sigma)
    return {"transfer": perm_pvalue(transfer[0], transfer[1:]), "rdm": perm_pvalue(rho[0], rho[1:])}


def rates(world: str, n_sims: int, seed: int = 0) -> dict[str, float]:
    """Share of studies significant at ALPHA, per test, raw and with the words partialled out."""
    rng, d, hits = np.random.default_rng(seed), design(), {}
    for _ in range(n_sims):
        xa, xb = simulate(world, rng)
        controlled = [words_partialled(x, d["words"], d["split"], RIDGE) for x in (xa, xb)]
        for section, (a, b) in (("raw", (xa, xb)), ("words_partialled", controlled)):
            for test, p in pvalues(a, b, rng).items():
                hits[f"{test} {section}"] = hits.get(f"{test} {section}", 0) + (p <= ALPHA)
    return {k: v / n_sims for k, v in hits.items()}


def bound(n_sims: int) -> float:
    """alpha + 3 Monte-Carlo standard errors."""
    return ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / n_sims)


def test_words_partialled_removes_what_the_words_predict_and_keeps_the_rest():
    d, rng = design(), np.random.default_rng(1)
    fit, test = d["split"]
    shared = (d["words"][fit] != 0).any(0) & (d["words"][test] != 0).any(0)  # words both halves use
    lexical = d["words"][:, shared] @ rng.standard_normal((shared.sum(), 6))
    other = rng.standard_normal((len(lexical), 6))
    left = words_partialled(np.stack([lexical, other], 1), d["words"], d["split"], RIDGE)  # [n, 2, 6]: axes kept
    assert left.shape == (len(lexical), 2, 6)
    # a map learned on the other half's frames removes part of any function of the shared words (0.71 of its norm
    # is left at ridge 0.1: rare words are shrunk), and almost none of what no word predicts
    assert np.linalg.norm(left[:, 0]) < 0.8 * np.linalg.norm(lexical - lexical.mean(0))
    assert np.linalg.norm(left[:, 1]) > 0.9 * np.linalg.norm(other)  # what no word predicts stays
    # cross-fitted: one half's residuals do not depend on its own activations
    moved = np.stack([lexical, other], 1).copy()
    moved[fit[:5]] += 100.0
    again = words_partialled(moved, d["words"], d["split"], RIDGE)
    assert np.abs(again[fit[5:]] - left[fit[5:]]).max() < 1e-8
    assert np.abs(again[test] - left[test]).max() > 1e-3


N_TEST = 16  # studies per world in the test run (the table: 100)


@pytest.mark.slow
def test_words_control_is_calibrated_and_keeps_power():
    null = rates("no emotion", N_TEST)
    assert null["transfer raw"] <= bound(N_TEST) and null["transfer words_partialled"] <= bound(N_TEST), null
    assert null["rdm raw"] >= 0.75, null  # the cells carry their frame's templates: an emotion-alike test, no more
    lexical = rates("words only", N_TEST, seed=1)
    assert lexical["transfer raw"] >= 0.3, lexical  # the words carry the emotion: raw tests find it
    assert lexical["transfer words_partialled"] <= bound(N_TEST), lexical  # the control removes it
    planted = rates("beyond the words", N_TEST, seed=2)
    assert planted["transfer raw"] >= 0.75 and planted["transfer words_partialled"] >= 0.4, planted


if __name__ == "__main__":
    n_sims = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(f"| world | test | raw | words partialled | (alpha {ALPHA}, {N_PERM} frame permutations, {n_sims} studies, "
          f"bound {bound(n_sims):.3f}) |")
    for i, world in enumerate(("no emotion", "words only", "beyond the words")):
        r = rates(world, n_sims, seed=i)
        for test in ("transfer", "rdm"):
            print(f"| {world} | {test} | {r[f'{test} raw']:.3f} | {r[f'{test} words_partialled']:.3f} |")
