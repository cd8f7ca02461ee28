"""Attention vs MLP: is the emotion moved into the last position by attention, or computed there by MLPs, and where?

Method. A block writes into the residual stream twice: its attention (a hybrid's mixer) output and its MLP output
(after a post-norm where the block has one; a parallel block such as GPT-NeoX's adds both to the stream it read), so
block output = block input + attention write + MLP write (the adapter's choice is checked by that identity here; a
model whose blocks scale or gate their writes gets a file that says why, and no numbers). For every (source, target)
pair of the residual sweep (the same pair options, so the same pairs), each block's attention write and MLP write at
the last position is replaced by the donor's, one at a time, and the logit difference LD of the two label tokens is
read at the last position, with the prefix-cached engine of :mod:`emolens.engine.patching` (one token per variant).
Attention at the last position reads the other positions: its effect is emotion moved in from the message; an MLP
reads the last position only: its effect is emotion computed (or re-read) at the last token. Each cell is summarised
as the residual sweep's is (:func:`emolens.stats.effects.summarise`: pairs the clean model does not separate are
left out and counted, ratio of sums with a frame-then-item BCa CI); attention minus MLP per block is tested by sign
flips of frame sums (the frame is the unit), Benjamini-Hochberg over the blocks. One identity rides along: the last
block's input and both its writes patched together give the donor's output, effect 1.

Inputs: a model adapter, the dataset records. Output: ``results/<p>/sublayers/<m>.pkl`` (schema
``emolens.sublayers/1``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolens.data.readout import DEFAULT, Readout
from emolens.engine.pairs import Pairs
from emolens.engine.patching import SUBLAYERS, normalised, patch_pairs, resid_site, sublayer_site
from emolens.io import provenance, save_pickle
from emolens.model.adapter import ModelAdapter
from emolens.model.tiny import NOT_ADDITIVE
from emolens.phases.equivalence import TOLERANCE, sublayer_sum_difference
from emolens.phases.residual import MESSAGE_POSITIONS, metric_fields, prepare_readout_pairs
from emolens.stats.effects import MIN_SEPARATION, summarise
from emolens.stats.families import bh
from emolens.stats.resampling import group_sums, sign_flip_pvalue

log = logging.getLogger(__name__)
SCHEMA = "emolens.sublayers/1"


def additivity(adapter: ModelAdapter, tokens: Sequence[int]) -> tuple[float | None, str | None]:
    """|block output - input - attention write - MLP write| on one prompt, and why the phase cannot measure this model
    (None when the writes add up within the build's tolerance)."""
    found = sublayer_sum_difference(adapter, torch.tensor([list(tokens)], device=adapter.device))
    limit = TOLERANCE[str(adapter.dtype).removeprefix("torch.") if adapter.quantization is None else "int8"]
    if found is not None and found <= limit:
        return found, None
    why = NOT_ADDITIVE.get(adapter.config.model_type, "the attention and MLP modules found do not add up")
    return found, (f"its blocks are not input + attention write + MLP write (largest difference {found}, tolerance "
                   f"{limit:g}; sites {adapter.sublayer_paths}): {why}")


def sublayer_sweep(adapter: ModelAdapter, pairs: Pairs, batch_size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Patched LD [P, 2, L] of each block's attention and MLP write at the last position (NaN where a block has no
    such write), LD [P] with the last block's input and both writes patched, and the clean LDs [P] of run and
    donor."""
    L = adapter.n_layers
    cells = [(k, layer) for k, kind in enumerate(SUBLAYERS) for layer in range(L)
             if adapter.sublayers[kind][layer] is not None]
    variants = [(sublayer_site(SUBLAYERS[k], layer),) for k, layer in cells]
    variants.append((resid_site(L - 1), *(sublayer_site(kind, L - 1) for kind in SUBLAYERS
                                          if adapter.sublayers[kind][L - 1] is not None)))
    ld, ld_run, ld_donor = patch_pairs(adapter, pairs, variants, batch_size=batch_size, desc="attention vs MLP")
    out = np.full((len(pairs), len(SUBLAYERS), L), np.nan)
    for j, (k, layer) in enumerate(cells):
        out[:, k, layer] = ld[:, j]
    return out, ld[:, -1], ld_run, ld_donor


def attention_minus_mlp(ld: np.ndarray, ld_run: np.ndarray, ld_donor: np.ndarray, included: np.ndarray,
                        frames: Sequence[str], n_perm: int, alpha: float, seed: int) -> dict[str, np.ndarray]:
    """Per block, the attention effect minus the MLP effect (ratio of sums over the kept pairs, [L]) and its
    two-sided sign-flip p-value over frames (each frame's sum of LD_attention - LD_mlp flipped as a unit: the ratio
    of sums' denominator does not change), BH-adjusted over the blocks."""
    keep = np.flatnonzero(included)
    gap = ld[keep, 0] - ld[keep, 1]  # [kept, L]: LD with attention patched - LD with the MLP patched
    separation = (ld_donor - ld_run)[keep]
    num, _ = group_sums(np.nan_to_num(gap), separation, [frames[i] for i in keep])  # [frames, L]
    difference = np.where(np.isfinite(gap).all(0), gap.sum(0) / separation.sum(), np.nan) if len(keep) else \
        np.full(ld.shape[2], np.nan)
    p = sign_flip_pvalue(num, n_perm, np.random.default_rng(seed)) if len(keep) else np.full(ld.shape[2], np.nan)
    p = np.where(np.isfinite(difference), p, np.nan)
    p_bh, significant = bh(p, alpha)
    return {"difference": difference, "p_perm": p, "p_bh": p_bh, "significant": significant}


def run(adapter: ModelAdapter, records: Sequence[dict[str, Any]], out: str | Path, *,
        message_positions: int = MESSAGE_POSITIONS, max_pairs: int | None = None, direction: str = "denoising",
        batch_size: int = 32, seed: int = 0, readout: Readout = DEFAULT, n_resamples: int = 2000,
        n_perm: int = 1000, alpha: float = 0.05, min_separation: float = MIN_SEPARATION,
        settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Patch every block's attention and MLP write at the last position for the residual sweep's pairs; save."""
    started = time.time()
    pairs, _, _, labels = prepare_readout_pairs(adapter, records, message_positions, direction=direction,
                                                max_pairs=max_pairs, seed=seed, readout=readout)
    additive, why_not = additivity(adapter, pairs.run[0])
    if why_not:  # written, so the workflow goes on; the report says why this model has no attention-vs-MLP numbers
        log.warning("%s: not measured: %s", adapter.name, why_not)
        save_pickle({"schema": SCHEMA, "model": adapter.name, "n_layers": adapter.n_layers, "applicable": False,
                     "reason": why_not, "sublayer_sum": additive, "sites": adapter.sublayer_paths,
                     "provenance": provenance(settings or {}, started, model=adapter.name)}, out)
        return {"applicable": False, "reason": why_not}
    log.info("%s: attention and MLP writes of %d blocks (%s), %d pairs of %d frames, %s", adapter.name,
             adapter.n_layers, adapter.sublayer_paths, len(pairs), len(set(labels.frames)), direction)
    ld, ld_block, ld_run, ld_donor = sublayer_sweep(adapter, pairs, batch_size)
    summary = summarise(ld, ld_run, ld_donor, labels, min_separation, n_resamples, seed,
                        emotions=pairs.label_token_ids)  # summary, ci_low, ci_high [2, L]
    tests = attention_minus_mlp(ld, ld_run, ld_donor, summary["included"], labels.frames, n_perm, alpha, seed)
    block = normalised(ld_block, ld_run, ld_donor)[summary["included"]]  # [kept]: must be 1
    result = {
        "schema": SCHEMA,
        "model": adapter.name,
        "n_layers": adapter.n_layers,
        "applicable": True,
        "kinds": list(SUBLAYERS),
        "blocks": list(range(adapter.n_layers)),
        "relative_depth": (np.arange(adapter.n_layers) + 0.5) / adapter.n_layers,  # block l's middle
        "sites": adapter.sublayer_paths,
        "pairs": [tuple(p) for p in pairs.ids],
        **labels._asdict(),
        "effect": normalised(ld, ld_run, ld_donor),  # [P, 2, L]
        "ld_patched": ld,
        **{k: summary[k] for k in ("separation", "included", "min_separation", "summary", "ci_low", "ci_high", "ci",
                                   "n_frames", "n_items", "n_pairs_included", "contrast_counts")},
        **{f"attention_minus_mlp_{k}": v for k, v in tests.items()},
        "alpha": alpha,
        "test": "two-sided sign flips of frame sums of LD_attention - LD_mlp, BH over blocks",
        "block_identity": float(np.abs(block - 1).max()) if block.size else None,
        "sublayer_sum": additive,
        **metric_fields(adapter, pairs, readout, direction, ld_run, ld_donor),
        "provenance": provenance(settings or {}, started, model=adapter.name),
    }
    save_pickle(result, out)
    log.info("wrote %s: attention %s, MLP %s by block", out, np.round(summary["summary"][0], 2),
             np.round(summary["summary"][1], 2))
    return result
