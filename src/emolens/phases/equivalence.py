"""The adapter's identities on one model: what makes a new architecture safe to sweep.

Three checks on a run prompt and a donor prompt, each the largest absolute difference to an
independent reference: residual capture (every index 0..L-1 against Hugging Face ``hidden_states``,
and the final-normed output of the body against the last of them), the label readout (final norm and
the label rows of the unembedding against the model's own logits), and patching (the fast
prefix-cached engine against the full-recompute oracle, every residual index and every head at the
last position, and the last two positions of one residual index; apart, every block's attention and MLP write,
``sublayer_patching``). Beside them, whether the two writes the adapter finds add up to each block's output
(``sublayer_sum``: a block that scales or gates its writes has no such decomposition; reported, not required,
except by the attention-vs-MLP phase). The model-type tests run them on a
tiny model of every type; the ``equivalence`` rule runs them on each model of a profile, with its real
weights, before any long job (:func:`run`), after refusing any prompt longer than the model's context.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolens.config import ModelLoadError
from emolens.data.dataset import DatasetError, load_dataset
from emolens.data.readout import DEFAULT, Readout
from emolens.engine.inputs import tokenize
from emolens.engine.patching import (
    SUBLAYERS,
    Donor,
    collect,
    head_site,
    patch_fast,
    patch_reference,
    resid_site,
    sublayer_site,
)
from emolens.io import provenance, save_json
from emolens.model.adapter import ModelAdapter
from emolens.model.loading import load_model

log = logging.getLogger(__name__)

SCHEMA = "emolens.equivalence/2"  # /2: quantization and batch_noise
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2, "int8": 5e-2}  # largest |difference| allowed
NOISY = {"llm.int8"}  # builds whose output follows the batch: their fast engine is judged against their own noise
BATCH_MATES = 8  # prompts of the run prompt's length that share its batch in the noise check
SPLITS = (1, 2, 3)  # suffix lengths run through the KV cache after the prefix, as the fast engine runs them


@torch.inference_mode()
def residual_difference(adapter: ModelAdapter, ids: torch.Tensor) -> float:
    """Largest |capture - hidden_states| over residual indices 0..L-1 and the body's final-normed output."""
    captured: dict[int, torch.Tensor] = {}
    keep = {i: (lambda x, i=i: captured.__setitem__(i, x.detach().clone())) for i in range(adapter.n_layers)}
    with adapter.hooks(resid=keep):
        states = adapter.model(input_ids=ids, output_hidden_states=True).hidden_states
    final = adapter.forward_final(ids).last_hidden_state
    diffs = [(captured[i] - states[i]).abs().max() for i in range(adapter.n_layers)]
    return float(max(*diffs, (final - states[-1]).abs().max()))


@torch.inference_mode()
def readout_difference(adapter: ModelAdapter, ids: torch.Tensor, token_ids: Sequence[int]) -> float:
    """Largest |label logits from the final-normed state - the model's logits| at the last position."""
    logits = adapter.model(input_ids=ids).logits[:, -1, list(token_ids)].float()
    labels = adapter.label_logits(adapter.forward_final(ids).last_hidden_state[:, -1], token_ids).float()
    return float((labels - logits).abs().max())


@torch.inference_mode()
def sublayer_sum_difference(adapter: ModelAdapter, ids: torch.Tensor) -> float | None:
    """Largest |block output - block input - attention write - MLP write| over the blocks, relative to the largest
    |block output| (float32 round-off grows with the stream's scale, in the hundreds in real models); a write the
    adapter does not find in a block counts as zero, as in Nemotron-H's one-sublayer blocks; None where it finds
    none."""
    captured: dict[tuple[str, int], torch.Tensor] = {}

    def keep(key: tuple[str, int]) -> Callable[[torch.Tensor], None]:
        return lambda x: captured.__setitem__(key, x.detach().clone())
    writes = {kind: {i: keep((kind, i)) for i, m in enumerate(adapter.sublayers[kind]) if m is not None}
              for kind in SUBLAYERS}
    if not any(writes.values()):
        return None
    with adapter.hooks(resid={i: keep(("resid", i)) for i in range(adapter.n_layers + 1)}, **writes):
        adapter.forward_final(ids)
    zero, worst = torch.zeros(()), 0.0
    for i in range(adapter.n_layers):
        step = captured["resid", i + 1] - captured["resid", i]  # [batch, pos, d_model]
        written = captured.get(("attn_out", i), zero) + captured.get(("mlp_out", i), zero)
        scale = max(float(captured["resid", i + 1].abs().max()), 1.0)
        worst = max(worst, float((step - written).abs().max()) / scale if written.shape in (step.shape, ()) else np.inf)
    return worst


def _fast_vs_oracle(adapter: ModelAdapter, run: Sequence[int], donor: Sequence[int], token_ids: Sequence[int],
                    variants: list) -> float:
    """Largest |fast - full recompute| of the patched LD of ``variants`` (and the clean run), every block's variants
    started at that block."""
    sites = {s for v in variants for s in v}
    _, acts = collect(adapter, [list(donor)], token_ids, offsets=(-2, -1),
                      resid=sorted({s.layer for s in sites if s.kind == "resid"}),
                      heads=sorted({s.layer for s in sites if s.kind == "head"}),
                      sublayers=sorted({(s.kind, s.layer) for s in sites if s.kind in SUBLAYERS}))
    donor_acts, run_ids = Donor((-2, -1), acts), torch.tensor([list(run)])
    index = torch.tensor([[0, 1]])
    fast = patch_fast(adapter, run_ids, donor_acts, [*variants, ()], token_ids, index, every_block_apart=True)
    reference = patch_reference(adapter, run_ids, donor_acts, [*variants, ()], token_ids, index)
    return float((fast - reference).abs().max())


def patching_difference(adapter: ModelAdapter, run: Sequence[int], donor: Sequence[int],
                        token_ids: Sequence[int]) -> float | None:
    """Largest |fast - full recompute| of the patched logit difference over every residual index and head at
    the last position and one residual index at the last two positions, the fast path starting every block's
    variants at that block; None for a hybrid, which patches by full recompute only
    (:attr:`ModelAdapter.prefix_cache`)."""
    if not adapter.prefix_cache:
        return None
    variants = [(resid_site(layer),) for layer in range(adapter.n_layers + 1)]
    variants += [(head_site(layer, h),) for layer in adapter.head_layers for h in range(adapter.n_heads)]
    return _fast_vs_oracle(adapter, run, donor, token_ids, [*variants, (resid_site(adapter.n_layers // 2, (-2, -1)),)])


def sublayer_patching_difference(adapter: ModelAdapter, run: Sequence[int], donor: Sequence[int],
                                 token_ids: Sequence[int]) -> float | None:
    """Largest |fast - full recompute| over every block's attention and MLP write at the last position (and one at
    the last two); None for a hybrid (full recompute only) or a model where the adapter finds no write."""
    variants = [(sublayer_site(kind, layer),) for kind in SUBLAYERS for layer, m in enumerate(adapter.sublayers[kind])
                if m is not None]
    if not adapter.prefix_cache or not variants:
        return None
    return _fast_vs_oracle(adapter, run, donor, token_ids, [*variants, (replace(variants[0][0], offsets=(-2, -1)),)])


def differences(adapter: ModelAdapter, run: Sequence[int], donor: Sequence[int],
                token_ids: Sequence[int], patching: bool = True) -> dict[str, float | None]:
    """The three checks' largest differences on a run and a donor prompt (token ids); ``patching`` False leaves
    the costliest out (None)."""
    ids = torch.tensor([list(run)], device=adapter.device)
    return {"residual": residual_difference(adapter, ids),
            "readout": readout_difference(adapter, ids, token_ids),
            "patching": patching_difference(adapter, run, donor, token_ids) if patching else None,
            "sublayer_patching": sublayer_patching_difference(adapter, run, donor, token_ids) if patching else None}


@torch.inference_mode()
def batch_noise(adapter: ModelAdapter, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]
                ) -> dict[str, float | None]:
    """How far label logits move when only the grouping of the arithmetic changes: each prompt (all of one
    length) alone against inside one batch with the others (None for a single prompt), and against a cached
    prefix plus its last 1-3 tokens, as the fast engine runs it. Round-off for a batch-invariant build; for
    LLM.int8, the noise its full-recompute oracle carries too."""
    ids = torch.tensor([list(p) for p in prompts], device=adapter.device)  # [n, pos]

    def labels(hidden: torch.Tensor) -> torch.Tensor:  # [batch, pos, d] -> [batch, n_labels]
        return adapter.label_logits(hidden[:, -1], token_ids).float()

    alone = torch.cat([labels(adapter.forward_final(row[None]).last_hidden_state) for row in ids])
    batch = float((labels(adapter.forward_final(ids).last_hidden_state) - alone).abs().max()) if len(ids) > 1 \
        else None
    split = 0.0
    for i, s in itertools.product(range(len(ids)), SPLITS):
        cache = adapter.forward_final(ids[i:i + 1, :-s], use_cache=True).cache
        hidden = adapter.forward_final(ids[i:i + 1, -s:], cache=cache, use_cache=True).last_hidden_state
        split = max(split, float((labels(hidden) - alone[i]).abs().max()))
    return {"batch": batch, "split": split}


def tolerance(adapter: ModelAdapter, noise: dict[str, float | None] | None = None) -> float:
    """The largest difference accepted: float32 round-off, or the coarser steps of half precision and int8; for a
    build in :data:`NOISY`, twice its measured batch noise when that is larger: the fast engine and the oracle
    each stray from a prompt's lone run by up to the noise, so from each other by up to twice it."""
    limit = TOLERANCE[str(adapter.dtype).removeprefix("torch.") if adapter.quantization is None else "int8"]
    if adapter.quantization in NOISY and noise:
        limit = max(limit, 2 * max(v for v in noise.values() if v is not None))
    return limit


def context_limit(adapter: ModelAdapter) -> int | None:
    """The longest prompt the model's position scheme covers (``max_position_embeddings``, GPT-2's n_positions)."""
    return getattr(adapter.text_config, "max_position_embeddings", None)


def check_context(adapter: ModelAdapter, records: Sequence[dict[str, Any]], tokens: Sequence[Sequence[int]],
                  dataset: str | Path) -> None:
    """Refuse a prompt longer than the model's context, naming the dataset line, its token count and the limit."""
    limit = context_limit(adapter)
    long = [i for i, t in enumerate(tokens) if limit and len(t) > limit]
    if long:
        lines = dataset_lines(dataset)
        first = records[long[0]]
        raise DatasetError(f"{dataset}:{lines.get(first['id'], '?')}: prompt {first['id']!r} is {len(tokens[long[0]])} "
                           f"tokens (prefix + text + suffix), longer than models.{adapter.name}'s context of {limit} "
                           f"(max_position_embeddings); {len(long)} prompt(s) in all are too long")


def dataset_lines(path: str | Path) -> dict[str, int]:
    """Each record id's line number in a JSONL file."""
    with open(path, encoding="utf-8-sig") as f:
        return {json.loads(line)["id"]: n for n, line in enumerate(f, 1) if line.strip()}


def identities(adapter: ModelAdapter, records: Sequence[dict[str, Any]], tokens: Sequence[Sequence[int]],
               token_ids: Sequence[int]) -> dict[str, Any]:
    """The three checks on the first record and another emotion of its item (``tokens``: the records' prompts),
    the batch noise over the first prompt and up to :data:`BATCH_MATES` prompts of its length, the tolerance
    that gives this build, and the checks over it (``failed``, empty when the identities hold)."""
    donor = next(i for i, r in enumerate(records)
                 if r["item_id"] == records[0]["item_id"] and r["emotion"] != records[0]["emotion"])
    found = differences(adapter, tokens[0], tokens[donor], token_ids)
    mates = [t for t in tokens[1:] if len(t) == len(tokens[0]) and t != tokens[0]][:BATCH_MATES]
    noise = batch_noise(adapter, [tokens[0], *mates], token_ids)
    limit = tolerance(adapter, noise)
    additive = sublayer_sum_difference(adapter, torch.tensor([list(tokens[0])], device=adapter.device))
    return {"prompts": [records[0]["id"], records[donor]["id"]], "max_difference": found, "batch_noise": noise,
            "tolerance": limit, "sublayer_sum": additive,
            "failed": {k: v for k, v in found.items() if v is not None and not (np.isfinite(v) and v <= limit)}}


def run(settings: dict[str, Any], dataset: str | Path, out_json: str | Path, name: str, device: str = "auto",
        readout: Readout = DEFAULT) -> dict[str, Any]:
    """Before a model's long jobs: every prompt within its context, then the three checks on two prompts of one
    item with its own weights; write the numbers, or raise naming them when one is too large."""
    started = time.time()
    records = load_dataset(dataset, readout.labels)  # a bad dataset fails before the model loads
    adapter = load_model(settings, name=name, device=device)
    texts = [r["text"] for r in records]
    variants = (False, True) if settings.get("chat_template") else (False,)  # plain, and chat-template prompts
    tokens = {chat: tokenize(adapter, texts, readout, chat) for chat in variants}
    for prompts in tokens.values():
        check_context(adapter, records, prompts, dataset)
    found = identities(adapter, records, tokens[False], list(readout.label_token_ids(adapter.tokenizer).values()))
    limit, noise = found["tolerance"], found["batch_noise"]
    if found["failed"]:
        raise ModelLoadError(f"models.{name}: the adapter's identities fail on its own weights ("
                             + ", ".join(f"{k} differs by {v:.3g} > {limit:.3g}" for k, v in found["failed"].items())
                             + f"; batch noise {noise}; sites {adapter.sites}); "
                             + (f"quantization {adapter.quantization!r} is not batch-invariant: set "
                                f"models.{name}.quantization to int8" if adapter.quantization in NOISY
                                else f"name the sites with models.{name}.layers/attn_out/body"))
    result = {"schema": SCHEMA, "model": name, "sites": adapter.sites, "head_layers": adapter.head_layers,
              "n_layers": adapter.n_layers, "prefix_cache": adapter.prefix_cache, "context": context_limit(adapter),
              "longest_prompt": max(len(t) for t in tokens[False]),
              "prompts": found["prompts"], "max_difference": found["max_difference"], "tolerance": limit,
              "quantization": adapter.quantization, "batch_noise": noise, "sublayer_sum": found["sublayer_sum"],
              "sublayer_sites": adapter.sublayer_paths,
              "provenance": provenance({"settings": settings, "readout": readout.as_dict()}, started,
                                       dataset=str(dataset), model_id=name)}
    save_json(result, out_json)
    log.info("%s: equivalence holds on %s, largest differences %s", name, result["prompts"],
             result["max_difference"])
    return result
