"""Cross-model alignment of emotion representations (phase 4).

Methods. Two models a and b read the same prompts; each item is one scenario written in all the
run's emotions (four in the built-in dataset). We compare their residual streams at the readout
position, layer l of a against layer round(l * Lb / La) of b (matched relative depth), and as a full
layer x layer matrix of linear CKA. The frames are split once (seeded, stratified by register) into a
fit half and a held-out half; no frame (and so no template) is in both, and each half holds every
emotion of its items. Every measure below answers one of three questions, has its own null, and
belongs to that question's Benjamini-Hochberg family (its measures x matched depths x model pairs;
``summary.json`` declares the families and counts significance only after correction).

1. Texts alike ("the two models represent these texts alike"), on raw activations: linear CKA,
   debiased CKA, mutual k-NN overlap and held-out Procrustes R^2 (:mod:`emolens.stats.similarity`).
   Null: the prompt correspondence shuffled across all prompts.
2. Emotion alike ("they represent the emotion alike"): the same four measures on item-centred
   activations (each prompt minus its item's mean over its emotions: what varies with the
   emotion inside a scenario). Null: the correspondence shuffled within items (prompt i of a paired
   with another prompt of the same item in b, by one permutation of the emotions per frame, so the
   items of a frame stay in register), which keeps the scenarios and breaks which emotion is which.
   These measures read no label, so they cannot tell the emotion from the frame's template for it:
   two models that share templates but no emotion pass them. Only family 3 can.
3. Emotion-specific ("is the emotion structure the same?"): measures that read the emotion labels,
   on item-centred activations: transfer cosine, subspace cosine and cross-validated RSA of the
   emotion means through a ridge map (:mod:`emolens.phases.emotion_structure`). Null: the labels permuted
   by frame (one permutation of the emotions per frame, applied to all its items, so a frame's
   template moves with its label), every label-dependent quantity recomputed from scratch; the map
   reads no label and is fit once.

p-values are one-sided: (1 + #{null >= observed}) / (1 + n_perm). Descriptive numbers (no p-value,
in no family): the map's held-out R^2, ``rsa_vectors`` (the exhaustive n!-order null of that n x n
RSA of the phase-3 vectors of n emotions cannot go below p = 2/(n! + 1), 2/25 > 0.05 for four), and
the overlap of the phase-3 subspaces (PCA of item-centred activations over all prompts: label-free,
so no label null can test it). Each pair file also holds self cells (each model against itself at
its last block: CKA and mutual k-NN must be 1): verification checks, never tests.

Inputs: activations (with ``item_ids``), emotion vectors and emotion subspaces of both models.
Outputs: ``alignment/<a>__<b>.pkl`` (schema ``emolens.alignment/1``, with every null draw) and
``alignment/summary.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.io import load_pickle, provenance, save_json, save_pickle
from emolens.phases.emotion_structure import (
    emotion_grams,
    label_codes,
    permuted_labels,
    rsa_cross_validated,
    subspace_cosines,
    transfer_cosines,
)
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
    """Seeded (fit, test) halves of whole frames, stratified by register (:func:`resampling.frame_halves`).

    No frame, and so no template, is in both halves; every item holds all its emotions, so the
    halves stay balanced.
    """
    return frame_halves(frames, registers, seed)


def design_units(act: dict[str, Any], path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The activations file's items, frames (the unit of every split and label permutation) and registers."""
    missing = [k for k in ("item_ids", "frames") if act.get(k) is None]
    if missing:
        raise ValueError(f"{path}: no {missing}; extract the activations again (every split and permutation is by "
                         f"frame)")
    registers = act.get("registers")
    return np.asarray(act["item_ids"]), np.asarray(act["frames"]), None if registers is None else np.asarray(registers)


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


def _similarity_tests(x: np.ndarray, y: np.ndarray, gx: np.ndarray, gy: np.ndarray, split: Pair,
                      perms: Perms, settings: dict[str, Any], rng: np.random.Generator,
                      suffix: str) -> dict[str, tuple[float, np.ndarray]]:
    """CKA, debiased CKA, mutual k-NN and Procrustes of x [n, dx] and y [n, dy] (centred Grams gx, gy)
    with their nulls under ``perms`` (shuffles of all prompts, or given within-item permutations)."""
    train, test = split
    ux, uy = u_center_gram(x @ x.T), u_center_gram(y @ y.T)
    nx, ny = knn_indices(x, settings["k_nn"]), knn_indices(y, settings["k_nn"])
    k = min(settings["k_pca"], x.shape[1], y.shape[1], len(train) - 1)
    xs, ys = pca_scores(x, k, train), pca_scores(y, k, train)
    return {
        f"linear_cka{suffix}": (gram_cka(gx, gy), gram_permutation_null(gx, gy, perms, rng)),
        f"debiased_cka{suffix}": (gram_cka(ux, uy), gram_permutation_null(ux, uy, perms, rng)),
        f"mutual_knn{suffix}": (knn_overlap(nx, ny), knn_permutation_null(nx, ny, perms, rng)),
        f"procrustes{suffix}": (procrustes_score(xs, ys, train, test),
                                permutation_null(lambda a, b: procrustes_score(a, b, train, test), xs, ys,
                                                 perms, rng)),
    }


def _compare_depth(xa: np.ndarray, xb: np.ndarray, ga: np.ndarray, gb: np.ndarray, items: np.ndarray,
                   split: Pair, labels: np.ndarray, within: np.ndarray, vec: Pair, sub: Pair,
                   settings: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Every measure, its null mean, 95th percentile, p-value and null draws, for one matched pair of layers.

    xa [n, da], xb [n, db]: float64 activations; ga, gb: their centred Grams; split: (fit, test)
    indices; labels [P+1, n]: observed then labels permuted by frame; within [P, n]: within-item
    correspondence permutations; vec: the phase-3 emotion vectors [n_emotions, d]; sub: phase-3 bases [k_max, d].
    """
    tests = _similarity_tests(xa, xb, ga, gb, split, settings["n_perm"], settings, rng, "")
    ca, cb = item_centred(xa, items), item_centred(xb, items)  # [n, da], [n, db]
    tests |= _similarity_tests(ca, cb, center_gram(ca @ ca.T), center_gram(cb @ cb.T), split, within, settings,
                               rng, "_item_centred")
    lmap = fit_linear_map(xa[split[0]], xb[split[0]], settings["ridge"])
    eg = emotion_grams(ca, cb, lmap.directions(ca[split[0]]), split, labels)
    transfer, subspace = transfer_cosines(eg), subspace_cosines(eg)  # [P+1, n_emotions], [P+1, n_emotions - 1]
    rsa_cv = rsa_cross_validated(eg)  # [P+1]
    tests["transfer_cosine_mean"] = (transfer[0].mean(), transfer[1:].mean(1))
    tests["subspace_mean_cos"] = (subspace[0].mean(), subspace[1:].mean(1))
    tests["rsa"] = (rsa_cv[0], rsa_cv[1:])
    out: dict[str, Any] = {}
    for name, (observed, null) in tests.items():
        out |= _with_null(name, observed, null)
    k_sub = min(len(sub[0]), len(sub[1]))
    return out | {
        "null": {name: np.asarray(null, np.float64) for name, (_, null) in tests.items()},
        "procrustes_k": min(settings["k_pca"], xa.shape[1], xb.shape[1], len(split[0]) - 1),
        "transfer_cosine": transfer[0], "transfer_cosine_null_mean": transfer[1:].mean(0),
        "subspace_cosines": subspace[0],
        "map_r2": map_r2(lmap, xa[split[1]], xb[split[1]]),
        "rsa_vectors": rsa(*vec),
        "subspace_phase3_mean_cos": float(np.cos(principal_angles(lmap.directions(sub[0][:k_sub]),
                                                                  sub[1][:k_sub])).mean()),
    }


def self_cells(x: np.ndarray, items: np.ndarray, k_nn: int) -> dict[str, float]:
    """One model against itself (x [n, d], its last block): every similarity here must be 1."""
    g, c = x @ x.T, item_centred(x, items)
    gc = center_gram(c @ c.T)
    nx = knn_indices(x, k_nn)
    return {"linear_cka": gram_cka(center_gram(g), center_gram(g)), "debiased_cka": gram_cka(u_center_gram(g),
            u_center_gram(g)), "mutual_knn": knn_overlap(nx, nx), "linear_cka_item_centred": gram_cka(gc, gc)}


def run_pair(act_a: str | Path, act_b: str | Path, vec_a: str | Path, vec_b: str | Path, sub_a: str | Path,
             sub_b: str | Path, out: str | Path, seed: int = 0, n_perm: int = 200, k_nn: int = 10,
             k_pca: int = 10, ridge: float = 0.1, position: str = "last") -> None:
    """Compare two models on the same prompts at matched depths and layer x layer; save the pair's pickle."""
    started = time.time()
    acts = [load_pickle(p, "emolens.activations/2") for p in (act_a, act_b)]
    vecs = [load_pickle(p, "emolens.vectors/1") for p in (vec_a, vec_b)]
    subs = [load_pickle(p, "emolens.subspaces/1") for p in (sub_a, sub_b)]
    if list(acts[0]["ids"]) != list(acts[1]["ids"]):
        raise ValueError(f"{act_a} and {act_b} hold different prompts or orders; alignment needs the same")
    emotions = list(acts[0]["emotions"])
    order = emotion_order(emotions)
    for v, path in zip(vecs, (vec_a, vec_b), strict=True):
        if tuple(v["emotions"]) != order:
            raise ValueError(f"{path}: emotions {list(v['emotions'])} are not the prompts' {list(order)} in order; "
                             f"compute both models' vectors from the same dataset")
    models = [Path(act_a).stem, Path(act_b).stem]
    settings = {"seed": seed, "n_perm": n_perm, "k_nn": k_nn, "k_pca": k_pca, "ridge": ridge,
                "position": position}
    ra, rb = (a["resid"][position] for a in acts)  # [n, La+1, da], [n, Lb+1, db]
    grams_a, grams_b = _normalised_grams(ra), _normalised_grams(rb)
    cka = grams_a.reshape(len(grams_a), -1) @ grams_b.reshape(len(grams_b), -1).T  # [La+1, Lb+1]
    items, frames, registers = design_units(acts[0], act_a)
    split = split_halves(frames, registers, seed)
    rng = np.random.default_rng(seed)
    labels = permuted_labels(label_codes(emotions), frames, n_perm, rng)  # [P+1, n], the same at every depth
    within = frame_slot_permutations(labels[0], items, frames, n_perm, len(order), rng)  # [P, n]
    n_layers_a, n_layers_b = int(acts[0]["n_layers"]), int(acts[1]["n_layers"])
    matched = []
    comparable, skipped = comparable_layers(ra, rb, n_layers_a, n_layers_b)
    for la, lb in comparable:
        xa, xb = ra[:, la].astype(np.float64), rb[:, lb].astype(np.float64)
        vec = (vecs[0]["vectors"][:, la], vecs[1]["vectors"][:, lb])
        sub = (subs[0]["basis"][la], subs[1]["basis"][lb])
        depth = {"layer_a": la, "layer_b": lb, "relative_depth": la / n_layers_a}
        matched.append(depth | _compare_depth(xa, xb, grams_a[la], grams_b[lb], items, split, labels, within,
                                              vec, sub, settings, rng))
    selves = {m: self_cells(r[:, n].astype(np.float64), items, k_nn) | {"layer": n}
              for m, r, n in zip(models, (ra, rb), (n_layers_a, n_layers_b), strict=True)}
    quant = [a.get("quantization") for a in acts]
    save_pickle({
        "schema": SCHEMA, "models": models, "quantization": quant, "int8_involved": any(quant),
        "d_model": [int(a["d_model"]) for a in acts], "n_layers": [n_layers_a, n_layers_b],
        "n_prompts": len(emotions), "n_frames": len(np.unique(frames)), "n_items": len(np.unique(items)),
        "train_idx": split[0],
        "test_idx": split[1], "cka_matrix": cka, "matched": matched, "skipped_layers": skipped,
        "self_cells": selves, "measures": MEASURE_TABLE, "settings": settings,
        "provenance": provenance(settings, started, models=models,
                                 inputs=[str(p) for p in (act_a, act_b, vec_a, vec_b, sub_a, sub_b)]),
    }, out)


# --- summary ----------------------------------------------------------------------------------------------

def bh_families(records: Sequence[dict[str, Any]], alpha: float) -> dict[tuple[int, str], dict[str, np.ndarray]]:
    """Benjamini-Hochberg within each family (its measures x matched depths x pairs) of the pair records.

    Returns (record index, measure) -> {"p", "p_bh", "significant"} over that record's matched depths.
    """
    out: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for family in FAMILIES:
        keys = [(i, m) for i in range(len(records)) for m in MEASURES if MEASURE_TABLE[m]["family"] == family]
        pvals = [np.array([d[f"{m}_p"] for d in records[i]["matched"]], float) for i, m in keys]
        adjusted, reject = families.bh(np.concatenate(pvals) if pvals else np.empty(0), alpha)
        start = 0
        for key, p in zip(keys, pvals, strict=True):
            out[key] = {"p": p, "p_bh": adjusted[start:start + len(p)], "significant": reject[start:start + len(p)]}
            start += len(p)
    return out


def run_summary(pair_files: Sequence[str | Path], out_json: str | Path, alpha: float = 0.05) -> None:
    """Headline numbers per model pair at matched depths, BH-corrected per family, into ``summary.json``."""
    started = time.time()
    records = [load_pickle(path, SCHEMA) for path in pair_files]
    corrected = bh_families(records, alpha)
    pairs = []
    for i, (path, r) in enumerate(zip(pair_files, records, strict=True)):
        matched = r["matched"]
        measures: dict[str, Any] = {}
        for m in MEASURES:
            c = corrected[i, m]
            values = np.array([d[m] for d in matched], float)
            measures[m] = {"family": MEASURE_TABLE[m]["family"], "value": values,
                           "null_mean": [d[f"{m}_null_mean"] for d in matched], "p": c["p"], "p_bh": c["p_bh"],
                           "significant": c["significant"], "mean": float(np.nanmean(values)),
                           "n_tests": len(values), "n_significant": int(c["significant"].sum())}
        for m in DESCRIPTIVE:
            values = np.array([d[m] for d in matched], float)
            measures[m] = {"family": None, "value": values, "mean": float(np.nanmean(values))}
        flags = (["int8_involved"] if r["int8_involved"] else []) + (
            ["different_widths"] if r["d_model"][0] != r["d_model"][1] else [])
        pairs.append({"models": r["models"], "file": str(path), "quantization": r["quantization"],
                      "int8_involved": r["int8_involved"],
                      "flags": flags, "d_model": r["d_model"], "n_layers": r["n_layers"], "n_prompts": r["n_prompts"],
                      "n_items": r.get("n_items"), "matched_layers": [[d["layer_a"], d["layer_b"]] for d in matched],
                      "map_r2": [d["map_r2"] for d in matched], "self_cells": r.get("self_cells"),
                      "measures": measures})
    by_family = {}
    floor = 1 / (1 + min(r["settings"]["n_perm"] for r in records))  # the smallest permutation p any test can have
    for family, question in FAMILIES.items():
        members = [m for m in MEASURES if MEASURE_TABLE[m]["family"] == family]
        n_tests = sum(p["measures"][m]["n_tests"] for p in pairs for m in members)
        by_family[family] = {
            "question": question, "measures": members,
            "correction": f"{families.CORRECTION}, over these measures x matched depths x model pairs",
            "n_tests": n_tests,
            "n_significant": sum(p["measures"][m]["n_significant"] for p in pairs for m in members),
            # BH calls i tests significant only if i of them have p <= i * alpha / n_tests: with every p >= floor,
            # no test can be significant unless at least this many share the floor
            "p_floor": floor, "min_tests_at_floor": math.ceil(n_tests * floor / alpha - 1e-9)}
    prov = provenance({"alpha": alpha}, started, inputs=[str(p) for p in pair_files])
    save_json({"alpha": alpha, "measures": MEASURE_TABLE, "families": by_family,
               "significance": "every n_significant counts tests with BH-adjusted p <= alpha within its family",
               "identity_cells": "self_cells (each model against itself at its last block: CKA, mutual k-NN = 1) "
                                 "are verification checks, not tests, and belong to no family",
               "pairs": pairs, "provenance": prov}, out_json)
