"""Activation patching: one engine, two small site setters, a fast prefix-cached path and a reference.

Method. A *pair* is an ordered (source, target) pair of prompts of the same item with different emotions. The
metric is the logit difference LD = logit[source label] - logit[target label] at the run prompt's last position,
read from the label tokens only (final norm, then the few unembedding rows); which prompt is run and which donates
is the pairs' direction (:mod:`emolens.engine.pairs`). The normalised effect is (LD_patched - LD_run) /
(LD_donor - LD_run): 0 = the run prompt unpatched, 1 = the donor clean.

Site grammar, written down once. A :class:`Site` is (kind, layer, head, offsets): ``kind="resid"``: residual index
``layer`` in 0..L (the stream entering block l; L = the last block's output before the final norm);
``kind="head"``: head ``head`` of attention layer ``layer``, i.e. its d_head slice of the attention output
projection's input; ``kind="attn_out"``/``"mlp_out"``: what block ``layer``'s attention (a hybrid's mixer) or MLP
adds to the residual stream (TransformerLens's ``hook_attn_out``, ``hook_mlp_out``). ``offsets`` are positions
counted from the end of the prompt (-1 = last token), so a donor of another length lines up at its end. A
*variant* is a tuple of sites patched together in one forward.

The engine. :func:`patch_reference` is the test oracle: for each variant, a full forward of the whole run prompt
with the patch, full-vocabulary logits, batched over prompts (as TransformerLens's patching utilities do).
:func:`patch_fast` uses causality: a patch at position p changes nothing before p, so the run prompt's prefix
tokens[:p] is run once with the KV cache, the cache is copied along the batch, the variants go in the batch
dimension, and only tokens[p:] are run, with label logits at the last position. For last-position patching that
is one token per variant, through the blocks from the first patched one on. Both paths build their hooks from the
same setters (:func:`set_resid` for every [batch, pos, d_model] site, :func:`set_head`); the empty variant ``()``
is the unpatched run, so one engine call also yields the clean LD of the run prompt.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from emolens.engine.inputs import length_buckets
from emolens.engine.pairs import Pairs
from emolens.engine.shortcuts import expand_cache, skipping_blocks
from emolens.model.adapter import ModelAdapter
from emolens.stopwatch import charged

log = logging.getLogger(__name__)

Kind = Literal["resid", "head", "attn_out", "mlp_out"]
SUBLAYERS: tuple[Kind, ...] = ("attn_out", "mlp_out")  # the two writes into the residual stream per block
Key = tuple[str, int]  # (kind, layer): one hook point


# --- sites -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """One patch site: residual index, (layer, head) or a block's sublayer write, at positions from the end."""

    kind: Kind
    layer: int
    head: int | None = None
    offsets: tuple[int, ...] = (-1,)


Variant = tuple[Site, ...]


def resid_site(layer: int, offsets: Sequence[int] = (-1,)) -> Site:
    """Residual index ``layer`` (0..L) at ``offsets`` from the end."""
    return Site("resid", layer, None, tuple(offsets))


def head_site(layer: int, head: int, offsets: Sequence[int] = (-1,)) -> Site:
    """Head ``head`` of attention layer ``layer`` at ``offsets`` from the end."""
    return Site("head", layer, head, tuple(offsets))


def sublayer_site(kind: Kind, layer: int, offsets: Sequence[int] = (-1,)) -> Site:
    """Block ``layer``'s attention (``kind="attn_out"``) or MLP (``"mlp_out"``) write at ``offsets`` from the end."""
    return Site(kind, layer, None, tuple(offsets))


@dataclass
class Donor:
    """Donor activations for a batch of pairs, at positions counted from the end of the donor prompt."""

    offsets: tuple[int, ...]
    acts: dict[Key, torch.Tensor]  # (kind, layer) -> [batch, len(offsets), width]


# --- site setters: each builds one hook function --------------------------------------------------
def set_resid(rows: torch.Tensor, pos: torch.Tensor, values: torch.Tensor) -> Callable:
    """Hook that writes ``values`` [n, d_model] into the residual stream (or a sublayer write) at (rows[i], pos[i])."""
    def hook(x: torch.Tensor) -> torch.Tensor:  # x [batch, pos, d_model]
        x = x.clone()
        x[rows, pos] = values.to(x.dtype)
        return x
    return hook


def set_head(rows: torch.Tensor, pos: torch.Tensor, heads: torch.Tensor, values: torch.Tensor,
             n_heads: int) -> Callable:
    """Hook that writes ``values`` [n, d_head] into head heads[i]'s slice of the o_proj input."""
    def hook(x: torch.Tensor) -> torch.Tensor:  # x [batch, pos, n_heads * d_head]
        x = x.clone(memory_format=torch.contiguous_format)
        x.view(*x.shape[:2], n_heads, -1)[rows, pos, heads] = values.to(x.dtype)  # [batch, pos, head, d_head]
        return x
    return hook


def _site_table(variants: Sequence[Variant], donor_offsets: tuple[int, ...]
                ) -> list[dict[Key, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per variant and hook point: (offsets from the end, index into donor offsets, head or -1)."""
    table = []
    for variant in variants:
        entries: dict[Key, list[tuple[int, int, int]]] = defaultdict(list)
        for site in variant:
            for off in site.offsets:
                if off not in donor_offsets:
                    raise ValueError(f"site {site} patches offset {off}; donor has only {donor_offsets}")
                entries[(site.kind, site.layer)].append(
                    (off, donor_offsets.index(off), -1 if site.head is None else site.head))
        table.append({k: tuple(np.array(c) for c in zip(*v, strict=True)) for k, v in entries.items()})
    return table


def _hooks(adapter: ModelAdapter, table: list, row_variant: np.ndarray, row_prompt: np.ndarray,
           donor: Donor, start: int, length: int) -> dict[str, dict[int, Callable]]:
    """Hooks for a batch whose row r runs variant row_variant[r] on prompt row_prompt[r].

    The forward covers absolute positions start..length-1 of the run prompt, so the patch at offset
    o lands at batch position length + o - start. Each hook point patches only its own rows.
    """
    parts: dict[Key, list[list[np.ndarray]]] = defaultdict(lambda: [[], [], [], [], []])
    for v in np.unique(row_variant):
        rows_v = np.flatnonzero(row_variant == v)
        for key, (offs, off_idx, heads) in table[v].items():
            m = len(offs)
            p = parts[key]
            p[0].append(np.repeat(rows_v, m))
            p[1].append(np.tile(length + offs - start, len(rows_v)))
            p[2].append(np.repeat(row_prompt[rows_v], m))
            p[3].append(np.tile(off_idx, len(rows_v)))
            p[4].append(np.tile(heads, len(rows_v)))
    hooks: dict[str, dict[int, Callable]] = {"resid": {}, "head_inputs": {}, "attn_out": {}, "mlp_out": {}}
    device = adapter.device
    for (kind, layer), p in parts.items():
        rows, pos, prompt, off, heads = (torch.from_numpy(np.concatenate(a)).to(device) for a in p)
        acts = donor.acts[(kind, layer)]  # [batch, n_offsets, width]
        if kind == "head":
            per_head = acts.unflatten(-1, (adapter.n_heads, adapter.d_head))  # [batch, n_off, head, d_head]
            hooks["head_inputs"][layer] = set_head(rows, pos, heads, per_head[prompt, off, heads], adapter.n_heads)
        else:  # the residual stream or a sublayer's write: [batch, pos, d_model]
            hooks[kind][layer] = set_resid(rows, pos, acts[prompt, off])
    return hooks


def logit_difference(logits: torch.Tensor, ld_index: torch.Tensor) -> torch.Tensor:
    """Logit difference per row from label logits [rows, n_labels] and (source, target) [rows, 2]."""
    return logits.gather(1, ld_index[:, :1]).squeeze(1) - logits.gather(1, ld_index[:, 1:]).squeeze(1)


# --- the two implementations -----------------------------------------------------------------------
@torch.inference_mode()
def patch_reference(adapter: ModelAdapter, run_ids: torch.Tensor, donor: Donor, variants: Sequence[Variant],
                    token_ids: Sequence[int], ld_index: torch.Tensor, batch_size: int = 32,
                    logits_to_keep: int = 0) -> torch.Tensor:
    """Patched LD [batch, n_variants] by full recompute: one whole-prompt forward per variant.

    ``run_ids`` [batch, pos] are run prompts of one length; ``ld_index`` [batch, 2] holds each
    row's (source, target) label as an index into ``token_ids``. Full-vocabulary logits at every
    position (``logits_to_keep=0``, as TransformerLens computes them) or at the last ``logits_to_keep``.
    """
    n, length = run_ids.shape
    table = _site_table(variants, donor.offsets)
    out = torch.empty(n, len(variants))
    device = adapter.device
    for v in range(len(variants)):
        for s in range(0, n, batch_size):
            prompts = np.arange(s, min(n, s + batch_size))
            hooks = _hooks(adapter, table, np.full(len(prompts), v), prompts, donor, 0, length)
            with adapter.hooks(**hooks), charged("forward"):
                logits = adapter.model(input_ids=run_ids[prompts].to(device),
                                       logits_to_keep=logits_to_keep).logits  # [batch, pos or kept, vocab]
            labels = logits[:, -1, list(token_ids)].float()  # [batch, n_labels]
            out[prompts, v] = logit_difference(labels, ld_index[prompts].to(device)).cpu()
    return out


def first_block(variant: Variant, n_layers: int) -> int:
    """The first block whose output a variant changes (a residual index l is block l's input; the last, L, is
    block L - 1's output): the blocks before it run as in the clean prompt. The clean run (``()``): the last."""
    return min([s.layer for s in variant] + [n_layers - 1])


def block_runs(firsts: dict[int, int], n: int, step: int) -> list[tuple[int, list[int]]]:
    """Variants (``firsts``: variant -> its first block) in runs from one block, in block order: the next block's
    variants join a run while it holds fewer than half of ``step`` rows (``n`` a variant), so a run starting
    later costs a forward of its own only when it fills half a chunk (``step`` 1: every block a run of its own)."""
    runs: list[tuple[int, list[int]]] = []
    for block in sorted(set(firsts.values())):
        vs = [v for v, b in firsts.items() if b == block]
        if runs and 2 * len(runs[-1][1]) * n < step:
            runs[-1][1].extend(vs)
        else:
            runs.append((block, vs))
    return runs


@torch.inference_mode()
def patch_fast(adapter: ModelAdapter, run_ids: torch.Tensor, donor: Donor, variants: Sequence[Variant],
               token_ids: Sequence[int], ld_index: torch.Tensor, batch_size: int = 32,
               every_block_apart: bool = False) -> torch.Tensor:
    """Patched LD [batch, n_variants], prefix-cached; same contract as :func:`patch_reference`.

    Variants are grouped by their earliest patched position p (the empty variant ``()``, the unpatched run, joins
    the latest group). Groups go in order of p, and one KV cache of the distinct run prompts grows from one group's
    prefix tokens[:p] to the next, so every prefix token is run once per distinct prompt. Within a group, causality
    holds in depth too: a variant changes nothing before its first patched block b (:func:`first_block`), so one
    clean pass of the suffix tokens[p:] gives each distinct prompt's residual stream entering every such b, and the
    variants of each b run from there (:func:`skipping_blocks`: the blocks below b return their input; the heads
    sweep's average variant runs half the blocks). Consecutive blocks share a run until it fills half a chunk
    (:func:`block_runs`), so a small batch runs as few forwards as without the shortcut; ``every_block_apart`` runs
    each block's variants apart, as the equivalence check does to test every start. A model whose blocks hand each
    other more than the residual stream (GLM-DSA's top-k indices) runs every block. Rows (variant, prompt) are cut
    into chunks of as many tokens as ``batch_size`` whole prompts (batch_size * T / (T - p) rows); each chunk gets
    its own copy of the cache rows it needs, in buffers reused from chunk to chunk (:func:`expand_cache`; the prefix
    cache itself is never handed to the forward), and only tokens[p:] are run, with the label logits read at the
    last position. The cache goes in as ``cache=`` (transformers 5 renamed ``past_key_values``). Position ids of the
    suffix come from the cache length (HF derives them), so learned absolute positions (GPT-2, GPT-Neo) are right as
    well as rotary ones; sliding-window layers (Gemma-3, GPT-Neo local) keep the last window - 1 keys, which is all
    a suffix token can see. A patch at p = 0 leaves no prefix: the whole prompt is run.
    """
    n, length = run_ids.shape
    device = adapter.device
    run_ids = run_ids.to(device)
    token_ids = list(token_ids)
    table = _site_table(variants, donor.offsets)
    groups: dict[int, list[int]] = defaultdict(list)
    for v, variant in enumerate(variants):
        if variant:
            groups[length + min(o for s in variant for o in s.offsets)].append(v)
    clean = [v for v, variant in enumerate(variants) if not variant]  # unpatched: ride along the cheapest
    if clean:
        groups[max(groups, default=length - 1)].extend(clean)
    out = torch.empty(n, len(variants))
    prompts, which = torch.unique(run_ids, dim=0, return_inverse=True)  # each distinct run prompt once
    cache, cached, buffers = None, 0, {}
    stream_only = True  # until a clean pass shows a block that hands the next one more than the residual stream
    for start in sorted(groups):
        if not 0 <= start < length:
            raise ValueError(f"patch position {start} outside a prompt of {length} tokens")
        if start > cached:  # grow the prefix cache to tokens[:start]; the variants only ever get copies
            cache = adapter.forward_final(prompts[:, cached:start], cache=cache, use_cache=True).cache
            cached = start
        step = batch_size * length // (length - start)  # rows of length - start tokens: batch_size prompts' worth
        runs = block_runs({v: first_block(variants[v], adapter.n_layers) for v in groups[start]}, n,
                          1 if every_block_apart else step)
        entering: dict[int, torch.Tensor] = {}  # block -> the clean stream entering it [U, length - start, d]
        if stream_only and runs[-1][0] > 0:
            entering, stream_only = _clean_suffix(adapter, prompts, cache, start, {b for b, _ in runs}, buffers)
        if not stream_only:  # every block runs: no clean pass for the later groups either
            runs = [(0, [v for _, vs in runs for v in vs])]
        for block, vs in runs:
            row_variant = np.repeat(np.array(vs), n)  # rows: variant-major, then prompt
            row_prompt = np.tile(np.arange(n), len(vs))
            for s in range(0, len(row_variant), step):
                rv, rp = row_variant[s:s + step], row_prompt[s:s + step]
                index = torch.from_numpy(rp).to(device)
                kwargs = {"cache": expand_cache(cache, which[index], length - start, buffers, block)} if start else {}
                hooks = _hooks(adapter, table, rv, rp, donor, start, length)
                skipping = skipping_blocks(adapter, block, entering[block][which[index]]) if block else nullcontext()
                with adapter.hooks(**hooks), skipping:
                    hidden = adapter.forward_final(run_ids[index, start:], use_cache=start > 0,
                                                   **kwargs).last_hidden_state  # [rows, length - start, d_model]
                labels = adapter.label_logits(hidden[:, -1], token_ids)  # [rows, n_labels]
                out[rp, rv] = logit_difference(labels, ld_index.to(device)[index]).cpu()
    return out


def _clean_suffix(adapter: ModelAdapter, prompts: torch.Tensor, cache: Any, start: int, blocks: set[int],
                  buffers: dict[Any, torch.Tensor]) -> tuple[dict[int, torch.Tensor], bool]:
    """The clean residual stream entering each of ``blocks`` at the suffix tokens[start:] of every distinct prompt
    ({block: [U, T - start, d]}), from one forward on a copy of the prefix cache; and whether a block passes on
    the residual stream alone (a block that also hands the next one a state, such as GLM-DSA's top-k indices,
    cannot be skipped)."""
    captured: dict[int, torch.Tensor] = {}
    outputs: list[Any] = []
    rows = torch.arange(len(prompts), device=prompts.device)
    kwargs = {"cache": expand_cache(cache, rows, prompts.shape[1] - start, buffers)} if start else {}
    handle = adapter.layers[0].register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        with adapter.hooks(resid={b: keep_input(captured, b) for b in blocks}):
            adapter.forward_final(prompts[:, start:], use_cache=start > 0, **kwargs)
    finally:
        handle.remove()
    return captured, isinstance(outputs[0], torch.Tensor)


ENGINES = {"fast": patch_fast, "reference": patch_reference}


# --- clean runs and donor activations --------------------------------------------------------------
def keep_input(store: dict, key: Any, pos: torch.Tensor | None = None) -> Callable:
    """Hook that stores its input [batch, pos, width] (only positions ``pos`` if given) under ``key``."""
    def fn(x: torch.Tensor) -> None:
        store[key] = x if pos is None else x[:, pos]
    return fn


@torch.inference_mode()
def collect(adapter: ModelAdapter, tokens: Sequence[Sequence[int]], token_ids: Sequence[int], *,
            offsets: Sequence[int] = (-1,), resid: Sequence[int] = (), heads: Sequence[int] = (),
            sublayers: Sequence[Key] = (), batch_size: int = 32) -> tuple[torch.Tensor, dict[Key, torch.Tensor]]:
    """Clean label logits [N, n_labels] and activations at ``offsets`` from each prompt's end.

    ``resid``: residual indices to keep -> [N, n_offsets, d_model]; ``heads``: layers whose
    o_proj input to keep -> [N, n_offsets, n_heads * d_head]; ``sublayers``: (kind, block) writes to keep ->
    [N, n_offsets, d_model]. One forward per length bucket.
    """
    offsets = tuple(offsets)
    if tokens and offsets and min(offsets) < -min(len(t) for t in tokens):
        raise ValueError(f"offset {min(offsets)} reaches before the start of a {min(map(len, tokens))}-token prompt")
    device = adapter.device
    logits = torch.empty(len(tokens), len(token_ids))
    acts: dict[Key, torch.Tensor] = {}
    for batch in length_buckets([len(t) for t in tokens], batch_size):
        ids = torch.tensor([list(tokens[i]) for i in batch], device=device)
        pos = torch.tensor(offsets, dtype=torch.long, device=device) + ids.shape[1]
        captured: dict[Key, torch.Tensor] = {}
        writes = {kind: {layer: keep_input(captured, (kind, layer), pos) for k, layer in sublayers if k == kind}
                  for kind in SUBLAYERS}
        with adapter.hooks(resid={layer: keep_input(captured, ("resid", layer), pos) for layer in resid},
                           head_inputs={layer: keep_input(captured, ("head", layer), pos) for layer in heads},
                           **writes):
            hidden = adapter.forward_final(ids, use_cache=False).last_hidden_state
        logits[batch] = adapter.label_logits(hidden[:, -1], list(token_ids)).float().cpu()
        for key, x in captured.items():
            if key not in acts:
                acts[key] = x.new_empty(len(tokens), *x.shape[1:])
            acts[key][torch.tensor(batch, device=device)] = x
    return logits, acts


def clean_ld(adapter: ModelAdapter, pairs: Pairs, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Unpatched LD of each pair's run prompt and donor prompt: ([P], [P])."""
    prompts = sorted({tuple(t) for t in pairs.run + pairs.donor})
    where = {t: i for i, t in enumerate(prompts)}
    logits, _ = collect(adapter, prompts, pairs.token_ids, offsets=(), batch_size=batch_size)
    index = torch.from_numpy(pairs.ld_index)

    def ld(tokens: list[list[int]]) -> np.ndarray:
        return logit_difference(logits[[where[tuple(t)] for t in tokens]], index).double().numpy()
    return ld(pairs.run), ld(pairs.donor)


def normalised(ld_patched: np.ndarray, ld_run: np.ndarray, ld_donor: np.ndarray) -> np.ndarray:
    """(LD_patched - LD_run) / (LD_donor - LD_run), broadcast over trailing axes of ``ld_patched``."""
    shape = (-1,) + (1,) * (np.ndim(ld_patched) - 1)
    run, denom = np.reshape(ld_run, shape), np.reshape(ld_donor - ld_run, shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom != 0, (ld_patched - run) / denom, np.nan)


def patch_pairs(adapter: ModelAdapter, pairs: Pairs, variants: Sequence[Variant], *,
                subset: Sequence[int] | None = None, method: str = "fast", batch_size: int = 32,
                desc: str = "patching") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patched LD [S, n_variants] for the S pairs in ``subset`` (default all), and their clean LDs.

    Each distinct donor prompt runs once (its clean label logits and the activations the variants
    patch, at every offset they use). Pairs are then grouped by run-prompt length (pairs sharing a
    run prompt side by side) into batches of at most ``batch_size`` pairs, and the engine
    (``method``: "fast" or "reference") runs every variant plus the unpatched run prompt. A hybrid model's
    recurrent state cannot be forked along the batch, so it always runs the reference.
    Returns (ld_patched [S, n_variants], ld_run [S], ld_donor [S]).
    """
    subset = np.arange(len(pairs)) if subset is None else np.asarray(subset, dtype=int)
    offsets = tuple(sorted({o for v in variants for s in v for o in s.offsets}))
    resid = sorted({s.layer for v in variants for s in v if s.kind == "resid"})
    heads = sorted({s.layer for v in variants for s in v if s.kind == "head"})
    sublayers = sorted({(s.kind, s.layer) for v in variants for s in v if s.kind in SUBLAYERS})
    engine = ENGINES[method if adapter.prefix_cache else "reference"]
    token_ids = pairs.token_ids
    donors = sorted({tuple(pairs.donor[i]) for i in subset})
    which = {t: u for u, t in enumerate(donors)}
    donor_logits, acts = collect(adapter, donors, token_ids, offsets=offsets, resid=resid, heads=heads,
                                 sublayers=sublayers, batch_size=batch_size)  # [U, n_labels], {key: [U, n_off, width]}
    u_of = np.array([which[tuple(pairs.donor[i])] for i in subset])
    index = torch.from_numpy(pairs.ld_index[subset])
    ld_donor = logit_difference(donor_logits[u_of], index).double().numpy()
    out = np.full((len(subset), len(variants) + 1), np.nan)  # the variants, then the run prompt unpatched
    order = sorted(range(len(subset)), key=lambda j: (len(pairs.run[subset[j]]), pairs.run[subset[j]]))
    batches = length_buckets([len(pairs.run[subset[j]]) for j in order], batch_size)
    for batch in tqdm(batches, desc=desc, leave=False):
        rows = np.array(order)[batch]  # positions in subset
        run_ids = torch.tensor([pairs.run[i] for i in subset[rows]])  # [batch, pos]
        u = torch.from_numpy(u_of[rows]).to(adapter.device)
        donor = Donor(offsets, {key: a[u] for key, a in acts.items()})
        ld = engine(adapter, run_ids, donor, [*variants, ()], token_ids, index[rows], batch_size=batch_size)
        out[rows] = ld.double().numpy()
    return out[:, :-1], out[:, -1], ld_donor
