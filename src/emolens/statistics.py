"""Effect sizes, power and aligned subspace dimension (phase 7).

Methods. The unit of inference is the prompt pair. ``effect``: for every layer x position of each
residual sweep and every patched head (singly, and all top-K jointly) we report the mean patching
effect, Cohen's d for a one-sample contrast against 0 (mean / sd, ddof 1), Hedges' g = d (1 - 3 /
(4 df - 1)) with df = n - 1, a BCa bootstrap 95% CI of the mean over pairs, and a two-sided
sign-flip permutation p-value; Benjamini-Hochberg corrects, within each model, over all its
residual cells and heads together (one family per model). ``power``: statsmodels' one-sample t-test
power (TTestPower) at each test's n and |d|, and the n that reaches the target power; and the
two-sample t-test power (TTestIndPower) of the readout contrast between two emotion groups at the
dataset's n per group for Cohen's small, medium and large d. ``k``: for each model pair, a ridge map
from a's residual space to b's (fit on half the prompts) carries a's top-k emotion-subspace axes
into b's space; the score at k is the mean cosine of the principal angles with b's top-k axes, at
every matched depth, for k = 1..k_max; the null is random k-dimensional subspaces of a's space
carried through the same map. The chosen k at a depth is the LARGEST k whose score exceeds the
null's 95th percentile at that k (0 if none, so smaller k may fail while a larger one passes); the
pair's k is the largest chosen k over matched depths.

Outputs: ``statistics/effect.json``, ``statistics/power.json``, ``statistics/k.json``.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from emolens.alignment import comparable_layers, fit_linear_map, split_halves, subspace_curve
from emolens.io import load_pickle, provenance, save_json

COHEN_D = (0.2, 0.5, 0.8)  # Cohen's small, medium and large effects


# --- effect sizes and tests ---------------------------------------------------------------------------

def hedges_g(d: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Hedges' small-sample correction of a one-sample Cohen's d (df = n - 1)."""
    return d * (1.0 - 3.0 / (4.0 * (n - 1.0) - 1.0))


def describe(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per column of x [n, c] (NaN = not applicable): n, mean, sd, Cohen's d and Hedges' g against 0."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, on purpose
        n = np.sum(~np.isnan(x), axis=0).astype(float)  # [c]
        mean, sd = np.nanmean(x, axis=0), np.nanstd(x, axis=0, ddof=1)
        d = np.where(sd > 0, mean / sd, np.nan)  # undefined when every pair has the same effect
        return {"n": n, "mean": mean, "sd": sd, "cohen_d": d, "hedges_g": hedges_g(d, n)}


def bootstrap_ci(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BCa 95% CI of each column's mean over rows (x [n, c], no NaN); a constant column's CI is its value."""
    low, high = x.mean(0), x.mean(0)  # [c]
    vary = np.ptp(x, axis=0) > 0
    if len(x) >= 3 and vary.any():
        ci = stats.bootstrap((x[:, vary],), np.mean, n_resamples=n_boot, axis=0, vectorized=True,
                             method="BCa", rng=rng, batch=max(1, 2**24 // x.size)).confidence_interval
        low[vary], high[vary] = ci.low, ci.high
    return low, high


def sign_flip_pvalue(x: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """Two-sided sign-flip permutation p-value of each column's mean against 0 (x [n, c], no NaN)."""
    observed = np.abs(x.mean(0))  # [c]
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, len(x)))  # [n_perm, n]
    null = np.abs(signs @ x) / len(x)  # [n_perm, c]
    return (1 + np.sum(null >= observed * (1 - 1e-12), axis=0)) / (1 + n_perm)


def applicable_groups(x: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of x [n, c] grouped by which rows are not NaN, so columns that share their
    applicable pairs are resampled together."""
    patterns, inverse = np.unique(~np.isnan(x.T), axis=0, return_inverse=True)
    for g, rows in enumerate(patterns):
        yield rows, np.flatnonzero(inverse.ravel() == g)


def mean_ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over pairs (axis 0) of values [n, ...] and its BCa 95% CI, NaN pairs left out per cell.

    Returns (mean, low, high) of shape values.shape[1:]; a cell with fewer than two pairs has a NaN CI.
    """
    values = np.asarray(values, dtype=float)
    x = values.reshape(len(values), -1)
    mean, low, high = (np.full(x.shape[1], np.nan) for _ in range(3))
    rng = np.random.default_rng(seed)
    for rows, cols in applicable_groups(x):
        sub = x[np.ix_(rows, cols)]  # [n_valid, n_cols]
        if rows.any():
            mean[cols] = sub.mean(0)
        if rows.sum() >= 2:
            low[cols], high[cols] = bootstrap_ci(sub, n_boot, rng)
    shape = values.shape[1:]
    return mean.reshape(shape), low.reshape(shape), high.reshape(shape)


def cell_statistics(x: np.ndarray, n_boot: int, n_perm: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Effect sizes, bootstrap CI and permutation p per column of x [n, c]; NaN rows skipped per column."""
    out = describe(x)
    out |= {key: np.full(x.shape[1], np.nan) for key in ("ci_low", "ci_high", "p_perm")}
    for rows, cols in applicable_groups(x):
        if rows.sum() < 2:
            continue
        sub = x[np.ix_(rows, cols)]  # [n_valid, n_cols]
        out["ci_low"][cols], out["ci_high"][cols] = bootstrap_ci(sub, n_boot, rng)
        out["p_perm"][cols] = sign_flip_pvalue(sub, n_perm, rng)
    return out


def bh_adjust(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over one family; NaN entries stay NaN and are not counted."""
    adjusted = np.full(len(pvalues), np.nan)
    ok = ~np.isnan(pvalues)
    if ok.any():
        adjusted[ok] = multipletests(pvalues[ok], method="fdr_bh")[1]
    return adjusted


def pool_bh(families: Sequence[dict[str, np.ndarray]], alpha: float = 0.05) -> None:
    """Add ``p_bh`` and ``significant`` to each table from one BH correction over all their ``p_perm``."""
    adjusted = bh_adjust(np.concatenate([np.ravel(f["p_perm"]) for f in families]))
    start = 0
    for f in families:
        size = np.size(f["p_perm"])
        f["p_bh"] = adjusted[start:start + size].reshape(np.shape(f["p_perm"]))
        f["significant"] = f["p_bh"] < alpha
        start += size


# --- inputs ---------------------------------------------------------------------------------------------

def _model_name(path: str | Path, suffix: str) -> str:
    return Path(path).stem.removesuffix(suffix)


def _load_effects(sweep_files: Sequence[str | Path], head_files: Sequence[str | Path]) -> dict[str, dict]:
    """Per model: the residual sweep's and the head patching's per-pair effects."""
    models: dict[str, dict] = {}
    for path in sweep_files:
        s = load_pickle(path, "emolens.residual_sweep/1")
        models.setdefault(_model_name(path, "_residual_sweep"), {})["residual"] = s
    for path in head_files:
        h = load_pickle(path, "emolens.head_patching/1")
        models.setdefault(_model_name(path, "_head_patching"), {})["heads"] = h
    return models


def _tables(model: dict, fn: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Apply fn to [n_pairs, c] effect matrices of the residual cells, single heads and joint heads."""
    out: dict[str, dict[str, Any]] = {}
    if "residual" in model:
        s = model["residual"]
        effect = np.asarray(s["effect"], float)  # [P, n_layers, n_positions]
        table = fn(effect.reshape(len(effect), -1))
        out["residual"] = {k: np.reshape(v, effect.shape[1:]) for k, v in table.items()}
        out["residual"] |= {"layers": list(s["layers"]), "positions": list(s["positions"])}
    if "heads" in model:
        h = model["heads"]
        out["heads"] = fn(np.asarray(h["effect_single"], float)) | {"heads": [list(x) for x in h["heads"]]}
        out["joint"] = {k: v[0] for k, v in fn(np.asarray(h["effect_joint"], float)[:, None]).items()}
    return out


# --- power -----------------------------------------------------------------------------------------------

def two_sided_power(analysis: TTestPower | TTestIndPower, d: float, n: float, alpha: float) -> float:
    """statsmodels' two-sided t-test power at |d| and n (n per group for the two-sample test).

    Where the far tail of the noncentral t underflows to NaN (very large |d| or n), the far tail is
    negligible and the near one-sided tail at alpha / 2 is the two-sided power.
    """
    value = float(analysis.power(abs(d), n, alpha))
    return value if np.isfinite(value) else float(analysis.power(abs(d), n, alpha / 2, alternative="larger"))


def achieved_power(d: float, n: float, alpha: float) -> float | None:
    """Power of a two-sided one-sample (or paired) t-test at effect size |d| and n."""
    return two_sided_power(TTestPower(), d, n, alpha) if np.isfinite(d) and n >= 2 else None


def required_n(d: float, alpha: float, power: float) -> int | None:
    """Smallest n (>= 2) at which a two-sided one-sample t-test reaches the target power at |d|."""
    if not (np.isfinite(d) and d != 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fails (NaN) only at huge |d|: searched below
        n = TTestPower().solve_power(effect_size=abs(d), alpha=alpha, power=power)
    if np.isfinite(n):
        return max(2, math.ceil(n))
    return next((n for n in range(2, 100) if achieved_power(d, n, alpha) >= power), None)


def required_n_per_group(d: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> int:
    """n per group for a two-sided two-sample t-test (Cohen's table: 64 at d 0.5, alpha 0.05, power 0.8)."""
    return math.ceil(TTestIndPower().solve_power(effect_size=d, alpha=alpha, power=power, ratio=1.0))


def _power_table(x: np.ndarray, alpha: float, power: float) -> dict[str, np.ndarray]:
    desc = describe(x)
    n, d = desc["n"], desc["cohen_d"]
    return {"n": n, "cohen_d": d,
            "achieved_power": np.array([achieved_power(*a, alpha) for a in zip(d, n, strict=True)], float),
            "n_required": np.array([required_n(v, alpha, power) for v in d], float)}


# --- run --------------------------------------------------------------------------------------------------

def run_effect(sweep_files: Sequence[str | Path], head_files: Sequence[str | Path], out_json: str | Path,
               seed: int = 0, n_boot: int = 2000, n_perm: int = 10000, alpha: float = 0.05) -> None:
    """Effect sizes, bootstrap CIs, permutation and BH-adjusted p-values per layer/position and head."""
    started = time.time()
    rng = np.random.default_rng(seed)
    models = {}
    for name, model in _load_effects(sweep_files, head_files).items():
        tables = _tables(model, lambda x: cell_statistics(x, n_boot, n_perm, rng))
        pool_bh(list(tables.values()), alpha)
        models[name] = tables
    settings = {"seed": seed, "n_boot": n_boot, "n_perm": n_perm, "alpha": alpha}
    save_json(settings | {
        "bh_family": "per model: all residual layer x position cells, single heads and the joint patch",
        "models": models,
        "provenance": provenance(settings, started, inputs=[str(p) for p in [*sweep_files, *head_files]]),
    }, out_json)


def run_power(sweep_files: Sequence[str | Path], head_files: Sequence[str | Path], out_json: str | Path,
              alpha: float = 0.05, power: float = 0.8, n_per_group: int = 225) -> None:
    """Achieved power and required n of every effect test, and the two-sample readout design's power."""
    started = time.time()
    models = {name: _tables(model, lambda x: _power_table(x, alpha, power))
              for name, model in _load_effects(sweep_files, head_files).items()}
    two_sample = {"test": "two-sided two-sample t-test (TTestIndPower), equal groups",
                  "n_per_group": n_per_group, "cohen_d": list(COHEN_D),
                  "achieved_power": [two_sided_power(TTestIndPower(), d, n_per_group, alpha) for d in COHEN_D],
                  "n_required_per_group": [required_n_per_group(d, alpha, power) for d in COHEN_D]}
    settings = {"alpha": alpha, "power": power, "n_per_group": n_per_group}
    save_json(settings | {
        "one_sample_test": "two-sided one-sample t-test on per-pair effects (TTestPower)",
        "models": models, "two_sample_readout": two_sample,
        "provenance": provenance(settings, started, inputs=[str(p) for p in [*sweep_files, *head_files]]),
    }, out_json)


def _pair_k(act_a: dict, act_b: dict, sub_a: dict, sub_b: dict, seed: int, n_perm: int, ridge: float,
            position: str) -> dict[str, Any]:
    """The k-curve against its null at every matched depth of one model pair, and the chosen k."""
    split = split_halves(act_a["emotions"], seed, act_a.get("item_ids"))[0]
    rng = np.random.default_rng(seed)
    depths = []
    ra, rb = act_a["resid"][position], act_b["resid"][position]
    for la, lb in comparable_layers(ra, rb, int(act_a["n_layers"]), int(act_b["n_layers"]))[0]:
        xa, xb = ra[split, la].astype(np.float64), rb[split, lb].astype(np.float64)  # [n_train, da], [n_train, db]
        lmap = fit_linear_map(xa, xb, ridge)
        curve = subspace_curve(sub_a["basis"][la], sub_b["basis"][lb], lmap, n_perm, rng)
        q95 = np.quantile(curve["null"], 0.95, axis=0)  # [k_max]
        above = np.flatnonzero(curve["score"] > q95)
        p = (1 + np.sum(curve["null"] >= curve["score"], axis=0)) / (1 + n_perm)  # [k_max]
        depths.append({"layer_a": la, "layer_b": lb, "score": curve["score"],
                       "null_mean": curve["null"].mean(0), "null_q95": q95, "p": p,
                       "k_chosen": int(above[-1] + 1) if len(above) else 0})
    best = max(depths, key=lambda d: d["k_chosen"])
    return {"k": best["k_chosen"], "k_layers": [best["layer_a"], best["layer_b"]], "depths": depths}


def _keep_position(act: dict[str, Any], position: str) -> dict[str, Any]:
    """An activations file with only the residual readout ``position`` ("last" or "mean") kept in memory."""
    return act | {"resid": {position: act["resid"][position]}}


def run_k(act_files: Sequence[str | Path], sub_files: Sequence[str | Path], out_json: str | Path,
          seed: int = 0, n_perm: int = 200, ridge: float = 0.1, position: str = "last") -> None:
    """How many emotion-subspace dimensions align across each model pair above a random-subspace null.

    Each model's files are read once (not once per pair it is in) and only the residual readout
    ``position`` is kept.
    """
    started = time.time()
    names = [Path(p).stem for p in act_files]
    if names != [_model_name(p, "_subspaces") for p in sub_files]:
        raise ValueError(f"activation files {names} and subspace files {list(map(str, sub_files))} differ")
    acts = [_keep_position(load_pickle(p, "emolens.activations/1"), position) for p in act_files]
    subs = [load_pickle(p, "emolens.subspaces/1") for p in sub_files]
    pairs = []
    for i, j in itertools.combinations(range(len(names)), 2):
        act_a, act_b, sub_a, sub_b = acts[i], acts[j], subs[i], subs[j]
        if list(act_a["ids"]) != list(act_b["ids"]):
            raise ValueError(f"{act_files[i]} and {act_files[j]} hold different prompts or orders")
        quant = [act_a.get("quantization"), act_b.get("quantization")]
        pairs.append({"models": [names[i], names[j]], "int8_involved": "int8" in quant}
                     | _pair_k(act_a, act_b, sub_a, sub_b, seed, n_perm, ridge, position))
    settings = {"seed": seed, "n_perm": n_perm, "ridge": ridge, "position": position}
    save_json(settings | {
        "score": "mean cosine of principal angles between a's mapped top-k subspace and b's top-k subspace",
        "null": "random k-dim subspaces of a's space through the same map",
        "rule": "k = largest k whose score exceeds the null's 95th percentile (0 if none); "
                "pair k = max over matched depths",
        "pairs": pairs,
        "provenance": provenance(settings, started, inputs=[str(p) for p in [*act_files, *sub_files]]),
    }, out_json)
