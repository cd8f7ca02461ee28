"""Cross-model alignment of emotion representations (phase 4).

Methods. Two models a and b read the same prompts; each item is one scenario written in all the
run's emotions. We compare their residual streams at the readout position, layer l of a against layer
round(l * Lb / La) of b (matched relative depth), and as a full layer x layer matrix of linear CKA. The
frames are split once (seeded, stratified by register) into a fit half and a held-out half; no frame
(and so no template) is in both. Every measure answers one of three questions, has its own null, and
belongs to that question's Benjamini-Hochberg family (:mod:`emolens.phases.alignment_summary`).

1. Texts alike, on raw activations: linear CKA, debiased CKA, mutual k-NN overlap and held-out
   Procrustes R^2 (:mod:`emolens.stats.similarity`). Null: the prompt correspondence shuffled.
2. Emotion alike, the same on item-centred activations (each prompt minus its item's mean: what
   varies inside a scenario), and the cross-validated RDM over emotion x frame cells (Spearman rho of
   unbiased distances from two halves of each frame's items). Null: the correspondence shuffled
   within items, one permutation of the emotions per frame (for the RDM: b's cells relabelled so).
   They read no label, so they cannot tell the emotion from the frame's template for it.
3. Emotion-specific: transfer cosine, subspace cosine and cross-validated RSA of the emotion means
   through a ridge map (:mod:`emolens.phases.emotion_structure`). Null: the labels permuted by frame
   (a frame's template moves with its label), every label-dependent quantity recomputed.

Each question is asked in sections (:data:`SECTIONS`): every prompt (all measures), and with the
:data:`CONTROL_MEASURES` on each register alone and with the words partialled out of both models
(:mod:`emolens.stats.words`). A pair's kind (:data:`KINDS`) is two models, a model against the words
reference (the prompts' words as a one-layer model, :mod:`emolens.phases.words`) or a model against
its twin (the same model in another numeric build or seed): the ceiling of every measure.
p-values are one-sided, (1 + #{null >= observed}) / (1 + n_perm); :data:`DESCRIPTIVE` numbers have none.
Self cells (a model against itself at its last block: 1) are verification checks. Output:
``alignment/<a>__<b>.pkl`` (schema ``emolens.alignment/1``, every null draw).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.io import load_pickle, provenance, save_pickle
from emolens.phases.emotion_structure import (
    Cells,
    cell_permutations,
    cv_rdm,
    emotion_frame_cells,
    emotion_grams,
    label_codes,
    permuted_labels,
    rdm_spearman,
    rsa_cross_validated,
    subspace_cosines,
    transfer_cosines,
)
from emolens.phases.words import words_of
from emolens.stats import families
from emolens.stats.geometry import item_centred
from emolens.stats.resampling import frame_halves, frame_slot_permutations, perm_pvalue
from emolens.stats.similarity import (
    Perms,
    center_gram,
    fit_linear_map,
    gram_cka,
    gram_permutation_null,
    knn_indices,
    knn_overlap,
    knn_permutation_null,
    map_r2,
    pca_scores,
    permutation_null,
    principal_angles,
    procrustes_score,
    rsa,
    u_center_gram,
)
from emolens.stats.words import words_partialled

SCHEMA = "emolens.alignment/1"
FAMILIES = families.ALIGNMENT
_SHUFFLE_ALL = "prompt correspondence shuffled across all prompts"
_SHUFFLE_ITEMS = ("prompt correspondence shuffled within items, one slot permutation per frame for all its items "
                  "(rows of b permuted within item blocks)")
_LABELS = ("emotion labels permuted by frame (one permutation per frame, all its items), the measure recomputed "
           "from scratch (map fit once)")
# measure -> family (None: descriptive, no p-value), question, null
MEASURE_TABLE: dict[str, dict[str, str | None]] = {
    "linear_cka": {"family": "texts_alike", "question": "linear CKA of raw activations", "null": _SHUFFLE_ALL},
    "debiased_cka": {"family": "texts_alike", "question": "debiased linear CKA of raw activations",
                     "null": _SHUFFLE_ALL},
    "mutual_knn": {"family": "texts_alike", "question": "mutual k-NN overlap of raw activations",
                   "null": _SHUFFLE_ALL},
    "procrustes": {"family": "texts_alike",
                   "question": "held-out R^2 of Procrustes between PCA scores of raw activations",
                   "null": _SHUFFLE_ALL},
    "linear_cka_item_centred": {"family": "emotion_alike", "question": "linear CKA of item-centred activations",
                                "null": _SHUFFLE_ITEMS},
    "debiased_cka_item_centred": {"family": "emotion_alike",
                                  "question": "debiased linear CKA of item-centred activations",
                                  "null": _SHUFFLE_ITEMS},
    "mutual_knn_item_centred": {"family": "emotion_alike",
                                "question": "mutual k-NN overlap of item-centred activations",
                                "null": _SHUFFLE_ITEMS},
    "procrustes_item_centred": {"family": "emotion_alike",
                                "question": "held-out R^2 of Procrustes between PCA scores of item-centred "
                                            "activations", "null": _SHUFFLE_ITEMS},
    "transfer_cosine_mean": {"family": "emotion_specific",
                             "question": "cosine of a's fit-half emotion vectors carried through the map with "
                                         "b's held-out vectors, mean over emotions", "null": _LABELS},
    "subspace_mean_cos": {"family": "emotion_specific",
                          "question": "mean cosine of principal angles between the mapped span of a's fit-half "
                                      "emotion means and the span of b's held-out emotion means",
                          "null": _LABELS},
    "rsa": {"family": "emotion_specific",
            "question": "cross-validated RSA: Pearson correlation of the 6 distances between the 4 emotion means "
                        "(item-centred) of a on one half and b on the other, mean of both assignments",
            "null": _LABELS},
    "rdm_rho": {"family": "emotion_alike",
                "question": "cross-validated RDM over emotion x frame cells: Spearman rho of the two models' squared "
                            "distances between cell means of item-centred activations, each distance from two "
                            "independent halves of the frame's items (a frame's cells carry its templates, so "
                            "shared templates pass it: tests/unit/test_calibration_words.py)",
                "null": "b's cells relabelled by frame (one permutation of the emotions per frame)"},
    "rsa_vectors": {"family": None, "null": None,
                    "question": "descriptive, not a test: Spearman correlation of the 4x4 cosine matrices of the "
                                "phase-3 emotion vectors (a 24-order label null cannot reach p < 0.05)"},
    "subspace_phase3_mean_cos": {"family": None, "null": None,
                                 "question": "descriptive, not a test: mean cosine of principal angles between "
                                             "a's phase-3 subspace carried through the map and b's (label-free)"},
    "map_r2": {"family": None, "null": None,
               "question": "descriptive: held-out R^2 of the ridge map's prediction of b's activations"},
}
MEASURES = tuple(m for m, v in MEASURE_TABLE.items() if v["family"] is not None)  # the tests
# the tests every control section repeats: one or more of each family, none of the costly k-NN or Procrustes nulls
CONTROL_MEASURES = ("linear_cka", "linear_cka_item_centred", "transfer_cosine_mean", "subspace_mean_cos", "rsa",
                    "rdm_rho")
WORDS = "words"  # the words reference's name: the prompts' words as a pseudo-model with one layer
WORDS_PARTIALLED = "words_partialled"
SECTIONS = {  # section -> which prompts and activations its tests read
    "all": "every prompt, raw activations",
    "explicit": "the explicit prompts only (the emotion is named)",
    "implicit": "the implicit prompts only (no emotion word)",
    WORDS_PARTIALLED: "every prompt, each model's activations minus their cross-fitted ridge prediction from the "
                      "prompts' words (emolens.stats.words): the words controlled",
}
KINDS = {  # pair kind -> what the pair is
    "models": "two models",
    "words": "a model against the words reference (the prompts' TF-IDF word 1-2-grams as a representation)",
    "ceiling": "a model against its twin (the same model in another numeric build or organism seed): the ceiling",
}
DESCRIPTIVE = tuple(m for m, v in MEASURE_TABLE.items() if v["family"] is None)
SELF_TOL = 1e-6  # a self cell must be 1 within this

Pair = tuple[np.ndarray, np.ndarray]  # (fit, test) indices, or one array per model


# --- layers, splits ------------------------------------------------------------------------------------

def matched_layers(n_layers_a: int, n_layers_b: int) -> list[tuple[int, int]]:
    """Pairs (l, round(l * Lb / La)) for every residual index l = 0..La of a (halves round up)."""
    return [(la, int(np.floor(la * n_layers_b / n_layers_a + 0.5))) for la in range(n_layers_a + 1)]


def varying_layers(resid: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """[n, L+1, d] -> [L+1] bool: layers whose vectors differ across prompts.

    At index 0 the last token is the suffix's last word for every prompt, so a model without
    learned absolute positions has the same vector for all prompts there: nothing to compare.
    """
    x = resid.astype(np.float64)
    spread = ((x - x.mean(0)) ** 2).sum(axis=(0, 2))
    return spread > rtol * (x**2).sum(axis=(0, 2))


def comparable_layers(resid_a: np.ndarray, resid_b: np.ndarray, n_layers_a: int,
                      n_layers_b: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Matched-depth layer pairs split into (comparable, skipped: one side is constant across prompts)."""
    va, vb = varying_layers(resid_a), varying_layers(resid_b)
    pairs = matched_layers(n_layers_a, n_layers_b)
    return [p for p in pairs if va[p[0]] and vb[p[1]]], [p for p in pairs if not (va[p[0]] and vb[p[1]])]


def split_halves(frames: Sequence[Any], registers: Sequence[Any] | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, test) halves of whole frames, stratified by register (:func:`resampling.frame_halves`): no
    frame, and so no template, is in both; every item holds all its emotions, so the halves stay balanced."""
    return frame_halves(frames, registers, seed)


def design_units(act: dict[str, Any], path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The activations file's items, frames (the unit of every split and label permutation) and registers."""
    missing = [k for k in ("item_ids", "frames") if act.get(k) is None]
    if missing:
        raise ValueError(f"{path}: no {missing}; extract the activations again (every split and permutation is by "
                         f"frame)")
    registers = act.get("registers")
    return np.asarray(act["item_ids"]), np.asarray(act["frames"]), None if registers is None else np.asarray(registers)


# --- designs: every prompt, one register, the words controlled ----------------------------------------

@dataclass(frozen=True)
class Design:
    """What every null of one section reads: its prompts' items, the (fit, test) halves, the labellings (row 0
    observed, then permuted by frame), the within-item permutations and the emotion x frame cells."""

    items: np.ndarray  # [n]
    split: Pair
    labels: np.ndarray  # [P+1, n]
    within: np.ndarray  # [P, n]
    cells: Cells
    sigma: np.ndarray  # [P+1, n_cells]: the cells relabelled by each labelling


def make_design(items: np.ndarray, frames: np.ndarray, labels: np.ndarray, split: Pair, seed: int,
                rng: np.random.Generator) -> Design:
    """The design of prompts with these items, frames, labellings [P+1, n] and halves."""
    n_perm, n_emotions = len(labels) - 1, int(labels[0].max()) + 1
    within = frame_slot_permutations(labels[0], items, frames, n_perm, n_emotions, rng)
    cells = emotion_frame_cells(labels[0], items, frames, seed)
    return Design(items, split, labels, within, cells, cell_permutations(cells, labels))


def restricted(rows: np.ndarray, items: np.ndarray, frames: np.ndarray, labels: np.ndarray, split: Pair, seed: int,
               rng: np.random.Generator) -> Design:
    """The design of the prompts ``rows`` only (whole frames: one register): the same halves and labellings."""
    position = np.full(len(items), -1)
    position[rows] = np.arange(len(rows))
    halves = tuple(position[half[np.isin(half, rows)]] for half in split)
    return make_design(items[rows], frames[rows], labels[:, rows], halves, seed, rng)


# --- one matched depth, one pair -------------------------------------------------------------------------

def _with_null(name: str, observed: float, null: np.ndarray) -> dict[str, float]:
    return {name: float(observed), f"{name}_null_mean": float(null.mean()),
            f"{name}_null_q95": float(np.quantile(null, 0.95)), f"{name}_p": perm_pvalue(observed, null)}


def _normalised_grams(resid: np.ndarray) -> np.ndarray:
    """Centred, unit-Frobenius Gram matrix of every layer: the full CKA matrix is then one product."""
    grams = np.empty((resid.shape[1], len(resid), len(resid)))  # [L+1, n, n]
    for layer in range(resid.shape[1]):
        x = resid[:, layer].astype(np.float64)  # [n, d]
        g = center_gram(x @ x.T)
        norm = np.linalg.norm(g)
        grams[layer] = g / norm if norm > 0 else np.nan  # a constant layer has no CKA
    return grams


def cka_matrix(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """[La+1, Lb+1] linear CKA of every layer of ra [n, La+1, da] with every layer of rb [n, Lb+1, db]."""
    return _normalised_grams(ra).reshape(ra.shape[1], -1) @ _normalised_grams(rb).reshape(rb.shape[1], -1).T


def _similarity_tests(x: np.ndarray, y: np.ndarray, split: Pair, perms: Perms, settings: dict[str, Any],
                      rng: np.random.Generator, suffix: str, full: bool) -> dict[str, tuple[float, np.ndarray]]:
    """Linear CKA of x [n, dx] and y [n, dy] with its null under ``perms`` (shuffles of all prompts, or given
    within-item permutations); with ``full``, also debiased CKA, mutual k-NN and Procrustes."""
    kx, ky = x @ x.T, y @ y.T  # [n, n]: both centrings start from these
    gx, gy = center_gram(kx), center_gram(ky)
    tests = {f"linear_cka{suffix}": (gram_cka(gx, gy), gram_permutation_null(gx, gy, perms, rng))}
    if not full:
        return tests
    train, test = split
    ux, uy = u_center_gram(kx), u_center_gram(ky)
    nx, ny = knn_indices(x, settings["k_nn"]), knn_indices(y, settings["k_nn"])
    k = min(settings["k_pca"], x.shape[1], y.shape[1], len(train) - 1)
    xs, ys = pca_scores(x, k, train), pca_scores(y, k, train)
    return tests | {
        f"debiased_cka{suffix}": (gram_cka(ux, uy), gram_permutation_null(ux, uy, perms, rng)),
        f"mutual_knn{suffix}": (knn_overlap(nx, ny), knn_permutation_null(nx, ny, perms, rng)),
        f"procrustes{suffix}": (procrustes_score(xs, ys, train, test),
                                permutation_null(lambda a, b: procrustes_score(a, b, train, test), xs, ys,
                                                 perms, rng)),
    }


def _rdm_rho(ca: np.ndarray, cb: np.ndarray, design: Design) -> np.ndarray:
    """[P+1] Spearman rho of the two models' cross-validated RDMs over emotion x frame cells, b relabelled by each
    labelling (NaN without three cells)."""
    if len(design.cells.first) < 3:
        return np.full(len(design.labels), np.nan)
    return rdm_spearman(cv_rdm(ca, design.cells), cv_rdm(cb, design.cells), design.sigma)


def _compare_depth(xa: np.ndarray, xb: np.ndarray, design: Design, settings: dict[str, Any],
                   rng: np.random.Generator, full: bool = True, vec: Pair | None = None,
                   sub: Pair | None = None) -> dict[str, Any]:
    """Every measure (``full``) or the :data:`CONTROL_MEASURES`, with null mean, 95th percentile, p-value and null
    draws, for one matched pair of layers xa [n, da], xb [n, db] (float64); vec, sub: the phase-3 emotion vectors
    [n_emotions, d] and bases [k_max, d] of both models, for the descriptive numbers (None: not computed)."""
    split = design.split
    tests = _similarity_tests(xa, xb, split, settings["n_perm"], settings, rng, "", full)
    ca, cb = item_centred(xa, design.items), item_centred(xb, design.items)  # [n, da], [n, db]
    tests |= _similarity_tests(ca, cb, split, design.within, settings, rng, "_item_centred", full)
    lmap = fit_linear_map(xa[split[0]], xb[split[0]], settings["ridge"])
    eg = emotion_grams(ca, cb, lmap.directions(ca[split[0]]), split, design.labels)
    transfer, subspace = transfer_cosines(eg), subspace_cosines(eg)  # [P+1, n_emotions], [P+1, n_emotions - 1]
    rsa_cv, rdm = rsa_cross_validated(eg), _rdm_rho(ca, cb, design)  # [P+1], [P+1]
    tests["transfer_cosine_mean"] = (transfer[0].mean(), transfer[1:].mean(1))
    tests["subspace_mean_cos"] = (subspace[0].mean(), subspace[1:].mean(1))
    tests["rsa"] = (rsa_cv[0], rsa_cv[1:])
    tests["rdm_rho"] = (rdm[0], rdm[1:])
    out: dict[str, Any] = {}
    for name, (observed, null) in tests.items():
        out |= _with_null(name, observed, null)
    out |= {"null": {name: np.asarray(null, np.float64) for name, (_, null) in tests.items()},
            "transfer_cosine": transfer[0], "transfer_cosine_null_mean": transfer[1:].mean(0),
            "subspace_cosines": subspace[0], "map_r2": map_r2(lmap, xa[split[1]], xb[split[1]]),
            "n_cells": len(design.cells.first)}
    if full:
        out["procrustes_k"] = min(settings["k_pca"], xa.shape[1], xb.shape[1], len(split[0]) - 1)
    if vec is not None and sub is not None:
        k_sub = min(len(sub[0]), len(sub[1]))
        out |= {"rsa_vectors": rsa(*vec),
                "subspace_phase3_mean_cos": float(np.cos(principal_angles(lmap.directions(sub[0][:k_sub]),
                                                                          sub[1][:k_sub])).mean())}
    return out


def _depths(ra: np.ndarray, rb: np.ndarray, layers: Sequence[tuple[int, int]], n_layers_a: int, design: Design,
            settings: dict[str, Any], rng: np.random.Generator, full: bool = True,
            phase3: tuple[list[dict], list[dict]] | None = None) -> list[dict[str, Any]]:
    """:func:`_compare_depth` at every matched pair of layers of ra [n, La+1, da] and rb [n, Lb+1, db]."""
    out = []
    for la, lb in layers:
        vec = sub = None
        if phase3 is not None:
            (va, vb), (sa, sb) = phase3
            vec, sub = (va["vectors"][:, la], vb["vectors"][:, lb]), (sa["basis"][la], sb["basis"][lb])
        depth = {"layer_a": la, "layer_b": lb, "relative_depth": la / max(n_layers_a, 1)}
        out.append(depth | _compare_depth(ra[:, la].astype(np.float64), rb[:, lb].astype(np.float64), design,
                                          settings, rng, full, vec, sub))
    return out


def self_cells(x: np.ndarray, items: np.ndarray, k_nn: int) -> dict[str, float]:
    """One model against itself (x [n, d], its last block): every similarity here must be 1."""
    g, c = x @ x.T, item_centred(x, items)
    gc = center_gram(c @ c.T)
    nx = knn_indices(x, k_nn)
    return {"linear_cka": gram_cka(center_gram(g), center_gram(g)), "debiased_cka": gram_cka(u_center_gram(g),
            u_center_gram(g)), "mutual_knn": knn_overlap(nx, nx), "linear_cka_item_centred": gram_cka(gc, gc)}


def run_pair(act_a: str | Path, act_b: str | Path, out: str | Path, vectors: Sequence[str | Path] = (),
             subspaces: Sequence[str | Path] = (), words: str | Path | None = None, kind: str = "models",
             seed: int = 0, n_perm: int = 200, k_nn: int = 10, k_pca: int = 10, ridge: float = 0.1,
             position: str = "last") -> None:
    """Compare two models at matched depths and layer x layer, in every section (``words``: the words reference's
    file); save the pair's pickle. ``kind``: one of :data:`KINDS`; ``vectors``, ``subspaces``: both models'
    phase-3 files, for the descriptive numbers."""
    started = time.time()
    acts = [load_pickle(p, "emolens.activations/2") for p in (act_a, act_b)]
    vecs = [load_pickle(p, "emolens.vectors/1") for p in vectors]
    subs = [load_pickle(p, "emolens.subspaces/1") for p in subspaces]
    if list(acts[0]["ids"]) != list(acts[1]["ids"]):
        raise ValueError(f"{act_a} and {act_b} hold different prompts or orders; alignment needs the same")
    emotions = list(acts[0]["emotions"])
    order = emotion_order(emotions)
    for v, path in zip(vecs, vectors, strict=True):
        if tuple(v["emotions"]) != order:
            raise ValueError(f"{path}: emotions {list(v['emotions'])} are not the prompts' {list(order)} in order; "
                             f"compute both models' vectors from the same dataset")
    models = [Path(act_a).stem, Path(act_b).stem]
    settings = {"seed": seed, "n_perm": n_perm, "k_nn": k_nn, "k_pca": k_pca, "ridge": ridge,
                "position": position, "kind": kind}
    ra, rb = (a["resid"][position] for a in acts)  # [n, La+1, da], [n, Lb+1, db]
    cka = cka_matrix(ra, rb)  # [La+1, Lb+1]
    items, frames, registers = design_units(acts[0], act_a)
    split = split_halves(frames, registers, seed)
    rng = np.random.default_rng(seed)
    labels = permuted_labels(label_codes(emotions), frames, n_perm, rng)  # [P+1, n], the same at every depth
    design = make_design(items, frames, labels, split, seed, rng)
    n_layers_a, n_layers_b = int(acts[0]["n_layers"]), int(acts[1]["n_layers"])
    comparable, skipped = comparable_layers(ra, rb, n_layers_a, n_layers_b)
    phase3 = (vecs, subs) if len(vecs) == len(subs) == 2 else None
    matched = _depths(ra, rb, comparable, n_layers_a, design, settings, rng, True, phase3)
    controls = {}
    for register in ([] if registers is None else sorted(set(registers))):
        rows = np.flatnonzero(registers == register)
        sub = restricted(rows, items, frames, labels, split, seed, rng)
        controls[str(register)] = _depths(ra[rows], rb[rows], comparable, n_layers_a, sub, settings, rng, False)
    features = words_of(words, acts[0]["ids"]) if kind != "words" else None  # [n, v]
    if features is not None:
        pa, pb = (words_partialled(r, features, split, ridge) for r in (ra, rb))
        controls[WORDS_PARTIALLED] = _depths(pa, pb, comparable, n_layers_a, design, settings, rng, False)
    selves = {m: self_cells(r[:, n].astype(np.float64), items, k_nn) | {"layer": n}
              for m, r, n in zip(models, (ra, rb), (n_layers_a, n_layers_b), strict=True)}
    quant = [a.get("quantization") for a in acts]
    save_pickle({
        "schema": SCHEMA, "models": models, "kind": kind, "quantization": quant, "int8_involved": any(quant),
        "d_model": [int(a["d_model"]) for a in acts], "n_layers": [n_layers_a, n_layers_b],
        "n_prompts": len(emotions), "n_frames": len(np.unique(frames)), "n_items": len(np.unique(items)),
        "train_idx": split[0],
        "test_idx": split[1], "cka_matrix": cka, "matched": matched, "controls": controls, "skipped_layers": skipped,
        "self_cells": selves, "measures": MEASURE_TABLE, "sections": SECTIONS, "settings": settings,
        "provenance": provenance(settings, started, models=models,
                                 inputs=[str(p) for p in (act_a, act_b, *vectors, *subspaces, words) if p]),
    }, out)
