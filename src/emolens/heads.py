"""Phase 6, attention heads: which heads move the emotion, screened cheaply, then confirmed.

Method (6a, screening). Every head of every layer is patched exactly at the last position (its
d_head slice of the attention output projection's input, donor into run), with the prefix-cached
engine: one token per (head, pair). Attribution patching (gradient x activation difference; Nanda
2023, AtP* Kramar et al. 2024) estimates every head's effect from one forward and backward of the
clean run prompt: dLD/d(head input) . (donor - run), summed over d_head, normalised like the
effects. It is scored at the last position (all pairs) and summed over all positions (pairs whose
prompts have the same token length, positions aligned). Spearman's rho says how well the cheap
estimate ranks heads against the exact last-position effects. The top-K heads by |exact effect|
go to 6b.
Method (6b, confirmation). Each top-K head is patched alone, then all K together, at every
position, on the equal-length pairs. A patch at position 0 leaves no prefix to cache, so the fast
engine runs the whole prompt here too; it still puts the K + 1 variants in the batch and reads only
the label logits, and it is the same code the tests check against the full-recompute reference.

Inputs: a model adapter, the dataset records (and 6a's JSON for 6b). Outputs:
``results/<p>/screening/head_scores_<m>.json`` and
``results/<p>/patching/head/<m>_head_patching.pkl`` (schema ``emolens.head_patching/1``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from emolens.io import ResultFileError, provenance, save_json, save_pickle
from emolens.models import ModelAdapter
from emolens.patching import (
    Pairs,
    attribute_heads,
    head_site,
    normalised,
    patch_pairs,
    prepare_pairs,
)
from emolens.readout import READOUT_SUFFIX
from emolens.statistics import mean_ci

log = logging.getLogger(__name__)
SCREENING_SCHEMA = "emolens.head_screening/1"
PATCHING_SCHEMA = "emolens.head_patching/1"


def exact_last_position(adapter: ModelAdapter, pairs: Pairs,
                        batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised effect [P, L, H] of patching each head alone at the last position; clean LDs [P]."""
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    variants = [(head_site(layer, h, (-1,)),) for layer in range(n_layers) for h in range(n_heads)]
    ld, ld_run, ld_donor = patch_pairs(adapter, pairs, variants, batch_size=batch_size,
                                       desc="heads, exact last position")
    return normalised(ld, ld_run, ld_donor).reshape(len(pairs), n_layers, n_heads), ld_run, ld_donor


def attribution(adapter: ModelAdapter, pairs: Pairs, ld_run: np.ndarray, ld_donor: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """AtP estimates, normalised: last position [P, L, H] (all pairs), all positions [P, L, H].

    One forward and backward per batch: equal-length pairs are scored at every position (their
    last-position score is the last column); the others only at the last position (NaN over all
    positions).
    """
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    last = np.full((len(pairs), n_layers, n_heads), np.nan)
    every = np.full_like(last, np.nan)
    same = pairs.same_length
    if same.any():
        scores = attribute_heads(adapter, pairs, subset=np.flatnonzero(same), all_positions=True,
                                 batch_size=batch_size, desc="heads, attribution (all positions)")
        last[same] = scores[..., -1]
        every[same] = np.nansum(scores, axis=-1)
    if (~same).any():
        scores = attribute_heads(adapter, pairs, subset=np.flatnonzero(~same), all_positions=False,
                                 batch_size=batch_size, desc="heads, attribution (last position)")
        last[~same] = scores[..., -1]
    # An estimate of LD_patched - LD_run already; normalise by LD_donor - LD_run like the effects.
    zero = np.zeros_like(ld_run)
    return normalised(last, zero, ld_donor - ld_run), normalised(every, zero, ld_donor - ld_run)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(spearmanr(a[ok], b[ok]).statistic)


def _nanmean(x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(0), np.nansum(x, 0) / ok.sum(0), np.nan)


def top_heads(scores: np.ndarray, k: int) -> list[list[int]]:
    """The k (layer, head) sites with the largest |score| [L, H], largest first (NaN last)."""
    flat = np.nan_to_num(np.abs(scores), nan=-1.0).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [[int(i // scores.shape[1]), int(i % scores.shape[1])] for i in order]


def run_screening(adapter: ModelAdapter, records: Sequence[dict[str, Any]], out_json: str | Path, *,
                  top_k: int = 10, max_pairs: int | None = None, batch_size: int = 32, seed: int = 0,
                  direction: str = "denoising", settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phase 6a: exact last-position effects and AtP estimates of every head; the top-K heads."""
    started = time.time()
    pairs = prepare_pairs(adapter, records, direction=direction, max_pairs=max_pairs, seed=seed)
    log.info("%s: screening %d x %d heads on %d pairs (%d of equal length), %s", adapter.name,
             adapter.n_layers, adapter.n_heads, len(pairs), pairs.same_length.sum(), direction)
    exact, ld_run, ld_donor = exact_last_position(adapter, pairs, batch_size)
    exact = _nanmean(exact)  # [L, H]
    atp_last, atp_all = (_nanmean(a) for a in attribution(adapter, pairs, ld_run, ld_donor, batch_size))
    result = {
        "schema": SCREENING_SCHEMA,
        "model": adapter.name,
        "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads,
        "exact_last_position": exact,
        "attribution": atp_all,
        "attribution_last_position": atp_last,
        "spearman": _spearman(atp_last.ravel(), exact.ravel()),
        "spearman_all_positions": _spearman(atp_all.ravel(), exact.ravel()),
        "top_heads": top_heads(exact, top_k),
        "n_pairs": len(pairs),
        "n_pairs_same_length": int(pairs.same_length.sum()),
        "suffix": READOUT_SUFFIX,
        "label_token_ids": pairs.label_token_ids,
        "direction": direction,
        "quantization": adapter.quantization,
        "provenance": provenance(settings or {}, started, model=adapter.name),
    }
    save_json(result, out_json)
    log.info("wrote %s: spearman %s (last position), %s (all positions)", out_json, result["spearman"],
             result["spearman_all_positions"])
    return result


def _load_screening(path: Path, adapter: ModelAdapter) -> dict[str, Any]:
    try:
        screening = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultFileError(f"{path}: head screening file not found") from None
    except json.JSONDecodeError as e:
        raise ResultFileError(f"{path}: truncated or corrupt JSON ({e.msg}); rebuild it with: "
                              f"snakemake -R {path}") from None
    heads = screening.get("top_heads") if isinstance(screening, dict) else None
    if not heads:
        raise ResultFileError(f"{path}: no 'top_heads' to patch")
    for layer, h in heads:
        if not (0 <= layer < adapter.n_layers and 0 <= h < adapter.n_heads):
            raise ResultFileError(f"{path}: head ({layer}, {h}) does not exist in {adapter.name} "
                                  f"({adapter.n_layers} layers x {adapter.n_heads} heads); a foreign screening?")
    return screening


def run_head_patching(adapter: ModelAdapter, records: Sequence[dict[str, Any]], screening_json: str | Path,
                      out: str | Path, *, max_pairs: int | None = None, batch_size: int = 32, seed: int = 0,
                      direction: str | None = None, n_resamples: int = 2000,
                      settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phase 6b: the top-K heads patched one at a time and jointly, at all positions, with CIs."""
    started = time.time()
    screening = _load_screening(Path(screening_json), adapter)
    heads = [tuple(map(int, h)) for h in screening["top_heads"]]
    direction = direction or screening.get("direction", "denoising")
    pairs = prepare_pairs(adapter, records, direction=direction, max_pairs=max_pairs, seed=seed)
    same = np.flatnonzero(pairs.same_length)
    if not len(same):
        raise ValueError("head patching at all positions needs pairs whose prompts have equal token length; "
                         "there are none")
    log.info("%s: patching %d heads at all positions on %d equal-length pairs, %s", adapter.name,
             len(heads), len(same), direction)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i in same:
        by_length[len(pairs.run[i])].append(int(i))
    ld = np.full((len(pairs), len(heads) + 1), np.nan)  # K single heads, then all K jointly
    ld_run, ld_donor = np.full(len(pairs), np.nan), np.full(len(pairs), np.nan)
    for length, idx in sorted(by_length.items()):
        offsets = range(-length, 0)
        sites = [head_site(layer, h, offsets) for layer, h in heads]
        variants = [(s,) for s in sites] + [tuple(sites)]
        ld[idx], ld_run[idx], ld_donor[idx] = patch_pairs(adapter, pairs, variants, subset=idx,
                                                          batch_size=batch_size,
                                                          desc=f"heads, all positions ({length} tokens)")
    effect = normalised(ld, ld_run, ld_donor)[same]  # [P, K + 1]
    mean, low, high = mean_ci(effect, n_resamples, seed)
    result = {
        "schema": PATCHING_SCHEMA,
        "model": adapter.name,
        "heads": [list(h) for h in heads],
        "pairs": [pairs.ids[i] for i in same],
        "effect_single": effect[:, :-1],
        "effect_joint": effect[:, -1],
        "mean_single": mean[:-1],
        "ci_single": np.stack([low[:-1], high[:-1]], axis=1),
        "mean_joint": float(mean[-1]),
        "ci_joint": np.array([low[-1], high[-1]]),
        "ci": "95% BCa bootstrap over pairs (NaN pairs left out per cell)",
        "ld_clean_run": ld_run[same],
        "ld_clean_donor": ld_donor[same],
        "suffix": READOUT_SUFFIX,
        "label_token_ids": pairs.label_token_ids,
        "direction": direction,
        "quantization": adapter.quantization,
        "provenance": provenance(settings or {}, started, model=adapter.name,
                                 screening=str(screening_json)),
    }
    save_pickle(result, out)
    log.info("wrote %s: joint effect %.3f [%.3f, %.3f]", out, result["mean_joint"], *result["ci_joint"])
    return result
