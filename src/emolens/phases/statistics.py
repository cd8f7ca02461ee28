"""Effect sizes, power and aligned subspace dimension (phase 7).

Methods. The unit of inference is the frame: an item's n(n - 1) ordered pairs share its n prompts (12
and 4 for the built-in four emotions), and a frame's items share its templates, so neither pairs nor
items are independent (:mod:`emolens.stats.resampling`). ``effect``: for every residual cell (layer x
readout position) and every patched head (singly, and the top-K jointly, measured on the confirmation half of the
frames), each frame contributes its gain G_f = sum over its kept pairs of (LD_patched - LD_run) and
separation D_f = sum of (LD_donor - LD_run) (pairs below ``min_separation`` are left out,
:mod:`emolens.stats.effects`). We report the effect as the ratio of sums sum(G) / sum(D) with a 95% BCa
two-stage bootstrap CI (frames, then items within frames), Cohen's d of the frame effects
r_f = G_f / D_f against 0 (mean / sd, ddof 1) and Hedges' g, and a two-sided sign-flip permutation
p-value over frames (flipping whole frames). Identity cells (index L and index 0 at the last
position, fixed by construction) are verification checks, not tests. Benjamini-Hochberg corrects
within each model's family: all its residual cells and heads; every count of "significant" is
after correction. ``power`` is prospective: statsmodels' one-sample t-test (TTestPower) gives the
frames needed to detect Cohen's d 0.2, 0.5 and 0.8 at alpha and the target power, and the smallest
d each model's kept frames detect; there is no post-hoc power.
``k``: how many dimensions of emotion structure two models share, calibrated. Frames are split
once (seeded, stratified by register) into a fit and a held-out half. At every matched depth, a's
emotion axes (principal axes of its n emotion means, item-centred activations, fit half) are
carried through a ridge map a -> b (fit on the fit half) and orthonormalised in b's space; axis k
scores the cross-validated agreement of a's mapped fit-half means with b's held-out means along it
(near 0 when labels carry nothing). The null permutes the emotion labels by frame (one permutation
per frame, applied to all its items) and reruns the whole pipeline. A max-statistic over all depths
and k (standardised scores) controls the family-wise error at alpha; k at a depth is the number of
leading axes above the threshold, the pair's k the largest over depths (``K_RULE``). Axes are
found by an eigendecomposition with a relative cut-off, so emotion means that span fewer
dimensions (or none: labels that carry nothing exactly) give fewer axes and k = 0 with the reason,
never an error.

Outputs: ``statistics/effect.json``, ``statistics/power.json``, ``statistics/k.json``.
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
from emolens.phases.alignment import comparable_layers, design_units, split_halves
from emolens.phases.emotion_structure import EmotionGrams, label_codes, label_structure, permuted_labels
from emolens.stats import families
from emolens.stats.power import detectable_d, required_n
from emolens.stats.resampling import group_sums, max_statistic_pvalues, ratio_of_sums, sign_flip_pvalue

COHEN_D = (0.2, 0.5, 0.8)  # Cohen's small, medium and large effects


# --- effect sizes and tests, frames as the unit ----------------------------------------------------------

def hedges_g(d: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Hedges' small-sample correction of a one-sample Cohen's d (df = n - 1)."""
    return d * (1.0 - 3.0 / (4.0 * (n - 1.0) - 1.0))


def frame_tests(gain: np.ndarray, separation: np.ndarray, items: Sequence[str], frames: Sequence[str], n_boot: int,
                n_perm: int, seed: int) -> dict[str, np.ndarray]:
    """Per column of the kept pairs' gains [P, c] (separations [P]): frames as the unit.

    ``effect`` = sum(gain) / sum(separation) with its two-stage (frames, then items) BCa CI; Cohen's d
    and Hedges' g of the frame effects G_f / D_f against 0; a sign-flip p-value over frames; the
    numbers of frames, items and pairs. With no kept pair (no pair the model separates cleanly) every
    statistic is NaN and every count 0: nothing to test, reported as such.
    """
    if not len(gain):
        nan, zero = np.full(gain.shape[1], np.nan), np.zeros(gain.shape[1])
        return {"effect": nan, "ci_low": nan, "ci_high": nan, "n_frames": zero, "cohen_d": nan, "hedges_g": nan,
                "p_perm": nan, "n_items": zero, "n_pairs": zero}
    effect, low, high = ratio_of_sums(gain, separation, items, frames, n_boot, seed)
    g, d = group_sums(gain, separation, frames)
    r = g / d[:, None]  # [F, c]: each frame's effect in units of its separation
    n = np.full(gain.shape[1], float(len(r)))
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = r.std(0, ddof=1) if len(r) > 1 else np.full(gain.shape[1], np.nan)
        cohen = np.where(sd > 1e-12, r.mean(0) / sd, np.nan)  # undefined when every frame has the same effect
    p = sign_flip_pvalue(r, n_perm, np.random.default_rng(seed)) if len(r) > 1 else np.full(len(n), np.nan)
    return {"effect": effect, "ci_low": low, "ci_high": high, "n_frames": n, "cohen_d": cohen,
            "hedges_g": hedges_g(cohen, n), "p_perm": p, "n_items": np.full(gain.shape[1], float(len(set(items)))),
            "n_pairs": np.full(gain.shape[1], float(len(gain)))}


# --- inputs ---------------------------------------------------------------------------------------------

def _model_name(path: str | Path, suffix: str) -> str:
    return Path(path).stem.removesuffix(suffix)


def _load_effects(sweep_files: Sequence[str | Path], head_files: Sequence[str | Path]) -> dict[str, dict]:
    """Per model: the residual sweep and the head patching file."""
    models: dict[str, dict] = {}
    for path in sweep_files:
        s = load_pickle(path, "emolens.residual_sweep/1")
        models.setdefault(_model_name(path, "_residual_sweep"), {})["residual"] = s
    for path in head_files:
        h = load_pickle(path, "emolens.head_patching/1")
        models.setdefault(_model_name(path, "_head_patching"), {})["heads"] = h
    return models


def _kept(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The kept pairs' gains [P_kept, ...] = LD_patched - LD_run, separations, items and frames."""
    kept = np.asarray(result["included"], bool)
    run = np.asarray(result["ld_clean_run"], float)
    ld = np.asarray(result["ld_patched"], float)
    gain = ld - run.reshape((-1,) + (1,) * (ld.ndim - 1))
    items, frames = (np.asarray(result[k])[kept].tolist() for k in ("items", "frames"))
    return gain[kept], np.asarray(result["separation"], float)[kept], items, frames


def identity_cells(sweep: dict[str, Any]) -> np.ndarray:
    """[layers, positions] bool: index L and index 0 at the last position, fixed by construction."""
    mask = np.zeros((len(sweep["layers"]), len(sweep["positions"])), bool)
    last = list(sweep["positions"]).index(-1)
    mask[[0, -1], last] = True
    return mask


def _effect_tables(model: dict, n_boot: int, n_perm: int, seed: int) -> dict[str, dict[str, Any]]:
    """Frame-level tests of the residual cells (identity cells not tested), single heads and the joint patch."""
    out: dict[str, dict[str, Any]] = {}
    if "residual" in model:
        s = model["residual"]
        gain, sep, items, frames = _kept(s)
        shape = gain.shape[1:]
        table = frame_tests(gain.reshape(len(gain), int(np.prod(shape))), sep, items, frames, n_boot, n_perm, seed)
        identity = identity_cells(s)
        table["p_perm"] = np.where(identity.ravel(), np.nan, table["p_perm"])
        out["residual"] = {k: np.reshape(v, shape) for k, v in table.items()}
        out["residual"] |= {"layers": list(s["layers"]), "positions": list(s["positions"]),
                            "position_roles": list(s["position_roles"]), "identity_cells": identity}
    if "heads" in model:
        h = model["heads"]
        gain, sep, items, frames = _kept(h)  # [P_kept, K + 1]: K single heads, then the joint patch
        table = frame_tests(gain, sep, items, frames, n_boot, n_perm, seed)
        out["heads"] = {k: v[:-1] for k, v in table.items()} | {"heads": [list(x) for x in h["heads"]]}
        out["joint"] = {k: v[-1] for k, v in table.items()}
    return out


# --- run --------------------------------------------------------------------------------------------------

def run_effect(sweep_files: Sequence[str | Path], head_files: Sequence[str | Path], out_json: str | Path,
               seed: int = 0, n_boot: int = 2000, n_perm: int = 10000, alpha: float = 0.05) -> None:
    """Effect sizes, frame-then-item bootstrap CIs, frame sign-flip and BH-adjusted p-values per cell and head."""
    started = time.time()
    models = {}
    for name, model in _load_effects(sweep_files, head_files).items():
        tables = _effect_tables(model, n_boot, n_perm, seed)
        n_tests = sum(int(np.sum(np.isfinite(t["p_perm"]))) for t in tables.values())
        tables["family"] = {"tests": n_tests, "significant_after_bh": families.pool(list(tables.values()), alpha)}
        models[name] = tables
    settings = {"seed": seed, "n_boot": n_boot, "n_perm": n_perm, "alpha": alpha}
    save_json(settings | {
        "unit": "frame (all kept pairs of its items together; n_frames, with n_items and n_pairs beside; a "
                "dataset without frames makes each item its own frame)",
        "effect": "ratio of sums over kept pairs, sum(LD_patched - LD_run) / sum(LD_donor - LD_run), with a 95% BCa "
                  "two-stage bootstrap CI (frames, then items within frames)",
        "test": "two-sided sign-flip permutation over frames of the frame effects G_f / D_f",
        "bh_family": families.PATCHING, "correction": families.CORRECTION,
        "models": models,
        "provenance": provenance(settings, started, inputs=[str(p) for p in [*sweep_files, *head_files]]),
    }, out_json)


def run_power(sweep_files: Sequence[str | Path], head_files: Sequence[str | Path], out_json: str | Path,
              alpha: float = 0.05, power: float = 0.8) -> None:
    """Prospective power: frames needed per effect size, and the smallest effect each model's frames detect."""
    started = time.time()
    models = {}
    for name, model in _load_effects(sweep_files, head_files).items():
        models[name] = {}
        for part, result in model.items():
            _, _, items, frames = _kept(result)
            models[name][part] = {"n_frames": len(set(frames)), "n_items": len(set(items)),
                                  "detectable_d": detectable_d(len(set(frames)), alpha, power)}
    settings = {"alpha": alpha, "power": power}
    save_json(settings | {
        "test": "two-sided one-sample t-test over frames, the unit of the effect tests (statsmodels TTestPower), "
                "prospective",
        "cohen_d": list(COHEN_D),
        "frames_required": [required_n(d, alpha, power) for d in COHEN_D],
        "models": models,
        "provenance": provenance(settings, started, inputs=[str(p) for p in [*sweep_files, *head_files]]),
    }, out_json)


# --- k: how many emotion dimensions align across a model pair -------------------------------------------

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


def _keep_position(act: dict[str, Any], position: str) -> dict[str, Any]:
    """An activations file with only the residual readout ``position`` ("last" or "mean") kept in memory."""
    return act | {"resid": {position: act["resid"][position]}}


def run_k(act_files: Sequence[str | Path], sub_files: Sequence[str | Path], out_json: str | Path,
          seed: int = 0, n_perm: int = 200, ridge: float = 0.1, position: str = "last",
          alpha: float = 0.05) -> None:
    """How many emotion dimensions align across each model pair, family-wise calibrated (``K_RULE``).

    Each model's files are read once (not once per pair it is in) and only the residual readout
    ``position`` is kept; the subspace files give k_max (capped at n_emotions - 1).
    """
    started = time.time()
    names = [Path(p).stem for p in act_files]
    if names != [_model_name(p, "_subspaces") for p in sub_files]:
        raise ValueError(f"activation files {names} and subspace files {list(map(str, sub_files))} differ")
    acts = [_keep_position(load_pickle(p, "emolens.activations/2"), position) for p in act_files]
    subs = [load_pickle(p, "emolens.subspaces/1") for p in sub_files]
    pairs = []
    for i, j in itertools.combinations(range(len(names)), 2):
        act_a, act_b, sub_a, sub_b = acts[i], acts[j], subs[i], subs[j]
        if list(act_a["ids"]) != list(act_b["ids"]):
            raise ValueError(f"{act_files[i]} and {act_files[j]} hold different prompts or orders")
        quant = [act_a.get("quantization"), act_b.get("quantization")]
        pairs.append({"models": [names[i], names[j]], "int8_involved": any(quant)}
                     | _pair_k(act_a, act_b, sub_a, sub_b, seed, n_perm, ridge, position, alpha))
    settings = {"seed": seed, "n_perm": n_perm, "ridge": ridge, "position": position, "alpha": alpha}
    save_json(settings | {
        "score": K_SCORE, "null": K_NULL, "rule": K_RULE,
        "emotions": list(emotion_order(e for act in acts for e in act["emotions"])),
        "family": "per model pair: all matched depths x k = 1..k_max",
        "pairs": pairs,
        "provenance": provenance(settings, started, inputs=[str(p) for p in [*act_files, *sub_files]]),
    }, out_json)
