"""Phase 6, attention heads: which heads move the emotion, screened cheaply, then confirmed.

Method (6a, screening). Every head of every layer is patched exactly at the last position (its
d_head slice of the attention output projection's input, donor into run), with the prefix-cached
engine: one token per (head, pair). Attribution patching (gradient x activation difference; Nanda
2023, AtP* Kramar et al. 2024) estimates every head's effect from one forward and backward of the
clean run prompt: dLD/d(head input) . (donor - run), summed over d_head, at the last position and
summed over the sweep's readout positions (the suffix and the end of the message, as roles counted
from the end, so every pair takes part whatever its lengths). Effects are summarised with the
bounded metric of :mod:`emolens.stats.effects` (ratio of sums over the pairs the clean model separates).
Spearman's rho says how well the cheap estimate ranks heads against the exact last-position
effects. The top-K heads by |exact effect| go to 6b.
The heads are selected on one half of the frames and confirmed on the other (:func:`frame_split`).
Method (6b, confirmation). Each top-K head is patched alone, then all K together, at every readout
position (the same roles as the residual sweep), on every pair, with frame-then-item bootstrap CIs of
the ratio-of-sums effect; the fast engine puts the K + 1 variants in the batch and reads only the
label logits, and it is the same code the tests check against the full-recompute reference.

Inputs: a model adapter, the dataset records (and 6a's JSON for 6b). Outputs:
``results/<p>/screening/head_scores_<m>.json`` and
``results/<p>/patching/head/<m>_head_patching.pkl`` (schema ``emolens.head_patching/1``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens.data.readout import DEFAULT, Readout
from emolens.engine.attribution import attribute_heads
from emolens.engine.pairs import Pairs
from emolens.engine.patching import head_site, normalised, patch_pairs
from emolens.io import ResultFileError, provenance, save_json, save_pickle
from emolens.model.adapter import ModelAdapter
from emolens.phases.residual import MESSAGE_POSITIONS, metric_fields, prepare_readout_pairs
from emolens.stats.effects import MIN_SEPARATION, contrast_counts, kept_ratio, summarise
from emolens.stats.resampling import frame_split

log = logging.getLogger(__name__)
SCREENING_SCHEMA = "emolens.head_screening/1"
PATCHING_SCHEMA = "emolens.head_patching/1"


def exact_last_position(adapter: ModelAdapter, pairs: Pairs,
                        batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patched LD [P, L, H] of each head alone at the last position (NaN in a hybrid's blocks without heads); the
    clean LDs [P] of run and donor."""
    layers, n_heads = adapter.head_layers, adapter.n_heads
    variants = [(head_site(layer, h, (-1,)),) for layer in layers for h in range(n_heads)]
    ld, ld_run, ld_donor = patch_pairs(adapter, pairs, variants, batch_size=batch_size,
                                       desc="heads, exact last position")
    out = np.full((len(pairs), adapter.n_layers, n_heads), np.nan)  # a block without heads stays NaN
    out[:, layers] = ld.reshape(len(pairs), len(layers), n_heads)
    return out, ld_run, ld_donor


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    from scipy.stats import spearmanr  # where used: a second of start-up that the patch_heads job does not need

    return float(spearmanr(a[ok], b[ok]).statistic)


def top_heads(scores: np.ndarray, k: int) -> list[list[int]]:
    """The k (layer, head) sites with the largest |score| [L, H], largest first (NaN last)."""
    flat = np.nan_to_num(np.abs(scores), nan=-1.0).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [[int(i // scores.shape[1]), int(i % scores.shape[1])] for i in order]


def run_screening(adapter: ModelAdapter, records: Sequence[dict[str, Any]], out_json: str | Path, *,
                  top_k: int = 10, max_pairs: int | None = None, batch_size: int = 32, seed: int = 0,
                  direction: str = "denoising", message_positions: int = MESSAGE_POSITIONS,
                  min_separation: float = MIN_SEPARATION, readout: Readout = DEFAULT,
                  settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phase 6a on the selection half of the frames: exact last-position effects and AtP estimates of
    every head; the top-K heads."""
    started = time.time()
    records = frame_split(records, seed)[0]
    pairs, offsets, roles, labels = prepare_readout_pairs(
        adapter, records, message_positions, direction=direction, max_pairs=max_pairs, seed=seed, readout=readout)
    log.info("%s: screening %d x %d heads on %d pairs, %s", adapter.name, adapter.n_layers, adapter.n_heads,
             len(pairs), direction)
    ld, ld_run, ld_donor = exact_last_position(adapter, pairs, batch_size)
    separation = ld_donor - ld_run
    included = separation >= min_separation
    exact = kept_ratio(ld - ld_run[:, None, None], separation, included)  # [L, H]
    atp = attribute_heads(adapter, pairs, offsets=offsets, batch_size=batch_size,
                          desc="heads, attribution")  # [P, L, H, n_offsets], an estimate of LD_patched - LD_run
    atp_last = kept_ratio(atp[..., offsets.index(-1)], separation, included)
    atp_all = kept_ratio(atp.sum(-1), separation, included)
    result = {
        "schema": SCREENING_SCHEMA,
        "model": adapter.name,
        "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads,
        "layers_without_heads": sorted(set(range(adapter.n_layers)) - set(adapter.head_layers)),
        "exact_last_position": exact,
        "attribution": atp_all,
        "attribution_last_position": atp_last,
        "attribution_positions": offsets,
        "attribution_position_roles": roles,
        "spearman": _spearman(atp_last.ravel(), exact.ravel()),
        "spearman_all_positions": _spearman(atp_all.ravel(), exact.ravel()),
        "top_heads": top_heads(exact, top_k),
        "half": "selection",
        "items": sorted(set(labels.items)),
        "frames": sorted(set(labels.frames)),
        "effect": "ratio of sums over kept pairs: sum(LD_patched - LD_run) / sum(LD_donor - LD_run)",
        "n_pairs": len(pairs),
        "n_pairs_included": int(included.sum()),
        "min_separation": float(min_separation),
        "contrast_counts": contrast_counts(labels.contrasts, included, readout.emotions),
        "readout": readout.as_dict(),
        "suffix": readout.suffix,
        "label_token_ids": pairs.label_token_ids,
        "direction": direction,
        "quantization": adapter.quantization,
        "provenance": provenance(settings or {}, started, model=adapter.name),
    }
    save_json(result, out_json)
    log.info("wrote %s: %d of %d pairs kept; spearman %s (last position), %s (readout positions)", out_json,
             included.sum(), len(pairs), result["spearman"], result["spearman_all_positions"])
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
                      message_positions: int = MESSAGE_POSITIONS, min_separation: float = MIN_SEPARATION,
                      readout: Readout = DEFAULT, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phase 6b on the confirmation half of the frames (6a never saw them): the top-K heads patched one
    at a time and jointly, at every readout position, with CIs."""
    started = time.time()
    screening = _load_screening(Path(screening_json), adapter)
    records = frame_split(records, seed)[1]
    heads = [tuple(map(int, h)) for h in screening["top_heads"]]
    direction = direction or screening.get("direction", "denoising")
    pairs, offsets, roles, labels = prepare_readout_pairs(
        adapter, records, message_positions, direction=direction, max_pairs=max_pairs, seed=seed, readout=readout)
    log.info("%s: patching %d heads at %d readout positions on %d pairs, %s", adapter.name, len(heads),
             len(offsets), len(pairs), direction)
    sites = [head_site(layer, h, offsets) for layer, h in heads]
    variants = [(s,) for s in sites] + [tuple(sites)]  # K single heads, then all K jointly
    ld, ld_run, ld_donor = patch_pairs(adapter, pairs, variants, batch_size=batch_size,
                                       desc="heads, readout positions")
    summary = summarise(ld, ld_run, ld_donor, labels, min_separation, n_resamples, seed, emotions=readout.emotions)
    effect = normalised(ld, ld_run, ld_donor)  # [P, K + 1]
    result = {
        "schema": PATCHING_SCHEMA,
        "model": adapter.name,
        "heads": [list(h) for h in heads],
        "positions": offsets,
        "position_roles": roles,
        "half": "confirmation",
        "pairs": [tuple(p) for p in pairs.ids],
        **labels._asdict(),
        "effect_single": effect[:, :-1],
        "effect_joint": effect[:, -1],
        "ld_patched": ld,
        "summary_single": summary["summary"][:-1],
        "ci_single": np.stack([summary["ci_low"][:-1], summary["ci_high"][:-1]], axis=1),
        "summary_joint": float(summary["summary"][-1]),
        "ci_joint": np.array([summary["ci_low"][-1], summary["ci_high"][-1]]),
        **{k: summary[k] for k in ("separation", "included", "min_separation", "ci", "n_frames", "n_items",
                                   "n_pairs_included", "contrast_counts")},
        **metric_fields(adapter, pairs, readout, direction, ld_run, ld_donor),
        "provenance": provenance(settings or {}, started, model=adapter.name,
                                 screening=str(screening_json)),
    }
    save_pickle(result, out)
    log.info("wrote %s: joint effect %.3f [%.3f, %.3f] over %d kept pairs", out, result["summary_joint"],
             *result["ci_joint"], summary["n_pairs_included"])
    return result
