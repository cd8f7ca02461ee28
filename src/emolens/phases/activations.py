"""Phase 2, activations: the residual stream at every layer, for every prompt.

Method. Each prompt is the dataset text inside the configured readout (prefix, text, suffix; see
:mod:`emolens.data.readout`). One clean forward pass per batch records the residual stream entering every
block (index l < L, equal to Hugging Face ``hidden_states[l]``) and the last block's output (index
L, before the final norm), and stops there: no final norm, no unembedding. Batches group prompts of
equal token length, so no padding enters any sum. We keep the last token's vector and the mean over
the prompt's tokens, stored in float32 at every width: float16 would overflow (inf) on residual
streams of very large norm such as Gemma-3's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from emolens.data.dataset import load_dataset
from emolens.data.readout import DEFAULT, Readout
from emolens.data.surface import length_match, token_counts
from emolens.engine.inputs import length_buckets, tokenize
from emolens.engine.oom import run_with_backoff
from emolens.io import provenance, save_pickle
from emolens.model.adapter import ModelAdapter
from emolens.model.loading import load_model
from emolens.stats.resampling import frame_groups

log = logging.getLogger(__name__)
SCHEMA = "emolens.activations/2"


class _StopForward(Exception):
    """Raised by the hook on the highest needed site, so nothing after it is computed."""


def capture_residual(adapter: ModelAdapter, input_ids: torch.Tensor,
                     indices: Sequence[int]) -> dict[int, torch.Tensor]:
    """Residual stream [batch, pos, d_model] at each index, from one forward that stops early."""
    captured: dict[int, torch.Tensor] = {}
    last = max(indices)

    def keep(idx: int):
        def fn(hidden: torch.Tensor) -> None:
            captured[idx] = hidden.detach()
            if idx == last:
                raise _StopForward
        return fn

    with adapter.hooks(resid={idx: keep(idx) for idx in indices}):
        try:
            adapter.forward_final(input_ids.to(adapter.device), use_cache=False)
        except _StopForward:
            pass
    return captured


@torch.inference_mode()
def extract(adapter: ModelAdapter, texts: Sequence[str], batch_size: int,
            readout: Readout = DEFAULT) -> dict[str, np.ndarray]:
    """Last-token and token-mean residuals of every prompt: {"last", "mean"} -> [N, L+1, d]."""
    tokens = tokenize(adapter, texts, readout)
    n, n_sites = len(texts), adapter.n_layers + 1
    last = np.zeros((n, n_sites, adapter.d_model), dtype=np.float32)  # float16 overflows on large-norm streams
    mean = np.zeros_like(last)
    for batch in tqdm(length_buckets([len(t) for t in tokens], batch_size), desc=f"activations {adapter.name}"):
        ids = torch.tensor([tokens[i] for i in batch])
        resid = capture_residual(adapter, ids, range(n_sites))
        for site in range(n_sites):
            hidden = resid[site]  # [batch, pos, d_model]
            last[batch, site] = hidden[:, -1].float().cpu().numpy()
            mean[batch, site] = hidden.float().mean(dim=1).cpu().numpy()
    return {"last": last, "mean": mean}


def run(settings: dict[str, Any], dataset: str | Path, out: str | Path, name: str,
        device: str = "auto", readout: Readout = DEFAULT) -> None:
    """Load the model and dataset, extract every layer's residual stream, save the pickle."""
    started = time.time()
    records = load_dataset(dataset, readout.labels)
    adapter = load_model(settings, name=name, device=device)
    texts = [r["text"] for r in records]
    resid, _ = run_with_backoff(lambda bs: extract(adapter, texts, bs, readout), settings.get("batch_size", 16),
                                what=f"activations {name}")
    text_tokens = token_counts(texts, adapter.tokenizer)
    match = length_match(text_tokens, [r["item_id"] for r in records])
    if match["beyond"]:
        log.warning("%s: the texts of %d item(s) differ by more than one token under this tokenizer (first %s); "
                    "%.0f%% of within-item pairs have equal token length", name, len(match["beyond"]),
                    dict(list(match["beyond"].items())[:3]), 100 * match["equal_pairs"])
    save_pickle({
        "schema": SCHEMA,
        "resid": resid,
        "ids": [r["id"] for r in records],
        "emotions": [r["emotion"] for r in records],
        "item_ids": [r["item_id"] for r in records],
        "text_tokens": text_tokens,  # [N] tokens of each text alone: the length the length-erasure control removes
        "frames": frame_groups(records),  # the unit of every split and permutation (the item where none)
        "registers": [r.get("register") for r in records] if all(r.get("register") for r in records) else None,
        "n_layers": adapter.n_layers,
        "d_model": adapter.d_model,
        "learned_positions": adapter.learned_positions,
        "suffix": readout.suffix,
        "readout": readout.as_dict(),
        "quantization": adapter.quantization,
        "provenance": provenance(settings, started, model=name),
    }, out)
    log.info("wrote %s: %d prompts x %d sites x %d", out, len(records), adapter.n_layers + 1, adapter.d_model)
