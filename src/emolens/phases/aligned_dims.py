"""The aligned dimension k (phase 7): how many dimensions of emotion structure two models share, calibrated.

Methods. Frames are split once (seeded, stratified by register) into a fit and a held-out half. At
every matched depth, a's emotion axes (principal axes of its n emotion means, item-centred activations, fit half) are
carried through a ridge map a -> b (fit on the fit half) and orthonormalised in b's space; axis k
scores the cross-validated agreement of a's mapped fit-half means with b's held-out means along it
(near 0 when labels carry nothing). The null permutes the emotion labels by frame (one permutation
per frame, applied to all its items) and reruns the whole pipeline. A max-statistic over all depths
and k (standardised scores) controls the family-wise error at alpha; k at a depth is the number of
leading axes above the threshold, the pair's k the largest over depths (``K_RULE``). Axes are
found by an eigendecomposition with a relative cut-off, so emotion means that span fewer
dimensions (or none: labels that carry nothing exactly) give fewer axes and k = 0 with the reason,
never an error.
Beside it, k on each register alone and with the words partialled out of both models (phase 4's sections), and
the ceiling: k between a model and its twin (another numeric build or seed). Output: ``statistics/k.json``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.io import load_pickle, provenance, save_json
from emolens.phases.alignment import WORDS_PARTIALLED, comparable_layers, design_units, split_halves
from emolens.phases.emotion_structure import EmotionGrams, label_codes, label_structure, permuted_labels
from emolens.phases.words import words_of
from emolens.stats.resampling import max_statistic_pvalues
from emolens.stats.words import words_partialled

K_SCORE = ("per matched depth and axis k = 1..k_max (k_max <= n - 1: n emotion means span n - 1 dimensions): a's "
           "emotion axes are the principal axes of its n emotion means on the fit half of the frames "
           "(item-centred activations), ordered by variance, carried through the ridge map a -> b (fit on the "
           "fit half's paired activations) and orthonormalised in b's space in that order (Gram-Schmidt). Axis "
           "k scores sum_e (q_k . a_e)(q_k . b_e) / sqrt(v_a v_b), with a_e a's mapped fit-half emotion means, "
           "b_e b's emotion means on the held-out half, and v_a, v_b the mean squared norms of the mapped "
           "fit-half and held-out item-centred prompts (label-free): the cross-validated covariance of the two "
           "emotion structures along axis k, as a share of the within-item variance. The held-out means come "
           "from other frames and average to 0 over labellings permuted by frame, so the score is 0 in expectation "
           "when the labels carry nothing. No dimension reduction: every quantity is an exact quadratic form "
           "of the prompts' Gram matrices, whatever the widths.")
K_NULL = ("emotion labels permuted by frame (one permutation of the labels per frame, applied to all its items), "
          "n_perm times (the same permutations at every depth), the whole pipeline recomputed each time: a's "
          "emotion means and axes, their mapped images, b's held-out means; item-centring, the frame split and the "
          "map read no labels and are computed once")
K_RULE = ("standardise each (depth, k) score by its permutation null's mean and sd; for every permutation take "
          "the max standardised score over all matched depths and k; threshold = the value an observed "
          "standardised score must exceed for a max-statistic p = (1 + #{null max >= z}) / (1 + n_perm) <= "
          "alpha (family-wise error over depths and k controlled at alpha, single step; infinite when n_perm "
          "is too small to reach alpha); k at a depth = the number of leading axes k = 1, 2, ... whose "
          "standardised score exceeds the threshold (counting stops at the first that does not); the pair's "
          "k = the largest k over its matched depths (0 if none)")


AXIS_RTOL = 1e-9  # an axis whose variance is below this share of the largest is no axis (degenerate means)


def k_axis_scores(e: EmotionGrams, q: int) -> np.ndarray:
    """[P, q] score of each of a's top-q mapped emotion axes (``K_SCORE``), for every labelling in e.

    Rank-aware: a's axes are the eigenvectors of its fit-half means' Gram above ``AXIS_RTOL`` of the
    largest, orthonormalised in b's space by an eigendecomposition of the mapped axes' Gram (the
    same relative cut-off); an axis that does not survive scores 0, so degenerate or exactly null
    structure gives scores of 0 and k = 0, never a failed factorisation.
    """
    lam, v = np.linalg.eigh(e.a_fit)  # a's own fit-half means M_a: axis j = v_j^T M_a / sqrt(lam_j)
    lam, v = lam[..., ::-1][..., :q], v[..., ::-1][..., :q]  # descending
    scale = np.maximum(lam[..., :1], 1e-300)
    ok_a = lam > AXIS_RTOL * scale  # [P, q]
    coef = np.swapaxes(v, -1, -2) * np.where(ok_a, 1 / np.sqrt(np.where(ok_a, lam, 1.0)), 0.0)[..., None]  # [P, q, C]
    mapped_a, mapped_b = coef @ e.mm @ np.swapaxes(coef, -1, -2), coef @ e.mb  # [P, q, q]: the mapped axes' Gram
    span = np.zeros(ok_a.shape)  # [P, q]: the score of the span of a's first k + 1 mapped axes
    for k in range(q):  # Gram-Schmidt in a's order: axis k scores what it adds to the span of axes < k
        w, u = np.linalg.eigh(mapped_a[..., : k + 1, : k + 1])
        keep = w > AXIS_RTOL * np.maximum(w[..., -1:], 1e-300)
        basis = np.swapaxes(u, -1, -2) * np.where(keep, 1 / np.sqrt(np.where(keep, w, 1.0)), 0.0)[..., None]
        on_a = basis @ coef[..., : k + 1, :] @ e.mm  # [P, k+1, C]: an orthonormal basis of the span, on a_e
        on_b = basis @ mapped_b[..., : k + 1, :]  # [P, k+1, C]: the same basis on b_e
        span[..., k] = (on_a * on_b).sum((-2, -1))  # basis-free: the trace of a's means x projection x b's
    score = np.diff(span, axis=-1, prepend=0.0) * ok_a
    return score / max(np.sqrt(e.mapped_var * e.b_test_var), 1e-300)


def max_stat_threshold(max_null: np.ndarray, alpha: float) -> float:
    """The value a standardised score must exceed for (1 + #{max_null >= z}) / (1 + n_perm) <= alpha."""
    allowed = int(np.floor(alpha * (len(max_null) + 1) - 1 + 1e-9))  # null maxima allowed at or above z
    return float(np.sort(max_null)[::-1][allowed]) if 0 <= allowed < len(max_null) else float("inf")


def leading_count(above: np.ndarray) -> int:
    """How many leading entries of a boolean curve are True (k = 1, 2, ... until the first False)."""
    return int(np.cumprod(np.asarray(above, bool)).sum())


def k_decision(scores: np.ndarray, alpha: float) -> dict[str, Any]:
    """Max-statistic decision on scores [P+1, D, q] (row 0 observed, then permutations): see ``K_RULE``."""
    null = scores[1:]
    mean, sd = null.mean(0), null.std(0, ddof=1)  # [D, q]
    z = (scores - mean) / np.where(sd > 0, sd, np.inf)
    max_null = z[1:].reshape(len(null), -1).max(1)  # [n_perm]
    threshold = max_stat_threshold(max_null, alpha)
    p_fwer = max_statistic_pvalues(z[0], z[1:])  # [D, q]
    k = np.array([leading_count(row > threshold) for row in z[0]], int)  # [D]
    return {"z": z[0], "null_mean": mean, "null_sd": sd, "p_fwer": p_fwer, "threshold": threshold, "k": k}


def _pair_k(act_a: dict, act_b: dict, sub_a: dict, sub_b: dict, seed: int, n_perm: int, ridge: float,
            position: str, alpha: float = 0.05) -> dict[str, Any]:
    """The k-curve against its null at every matched depth of one model pair, and the calibrated k."""
    items, frames, registers = design_units(act_a, "activations")
    split = split_halves(frames, registers, seed)
    labels = permuted_labels(label_codes(act_a["emotions"]), frames, n_perm, np.random.default_rng(seed))  # [P+1, n]
    q = min(sub_a["basis"].shape[1], sub_b["basis"].shape[1], len(emotion_order(act_a["emotions"])) - 1)
    ra, rb = act_a["resid"][position], act_b["resid"][position]
    layers = comparable_layers(ra, rb, int(act_a["n_layers"]), int(act_b["n_layers"]))[0]
    out = {"k": 0, "k_layers": None, "k_max": q, "threshold": float("inf"), "n_frames": len(np.unique(frames)),
           "n_frames_fit": len(np.unique(frames[split[0]])), "n_items": len(np.unique(items)),
           "n_items_fit": len(np.unique(items[split[0]])), "depths": [], "reason": None}
    if not layers:
        return out | {"reason": "no matched depth where both models vary across prompts"}
    scores = np.stack([k_axis_scores(label_structure(ra[:, la].astype(np.float64), rb[:, lb].astype(np.float64),
                                                     items, split, labels, ridge), q)
                       for la, lb in layers], axis=1)  # [P+1, D, q]
    dec = k_decision(scores, alpha)
    for d, (la, lb) in enumerate(layers):
        out["depths"].append({"layer_a": la, "layer_b": lb, "score": scores[0, d],
                              "cumulative": np.cumsum(scores[0, d]), "null_mean": dec["null_mean"][d],
                              "null_sd": dec["null_sd"][d], "z": dec["z"][d], "p_fwer": dec["p_fwer"][d],
                              "threshold": dec["threshold"], "k": int(dec["k"][d])})
    best = int(np.argmax(dec["k"]))
    out |= {"k": int(dec["k"][best]), "threshold": dec["threshold"],
            "k_layers": list(layers[best]) if dec["k"][best] else None}
    if out["k"] == 0:
        out["reason"] = ("degenerate: a's fit-half emotion means span no dimension at any matched depth"
                         if not np.any(scores[0]) else "no axis exceeds the family-wise threshold")
    return out


def _rows(act: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """An activations file with only the prompts ``rows`` (e.g. one register's)."""
    kept = {key: list(np.asarray(act[key])[rows]) for key in ("ids", "emotions", "item_ids", "frames", "registers")
            if act.get(key) is not None}
    return act | kept | {"resid": {k: v[rows] for k, v in act["resid"].items()}}


def control_k(act_a: dict, act_b: dict, sub_a: dict, sub_b: dict, partialled: tuple[dict, dict] | None, seed: int,
              n_perm: int, ridge: float, position: str, alpha: float) -> dict[str, dict[str, Any]]:
    """k per control section of phase 4: on each register's prompts alone, and on both models' activations with the
    words partialled out (``partialled``: :func:`words_partialled_activations` of each)."""
    out = {}
    registers = act_a.get("registers")
    for register in [] if registers is None else sorted(set(registers)):
        rows = np.flatnonzero(np.asarray(registers) == register)
        out[str(register)] = _pair_k(_rows(act_a, rows), _rows(act_b, rows), sub_a, sub_b, seed, n_perm, ridge,
                                     position, alpha)
    if partialled is not None:
        out[WORDS_PARTIALLED] = _pair_k(*partialled, sub_a, sub_b, seed, n_perm, ridge, position, alpha)
    return out


def words_partialled_activations(act: dict[str, Any], words: np.ndarray, seed: int, ridge: float,
                                 position: str) -> dict[str, Any]:
    """An activations file with the words partialled out of its ``position`` readout
    (:func:`emolens.stats.words.words_partialled`, on phase 4's halves)."""
    _, frames, registers = design_units(act, "activations")
    split = split_halves(frames, registers, seed)
    return {**act, "resid": {position: words_partialled(act["resid"][position], words, split, ridge)}}


def _keep_position(act: dict[str, Any], position: str) -> dict[str, Any]:
    """An activations file with only the residual readout ``position`` ("last" or "mean") kept in memory."""
    return act | {"resid": {position: act["resid"][position]}}


def run_k(act_files: Sequence[str | Path], sub_files: Sequence[str | Path], out_json: str | Path,
          seed: int = 0, n_perm: int = 200, ridge: float = 0.1, position: str = "last",
          alpha: float = 0.05, words: str | Path | None = None,
          ceilings: Sequence[tuple[str | Path, str]] = ()) -> None:
    """How many emotion dimensions align across each model pair, family-wise calibrated (``K_RULE``), overall and
    per control section (:func:`control_k`; ``words``: the words reference's file); ``ceilings``: (twin
    activations, model) of each ceiling twin, whose k with its model is the ceiling of that model's pairs.

    Each model's files are read once (not once per pair it is in) and only the residual readout
    ``position`` is kept; the subspace files give k_max (capped at n_emotions - 1).
    """
    started = time.time()
    names = [Path(p).stem for p in act_files]
    if names != [Path(p).stem.removesuffix("_subspaces") for p in sub_files]:
        raise ValueError(f"activation files {names} and subspace files {list(map(str, sub_files))} differ")
    acts = [_keep_position(load_pickle(p, "emolens.activations/2"), position) for p in act_files]
    subs = [load_pickle(p, "emolens.subspaces/1") for p in sub_files]
    features = words_of(words, acts[0]["ids"]) if acts else None
    partialled = ([words_partialled_activations(act, features, seed, ridge, position) for act in acts]
                  if features is not None else None)  # once per model, not once per pair it is in
    pairs = []
    for i, j in itertools.combinations(range(len(names)), 2):
        act_a, act_b, sub_a, sub_b = acts[i], acts[j], subs[i], subs[j]
        if list(act_a["ids"]) != list(act_b["ids"]):
            raise ValueError(f"{act_files[i]} and {act_files[j]} hold different prompts or orders")
        quant = [act_a.get("quantization"), act_b.get("quantization")]
        pairs.append({"models": [names[i], names[j]], "int8_involved": any(quant)}
                     | _pair_k(act_a, act_b, sub_a, sub_b, seed, n_perm, ridge, position, alpha)
                     | {"controls": control_k(act_a, act_b, sub_a, sub_b,
                                              (partialled[i], partialled[j]) if partialled else None, seed, n_perm,
                                              ridge, position, alpha)})
    twins = []
    for path, model in ceilings:
        i, twin = names.index(model), _keep_position(load_pickle(path, "emolens.activations/2"), position)
        twins.append({"models": [model, Path(path).stem], "int8_involved": any([acts[i].get("quantization"),
                                                                                twin.get("quantization")])}
                     | _pair_k(acts[i], twin, subs[i], subs[i], seed, n_perm, ridge, position, alpha))
    settings = {"seed": seed, "n_perm": n_perm, "ridge": ridge, "position": position, "alpha": alpha}
    save_json(settings | {
        "score": K_SCORE, "null": K_NULL, "rule": K_RULE,
        "emotions": list(emotion_order(e for act in acts for e in act["emotions"])),
        "family": "per model pair: all matched depths x k = 1..k_max",
        "pairs": pairs, "ceilings": twins,
        "provenance": provenance(settings, started, inputs=[str(p) for p in [*act_files, *sub_files]]),
    }, out_json)
