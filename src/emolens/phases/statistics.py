"""Effect sizes and power (phase 7; the aligned dimension k is :mod:`emolens.phases.aligned_dims`).

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
Each register's pairs alone give the last-position effect per index and the joint head patch beside (descriptive).

Outputs: ``statistics/effect.json``, ``statistics/power.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens.io import load_pickle, provenance, save_json
from emolens.stats import families
from emolens.stats.power import detectable_d, required_n
from emolens.stats.resampling import group_sums, ratio_of_sums, sign_flip_pvalue

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


def register_effects(model: dict, register_of: dict[str, str], n_boot: int, n_perm: int,
                     seed: int) -> dict[str, dict[str, Any]]:
    """On each register's kept pairs alone: the last-position residual effect per residual index and the joint
    head patch, frame-level as everywhere (descriptive beside the pooled family: not BH-corrected)."""
    out: dict[str, dict[str, Any]] = {}
    for register in sorted(set(register_of.values())):
        tables = {}
        if "residual" in model:
            gain, sep, items, frames = _kept(model["residual"])
            rows = [i for i, item in enumerate(items) if register_of.get(item) == register]
            last = gain[:, :, list(model["residual"]["positions"]).index(-1)]  # [P_kept, L+1]
            tables["residual_last"] = frame_tests(last[rows], sep[rows], [items[i] for i in rows],
                                                  [frames[i] for i in rows], n_boot, n_perm, seed)
        if "heads" in model:
            gain, sep, items, frames = _kept(model["heads"])
            rows = [i for i, item in enumerate(items) if register_of.get(item) == register]
            tables["joint"] = {k: v[-1] for k, v in frame_tests(gain[rows], sep[rows], [items[i] for i in rows],
                                                                [frames[i] for i in rows], n_boot, n_perm,
                                                                seed).items()}
        out[register] = tables
    return out


# --- run --------------------------------------------------------------------------------------------------

def run_effect(sweep_files: Sequence[str | Path], head_files: Sequence[str | Path], out_json: str | Path,
               seed: int = 0, n_boot: int = 2000, n_perm: int = 10000, alpha: float = 0.05,
               register_of: dict[str, str] | None = None) -> None:
    """Effect sizes, frame-then-item bootstrap CIs, frame sign-flip and BH-adjusted p-values per cell and head;
    with ``register_of`` (item -> register), also per register (:func:`register_effects`)."""
    started = time.time()
    models = {}
    for name, model in _load_effects(sweep_files, head_files).items():
        tables = _effect_tables(model, n_boot, n_perm, seed)
        n_tests = sum(int(np.sum(np.isfinite(t["p_perm"]))) for t in tables.values())
        tables["family"] = {"tests": n_tests, "significant_after_bh": families.pool(list(tables.values()), alpha)}
        if register_of:
            tables["by_register"] = register_effects(model, register_of, n_boot, n_perm, seed)
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
