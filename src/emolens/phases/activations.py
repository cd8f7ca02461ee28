"""Phase 2, activations: the residual stream at every layer, for every prompt.

Method. Each prompt is the dataset text inside the configured readout (prefix, text, suffix; see
:mod:`emolens.data.readout`). One clean forward pass per batch records the residual stream entering every
block (index l < L, equal to Hugging Face ``hidden_states[l]``) and the last block's output (index
L, before the final norm); the same forward's final-normed last position, times the label tokens'
unembedding rows, is the readout baseline's answer (:mod:`emolens.phases.behaviour`), so the workflow
runs each prompt through each model once for both files. Batches group prompts of equal token length,
so no padding enters any sum. We keep the last token's vector and the mean over the prompt's tokens,
stored in float32 at every width: float16 would overflow (inf) on residual streams of very large norm
such as Gemma-3's. The explicit prompts run once more with their emotion words masked
(:mod:`emolens.data.masking`), keeping only the last token: the probes' robustness test (``masked``).

Inputs: one model's settings, the dataset JSONL and the readout. Outputs: ``results/<p>/activations/<m>.pkl``
(:data:`SCHEMA`) and ``results/<p>/readout/<m>.json``.
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
from emolens.data.masking import PLACEHOLDER, masked_explicit
from emolens.data.readout import DEFAULT, Readout
from emolens.data.surface import length_match, token_counts
from emolens.engine.inputs import length_buckets, tokenize
from emolens.engine.oom import run_with_backoff
from emolens.engine.patching import keep_input
from emolens.io import provenance, save_pickle
from emolens.model.adapter import ModelAdapter
from emolens.model.loading import load_model
from emolens.phases.behaviour import check_readout, readout_result, save_readout
from emolens.stats.resampling import frame_groups

log = logging.getLogger(__name__)
SCHEMA = "emolens.activations/2"


@torch.inference_mode()
def extract(adapter: ModelAdapter, texts: Sequence[str], batch_size: int,
            readout: Readout = DEFAULT) -> dict[str, np.ndarray]:
    """Last-token and token-mean residuals of every prompt, {"last", "mean"} -> [N, L+1, d], and the readout's
    label logits at the last position, "labels" -> [N, n_emotions], all from one forward per batch."""
    tokens = tokenize(adapter, texts, readout)
    label_ids = list(readout.label_token_ids(adapter.tokenizer).values())
    n, n_sites = len(texts), adapter.n_layers + 1
    last = np.zeros((n, n_sites, adapter.d_model), dtype=np.float32)  # float16 overflows on large-norm streams
    mean = np.zeros_like(last)
    labels = np.zeros((n, len(label_ids)))
    for batch in tqdm(length_buckets([len(t) for t in tokens], batch_size), desc=f"activations {adapter.name}"):
        ids = torch.tensor([tokens[i] for i in batch], device=adapter.device)
        resid: dict[int, torch.Tensor] = {}
        with adapter.hooks(resid={site: keep_input(resid, site) for site in range(n_sites)}):
            hidden = adapter.forward_final(ids, use_cache=False).last_hidden_state
        labels[batch] = adapter.label_logits(hidden[:, -1], label_ids).double().cpu().numpy()
        for site in range(n_sites):
            x = resid[site]  # [batch, pos, d_model]
            last[batch, site] = x[:, -1].float().cpu().numpy()
            mean[batch, site] = x.float().mean(dim=1).cpu().numpy()
    return {"last": last, "mean": mean, "labels": labels}


def masked_forward(adapter: ModelAdapter, records: Sequence[dict[str, Any]], settings: dict[str, Any], name: str,
                   readout: Readout = DEFAULT) -> dict[str, Any] | None:
    """The explicit prompts again with their emotion words masked (:mod:`emolens.data.masking`): the last token at
    every index, "last" [N_explicit, L+1, d], and the label logits, for the probes' masked test; None where no
    record is explicit."""
    rows, texts = masked_explicit(records, readout.labels)
    if not rows:
        return None
    out, _ = run_with_backoff(lambda bs: extract(adapter, texts, bs, readout), settings.get("batch_size", 16),
                              what=f"masked activations {name}")
    return {"rows": np.asarray(rows), "last": out["last"], "labels": out["labels"], "placeholder": PLACEHOLDER,
            "changed": np.array([t != records[i]["text"] for i, t in zip(rows, texts, strict=True)])}


def run(settings: dict[str, Any], dataset: str | Path, out: str | Path, name: str,
        device: str = "auto", readout: Readout = DEFAULT, readout_out: str | Path | None = None) -> None:
    """Load the model and dataset, extract every layer's residual stream, save the pickle; with ``readout_out``,
    also the readout baseline (:mod:`emolens.phases.behaviour`) from the same forwards' label logits."""
    started = time.time()
    records = load_dataset(dataset, readout.labels)
    adapter = load_model(settings, name=name, device=device)
    check_readout(adapter, settings, name, readout)
    texts = [r["text"] for r in records]
    resid, _ = run_with_backoff(lambda bs: extract(adapter, texts, bs, readout), settings.get("batch_size", 16),
                                what=f"activations {name}")
    labels = resid.pop("labels")
    if readout_out is not None:
        save_readout(readout_result(adapter, settings, records, labels, name, readout, started), readout_out)
    masked = masked_forward(adapter, records, settings, name, readout)
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
        "masked": masked,
        "quantization": adapter.quantization,
        "provenance": provenance(settings, started, model=name),
    }, out)
    log.info("wrote %s: %d prompts x %d sites x %d", out, len(records), adapter.n_layers + 1, adapter.d_model)
