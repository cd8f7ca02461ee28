"""Steering and directional ablation: do the emotion vectors cause anything? And across models?

Method. The frames are split once, seeded and stratified by register (:func:`emolens.heads.frame_split`),
into a fit half and a held-out half. Everything that is estimated comes from the fit half's phase-2
activations (last token, every residual index): the emotion vectors (mean of one emotion minus the
mean of the others, :func:`emolens.vectors.emotion_vectors`), the typical residual norm at index l
(the median over fit-half prompts of the last token's ||resid_l||), the emotion subspace, probes and
cross-model maps. Everything that is measured runs on readout prompts (``readout.prompt(text)``) of
the held-out half, whole items, at most ``max_prompts`` of them (a seeded choice of items).

Steering. At residual index l (every index, or every ``layer_stride``-th and the last), the hook adds
alpha * unit(v_e,l) * norm_l at every position of the prompt, for alpha on a grid. Alpha 0 is the
clean run: the same hook adding a zero vector, which the tests show is bit-identical to the
unhooked model; it is the reference of every shift, shared by all indices. Readout, per emotion e'
of the four labels: the calibrated probability (softmax of the label logits minus the clean
calibration offsets of :mod:`emolens.behaviour`, each label's mean clean logit over the held-out
prompts, held fixed under steering) and the logit difference of e' against the mean of the other
three. Shifts (steered minus clean) are averaged within items, then over items; the 4 x 4
specificity matrix at each (index, alpha) holds the shift of readout e' (columns) under the vector
of emotion e (rows); its diagonal is the on-target shift. Nulls: ``n_random`` random unit directions
(seeded per index) at the same scale, summarised per readout e' by their mean and 95th percentile
over directions, and the other emotions' vectors (the off-diagonal). 95% CIs resample frames, then
items within frames (percentile bootstrap) for the on-target shift and for the null's mean and 95th
percentile. Cost: the KL divergence KL(clean || steered) of the full next-token distribution at the
last position (the one place full-vocabulary logits are computed, from the final hidden state of those rows only), on up
to ``kl_prompts`` neutral held-out prompts; also over the vocabulary without the four label tokens
(renormalised), which steering the readout is not meant to move. Directions, alphas and prompts share
the batch dimension: the hook adds a different vector to each row.

Directional ablation. At index l, x <- x - B^T B x at every position, B [3, d] the orthonormal basis
of the span of the fit half's four emotion class means, centred (the span of its emotion vectors),
against ``n_random_subspaces`` random 3-dimensional subspaces. Measured on the held-out prompts: the
calibrated readout accuracy (offsets = the run's own mean label logits, as behaviour.py calibrates)
and the accuracy of the phase-3 probe (standardised logistic regression) fitted on the fit half's
clean activations at each later index m >= l and tested on the held-out ablated activations there.

Transfer. For an ordered pair a -> b, b is steered at the index l_b where its own steering is
strongest at ``transfer_alpha`` (from b's steering file), a at the matched relative depth
l_a = round(l_b * L_a / L_b). A ridge map from a's residual space to b's
(:func:`emolens.alignment.fit_linear_map`) is fitted on the fit half's paired activations; a's
fit-half emotion vectors go through it, are scaled to b's typical norm, and steer b. The measure is
the fraction of b's own on-target logit-difference shift that a's mapped vector achieves (ratio of
sums over emotions; CI by resampling items), against random unit directions of a's space carried
through the same map, four at a time standing in for the four emotions and scored the same way.

Inputs: a model, the dataset, phase-2 activations (all models' for transfer). Outputs:
``results/<p>/steering/<m>.json`` (:data:`SCHEMA`), ``steering/transfer/into_<b>.json`` (every source
a into b, :data:`TRANSFER_SCHEMA`) and ``steering/transfer/summary.json`` (the model-pair matrix).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from emolens import EMOTIONS
from emolens.activations import length_buckets, tokenize
from emolens.dataset import frame_groups
from emolens.heads import frame_split
from emolens.io import load_pickle, provenance, save_json
from emolens.models import ModelAdapter
from emolens.readout import DEFAULT, Readout
from emolens.resampling import codes_of, two_stage_weights
from emolens.vectors import emotion_vectors, join_records, probe_model

log = logging.getLogger(__name__)
SCHEMA = "emolens.steering/1"
TRANSFER_SCHEMA = "emolens.steering_transfer/1"
SUMMARY_SCHEMA = "emolens.steering_transfer_summary/1"
ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
K = len(EMOTIONS)
VANISH = 1e-6  # a vector shorter than this times the typical norm is no direction (index 0 of rotary models)


# --- prompts, split and fit-half statistics ---------------------------------------------------------
@dataclass
class Prompts:
    """Held-out readout prompts, tokenised: what every steering run is measured on."""

    tokens: list[list[int]]
    truth: np.ndarray  # [P] emotion index in EMOTIONS order
    items: np.ndarray  # [P] item ids: the unit of every CI
    kl_row: np.ndarray  # [P] row in the clean full-vocabulary log-probs, -1 = not a KL prompt
    token_ids: list[int]  # label token ids, EMOTIONS order

    def __len__(self) -> int:
        return len(self.tokens)


def select_items(records: Sequence[dict[str, Any]], max_prompts: int | None, seed: int) -> list[dict[str, Any]]:
    """Whole items, a seeded random choice, until at most ``max_prompts`` prompts (at least one item)."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_item.setdefault(r["item_id"], []).append(r)
    if max_prompts is None or len(records) <= max_prompts:
        return list(records)
    keep: set[str] = set()
    count = 0
    for item in np.random.default_rng([seed, 13]).permutation(sorted(by_item)):
        if keep and count + len(by_item[item]) > max_prompts:
            break
        keep.add(item)
        count += len(by_item[item])
    return [r for r in records if r["item_id"] in keep]


def prepare_prompts(adapter: ModelAdapter, records: Sequence[dict[str, Any]], readout: Readout = DEFAULT,
                    kl_prompts: int = 0) -> Prompts:
    """Tokenised readout prompts; the first ``kl_prompts`` neutral ones are the KL prompts."""
    label_ids = readout.label_token_ids(adapter.tokenizer)
    neutral = [i for i, r in enumerate(records) if r["emotion"] == "neutral"][:kl_prompts]
    kl_row = np.full(len(records), -1)
    kl_row[neutral] = np.arange(len(neutral))
    return Prompts(tokens=tokenize(adapter, [r["text"] for r in records], readout),
                   truth=np.array([EMOTIONS.index(r["emotion"]) for r in records]),
                   items=np.array([str(r["item_id"]) for r in records]), kl_row=kl_row,
                   token_ids=[label_ids[e] for e in EMOTIONS])


def typical_norms(x: np.ndarray) -> np.ndarray:
    """[N, S, d] fit-half last-token activations -> [S] median residual norm per index."""
    return np.median(np.linalg.norm(x, axis=-1), axis=0)


def unit(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v, dtype=np.float64), where=n > 0)


def random_directions(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[n, d] random unit directions (isotropic)."""
    return unit(rng.standard_normal((n, d)))


def emotion_basis(x: np.ndarray, emotions: Sequence[str], tol: float = 1e-8) -> np.ndarray:
    """[k <= 3, d] orthonormal basis of the span of the four class means of [N, d], centred."""
    labels = np.asarray(emotions)
    means = np.stack([x[labels == e].mean(0) for e in EMOTIONS])  # [4, d]
    _, s, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
    return vt[: int((s > tol * max(s.max(initial=0.0), 1e-30)).sum())][: K - 1]


def random_basis(k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[k, d] orthonormal basis of a random k-dimensional subspace."""
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q.T


def steer_layers(n_layers: int, stride: int) -> list[int]:
    """Residual indices steered: every ``stride``-th from 0, and always the last (L)."""
    return sorted(set(range(0, n_layers + 1, stride)) | {n_layers})


# --- the engine: one hook that edits the residual stream per batch row ------------------------------
def edit_hook(add: torch.Tensor | None, basis: torch.Tensor | None,
              keep: Callable[[torch.Tensor], None] | None = None) -> Callable:
    """Hook that projects out ``basis`` [rows, k, d] (orthonormal) and adds ``add`` [rows, d] at every position.

    A stream of batch 1 is first expanded to the rows (one prompt under several conditions). The edit is
    computed in float32 and cast back; ``keep`` gets the edited stream [rows, pos, d].
    """
    rows = len(add if add is not None else basis)

    def hook(x: torch.Tensor) -> torch.Tensor:  # [rows, pos, d], or [1, pos, d]: one prompt shared by the rows
        y = x.float().expand(rows, *x.shape[1:])
        if basis is not None:
            y = y - torch.einsum("rpk,rkd->rpd", torch.einsum("rpd,rkd->rpk", y, basis), basis)
        if add is not None:
            y = y + add[:, None, :]
        y = y.to(x.dtype)
        if keep is not None:
            keep(y)
        return y
    return hook


def _keep_last(store: dict[int, torch.Tensor], key: int) -> Callable:
    def fn(x: torch.Tensor) -> None:  # [rows, pos, d]
        store[key] = x[:, -1]
    return fn


def full_logprobs(adapter: ModelAdapter, final_hidden: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary log-probabilities [rows, vocab] from final-normed hidden states [rows, d]."""
    head = adapter.model.get_output_embeddings()
    logits = head(final_hidden.to(head.weight.dtype)).float()
    if adapter.softcap:
        logits = torch.tanh(logits / adapter.softcap) * adapter.softcap
    return torch.log_softmax(logits, dim=-1)


def _kl(ref: torch.Tensor, new: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """KL(ref || new) per row from log-probs [rows, vocab]; over the ``keep`` tokens renormalised if given."""
    ref, new = ref.double(), new.double()
    if keep is not None:
        ref, new = ref[:, keep], new[:, keep]
        ref = ref - torch.logsumexp(ref, -1, keepdim=True)
        new = new - torch.logsumexp(new, -1, keepdim=True)
    return (ref.exp() * (ref - new)).sum(-1)


@dataclass
class Edited:
    """What one edited (or clean) run of all prompts under C conditions gives."""

    labels: np.ndarray  # [C, P, 4] label logits
    kl: np.ndarray  # [C, P] KL(clean || edited) at the last position, NaN outside the KL prompts
    kl_nonlabel: np.ndarray  # [C, P] the same over non-label tokens, renormalised
    acts: dict[int, np.ndarray]  # {index: [C, P, d]} edited last-token activations
    logprobs: torch.Tensor | None = None  # [n_kl, vocab] full log-probs of the KL prompts (clean run only)


def _forward(adapter: ModelAdapter, ids: torch.Tensor, layer: int, add: torch.Tensor | None,
             basis: torch.Tensor | None, capture: Sequence[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One edited forward: final hidden states [rows, pos, d] and the captured last positions {index: [rows|1, d]}."""
    captured: dict[int, torch.Tensor] = {}
    hooks = {m: _keep_last(captured, m) for m in capture if m != layer}
    hooks[layer] = edit_hook(add, basis, _keep_last(captured, layer) if layer in capture else None)
    with adapter.hooks(resid=hooks):
        hidden = adapter.forward_final(ids.to(adapter.device), use_cache=False).last_hidden_state
    return hidden, captured


def _shared_prefix_agrees(adapter: ModelAdapter, prompts: Prompts, layer: int, add: torch.Tensor | None,
                          basis: torch.Tensor | None) -> bool:
    """Does one prompt run once below ``layer`` and expanded to its conditions there give what running each
    condition as its own row gives? (It relies on the batch-1 masks and positions broadcasting.)"""
    rows = slice(0, min(3, len(add if add is not None else basis)))
    pick = (None if add is None else add[rows], None if basis is None else basis[rows])
    n = len((add if add is not None else basis)[rows])
    ids = torch.tensor([prompts.tokens[0]])
    try:
        shared = adapter.label_logits(_forward(adapter, ids, layer, *pick, ())[0][:, -1], prompts.token_ids)
    except (RuntimeError, ValueError, IndexError) as e:
        log.warning("%s: running a prompt once below the edited index fails (%s)", adapter.name, e)
        return False
    own = adapter.label_logits(_forward(adapter, ids.expand(n, -1), layer, *pick, ())[0][:, -1], prompts.token_ids)
    return bool(torch.allclose(shared, own, rtol=2e-2, atol=2e-2 * float(own.abs().max()) + 1e-6))


@torch.inference_mode()
def run_edits(adapter: ModelAdapter, prompts: Prompts, layer: int, *, add: np.ndarray | None = None,
              basis: np.ndarray | None = None, capture: Sequence[int] = (), clean: Edited | None = None,
              keep_logprobs: bool = False, batch_size: int = 32, share: bool = True) -> Edited:
    """Run every prompt under each of C conditions (row c: add ``add[c]`` [d] and/or project out ``basis[c]``
    [k, d] at residual index ``layer``, every position); rows (condition, prompt) share the batch.

    One condition: prompts grouped by token length (no padding), ``batch_size`` per forward. Several:
    one prompt per forward with up to ``batch_size`` of its conditions as the rows; the prompt runs once
    up to ``layer``, where the hook expands it to the rows (nothing below the edit depends on the
    condition), which saves the blocks below ``layer`` for all but one row. That relies on the model's
    batch-1 masks and positions broadcasting; a check on the first prompt falls back to one row per
    (condition, prompt) if they do not (``share=False`` always does). ``capture``: residual indices whose
    last-token activations are kept (edited where the index is ``layer``). ``clean``: the clean run, for
    the KL of the KL prompts; ``keep_logprobs`` keeps this run's own full log-probs of the KL prompts.
    """
    cond = add if add is not None else basis
    assert cond is not None, "an edit adds a vector, projects out a subspace, or both"
    n_cond, n = len(cond), len(prompts)
    device = adapter.device
    add_t = None if add is None else torch.as_tensor(np.asarray(add), dtype=torch.float32, device=device)
    basis_t = None if basis is None else torch.as_tensor(np.asarray(basis), dtype=torch.float32, device=device)
    shared = share and n_cond > 1 and _shared_prefix_agrees(adapter, prompts, layer, add_t, basis_t)
    if share and n_cond > 1 and not shared:
        log.warning("%s: expanding a prompt to its conditions at index %d does not match running them apart; "
                    "running every (condition, prompt) row in full", adapter.name, layer)
    if shared:
        batches = [(np.arange(s, min(s + batch_size, n_cond)), np.full(min(batch_size, n_cond - s), i))
                   for i in range(n) for s in range(0, n_cond, batch_size)]
    else:
        batches = []
        for bucket in length_buckets([len(t) for t in prompts.tokens], batch_size):
            rows_c = np.repeat(np.arange(n_cond), len(bucket))  # condition-major, then prompt
            rows_p = np.tile(np.asarray(bucket), n_cond)
            batches += [(rows_c[s:s + batch_size], rows_p[s:s + batch_size]) for s in range(0, len(rows_c), batch_size)]
    labels = torch.empty(n_cond, n, len(prompts.token_ids))
    kl = torch.full((n_cond, n), float("nan"), dtype=torch.float64)
    kl_nonlabel = torch.full((n_cond, n), float("nan"), dtype=torch.float64)
    acts = {m: torch.empty(n_cond, n, adapter.d_model) for m in capture}
    n_kl = int((prompts.kl_row >= 0).sum())
    logprobs = None
    nonlabel = None
    for c, p in batches:
        ids = torch.tensor([prompts.tokens[i] for i in (p[:1] if shared else p)])  # [rows or 1, pos]
        hidden, captured = _forward(adapter, ids, layer, None if add_t is None else add_t[c],
                                    None if basis_t is None else basis_t[c], capture)  # [rows, pos, d]
        labels[c, p] = adapter.label_logits(hidden[:, -1], prompts.token_ids).cpu()
        for m, x in captured.items():
            acts[m][c, p] = x.float().cpu()  # a shared prompt's stream below the edit broadcasts to its rows
        rows = np.flatnonzero(prompts.kl_row[p] >= 0)
        if len(rows) and (clean is not None or keep_logprobs):
            lp = full_logprobs(adapter, hidden[torch.from_numpy(rows).to(device), -1])  # [rows_kl, vocab]
            where = torch.from_numpy(prompts.kl_row[p[rows]]).to(device)
            if keep_logprobs:
                if logprobs is None:
                    logprobs = lp.new_empty(n_kl, lp.shape[-1])
                logprobs[where] = lp
            if clean is not None:
                if nonlabel is None:
                    nonlabel = torch.ones(lp.shape[-1], dtype=torch.bool, device=device)
                    nonlabel[prompts.token_ids] = False
                kl[c[rows], p[rows]] = _kl(clean.logprobs[where], lp).cpu()
                kl_nonlabel[c[rows], p[rows]] = _kl(clean.logprobs[where], lp, nonlabel).cpu()
    return Edited(labels.double().numpy(), kl.double().numpy(), kl_nonlabel.double().numpy(),
                  {m: a.numpy() for m, a in acts.items()}, logprobs)


def clean_run(adapter: ModelAdapter, prompts: Prompts, capture: Sequence[int] = (), batch_size: int = 32) -> Edited:
    """The clean run: a zero vector added at index 0 (the identity), with the KL prompts' full log-probs."""
    return run_edits(adapter, prompts, 0, add=np.zeros((1, adapter.d_model)), capture=capture,
                     keep_logprobs=True, batch_size=batch_size)


# --- readout measures and item-level statistics -----------------------------------------------------
def readout_measures(labels: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label logits [..., 4] -> (calibrated probability, LD of each label against the mean of the other three)."""
    z = labels - offsets
    prob = np.exp(z - z.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    ld = z - (z.sum(-1, keepdims=True) - z) / (K - 1)
    return prob, ld


def item_matrix(items: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[I, P] averaging matrix (row i: 1/n_i on item i's prompts) and the item names, in first-seen order."""
    names = list(dict.fromkeys(items.tolist()))
    onehot = (items[None, :] == np.array(names)[:, None]).astype(np.float64)
    return onehot / onehot.sum(1, keepdims=True), names


def bootstrap_weights(records: Sequence[dict[str, Any]], items: Sequence[str], n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """[B, I] weights of ``items`` in a two-stage resample (frames, then items within frames), each row
    summing to 1: the resampled item-mean of a per-item value v [I] is W @ v."""
    frame_of = dict(zip((r["item_id"] for r in records), frame_groups(list(records)), strict=True))
    weights = two_stage_weights(codes_of([frame_of[i] for i in items]), n_boot, rng)
    return weights / weights.sum(1, keepdims=True)


def _ci(boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval over the first axis."""
    return np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)


def shift_summary(shift: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Summaries of item-mean shifts [A, 4 + R, I, 4] (alphas, emotion vectors then random directions, items,
    readouts): specificity [A, 4, 4], on-target [A, 4] with CI, the random null's mean and 95th percentile
    over directions [A, 4] with CIs, and the specificity index (diagonal minus mean off-diagonal) [A]."""
    point = shift.mean(2)  # [A, D, 4]
    spec = point[:, :K]  # [A, 4, 4]
    diag = np.stack([shift[:, e, :, e] for e in range(K)], axis=-1)  # [A, I, 4]
    boot_on = np.einsum("bi,aie->bae", weights, diag)
    out = {"specificity": spec, "on_target": np.einsum("aee->ae", spec)}
    out["on_target_ci_low"], out["on_target_ci_high"] = _ci(boot_on)
    off = ~np.eye(K, dtype=bool)
    out["specificity_index"] = out["on_target"].mean(-1) - spec[:, off].mean(-1)
    if shift.shape[1] > K:
        rand = point[:, K:]  # [A, R, 4]
        boot_r = np.einsum("bi,arie->bare", weights, shift[:, K:])
        out["random_mean"], out["random_q95"] = rand.mean(1), np.quantile(rand, 0.95, axis=1)
        out["random_mean_ci_low"], out["random_mean_ci_high"] = _ci(boot_r.mean(2))
        out["random_q95_ci_low"], out["random_q95_ci_high"] = _ci(np.quantile(boot_r, 0.95, axis=2))
        out["beats_random"] = out["on_target_ci_low"] > out["random_q95"]
    return out


# --- steering at one index ------------------------------------------------------------------------
def steer_index(adapter: ModelAdapter, prompts: Prompts, clean: Edited, layer: int, directions: np.ndarray,
                alphas: Sequence[float], norm: float, batch_size: int = 32) -> Edited:
    """Steer along each unit direction [D, d] at every alpha > 0 (rows alpha-major); alpha 0 is ``clean``.

    Returns the run with C = len(alphas) * D conditions; alpha-0 conditions copy the clean run.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    moving = alphas != 0
    adds = (alphas[moving, None, None] * norm * directions[None]).reshape(-1, directions.shape[-1])
    n_dir = len(directions)
    labels = np.repeat(clean.labels, len(alphas) * n_dir, axis=0)
    zeros = np.where(prompts.kl_row >= 0, 0.0, np.nan)[None]  # [1, P]: the clean run's KL from itself
    kl, kl_nl = (np.repeat(zeros, len(alphas) * n_dir, axis=0) for _ in range(2))
    if len(adds):
        run = run_edits(adapter, prompts, layer, add=adds, clean=clean, batch_size=batch_size)
        rows = (np.flatnonzero(moving)[:, None] * n_dir + np.arange(n_dir)).ravel()
        labels[rows], kl[rows], kl_nl[rows] = run.labels, run.kl, run.kl_nonlabel
    return Edited(labels, kl, kl_nl, {})


def steering_shifts(edited: Edited, clean: Edited, prompts: Prompts, offsets: np.ndarray, averaging: np.ndarray,
                    n_alphas: int) -> dict[str, np.ndarray]:
    """Item-mean shifts {"ld", "prob"} [A, D, I, 4] and mean KLs over the KL prompts {"kl", "kl_nonlabel"} [A, D]."""
    prob0, ld0 = readout_measures(clean.labels[0], offsets)
    prob, ld = readout_measures(edited.labels, offsets)  # [C, P, 4]
    out = {}
    for name, value, ref in (("ld", ld, ld0), ("prob", prob, prob0)):
        items = np.einsum("ip,cpe->cie", averaging, value - ref)  # [C, I, 4]
        out[name] = items.reshape(n_alphas, -1, *items.shape[1:])
    kl_mask = prompts.kl_row >= 0
    for name, value in (("kl", edited.kl), ("kl_nonlabel", edited.kl_nonlabel)):
        mean = value[:, kl_mask].mean(1) if kl_mask.any() else np.full(len(value), np.nan)
        out[name] = mean.reshape(n_alphas, -1)
    return out


# --- directional ablation ---------------------------------------------------------------------------
def calibrated_accuracy(labels: np.ndarray, truth: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Accuracy [...] of argmax(label logits [..., P, 4] - offsets); offsets default to the run's own mean
    label logits over its prompts (the contextual calibration of behaviour.py)."""
    if offsets is None:
        offsets = labels.mean(-2, keepdims=True)
    return ((labels - offsets).argmax(-1) == truth).mean(-1)


def fit_probes(x_fit: np.ndarray, emotions: Sequence[str], layers: Sequence[int], seed: int) -> dict[int, Any]:
    """The phase-3 probe (standardised logistic regression) fitted on fit-half activations [N, S, d] per index."""
    return {m: probe_model(seed).fit(x_fit[:, m], np.asarray(emotions)) for m in layers}


def ablation_index(adapter: ModelAdapter, prompts: Prompts, clean: Edited, layer: int, bases: np.ndarray,
                   probes: dict[int, Any], weights: np.ndarray, averaging: np.ndarray, offsets: np.ndarray,
                   batch_size: int = 32) -> dict[str, Any]:
    """Project each basis [C, k, d] (row 0 the emotion subspace, then random ones) out at index ``layer``;
    readout accuracy and probe accuracy at every probed index m >= layer, clean and ablated."""
    later = [m for m in probes if m >= layer]
    run = run_edits(adapter, prompts, layer, basis=bases, capture=later, batch_size=batch_size)
    truth = prompts.truth
    acc_clean = float(calibrated_accuracy(clean.labels[0], truth))
    acc = calibrated_accuracy(run.labels, truth)  # [C]
    acc_fixed = calibrated_accuracy(run.labels, truth, offsets)
    hits_clean = ((clean.labels[0] - clean.labels[0].mean(0)).argmax(-1) == truth).astype(float)
    hits = ((run.labels[0] - run.labels[0].mean(0)).argmax(-1) == truth).astype(float)
    boot = weights @ (averaging @ (hits_clean - hits))  # [B]: item-resampled drop
    labels = np.asarray(EMOTIONS)[truth]
    probe = {m: np.array([(probes[m].predict(run.acts[m][c]) == labels).mean() for c in range(len(bases))])
             for m in later}

    def rand(values: np.ndarray, reduce: Callable = np.mean) -> float:  # over the random subspaces
        return float(reduce(values[1:])) if len(values) > 1 else float("nan")

    return {
        "readout_accuracy": float(acc[0]), "readout_drop": acc_clean - float(acc[0]),
        "readout_drop_ci_low": float(np.percentile(boot, 2.5)),
        "readout_drop_ci_high": float(np.percentile(boot, 97.5)),
        "readout_drop_random_mean": acc_clean - rand(acc), "readout_drop_random_max": acc_clean - rand(acc, np.min),
        "readout_accuracy_fixed_offsets": float(acc_fixed[0]),
        "readout_accuracy_fixed_offsets_random_mean": rand(acc_fixed),
        "probe_accuracy": {m: float(a[0]) for m, a in probe.items()},
        "probe_accuracy_random_mean": {m: rand(a) for m, a in probe.items()},
    }


# --- cross-model transfer -----------------------------------------------------------------------------
def _diag(ld: np.ndarray) -> np.ndarray:
    """[4, I, 4] item shifts of the four emotion directions -> [I, 4] on-target shifts."""
    return np.stack([ld[e, :, e] for e in range(K)], axis=-1)


def transfer_fraction(own: np.ndarray, mapped: np.ndarray, random: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """Fraction of b's own on-target shift a's mapped vectors achieve, from item shifts: own and mapped
    [I, 4] on-target, random [R, I, 4] (each random direction's shift on each readout).

    Per emotion: mapped / own. Overall: ratio of sums over emotions, with a frame-then-item bootstrap CI. Nulls: per
    emotion, each random mapped direction's shift on readout e over own[e]; overall, sets of four random
    mapped directions, one per emotion, scored as the mapped vectors are (a map can send any direction
    into b's emotion subspace; what the null asks is whether it lands on the right emotion).
    """
    own_on, mapped_on = own.mean(0), mapped.mean(0)  # [4]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_emotion = np.where(own_on > 0, mapped_on / own_on, np.nan)
        overall = mapped_on.sum() / own_on.sum() if own_on.sum() > 0 else np.nan
        boot = (weights @ mapped).sum(1) / (weights @ own).sum(1)
        null = np.where(own_on > 0, random.mean(1) / own_on, np.nan)  # [R, 4]: per emotion, over own[e]
    low, high = (np.percentile(boot[np.isfinite(boot)], q) if np.isfinite(overall) else np.nan for q in (2.5, 97.5))
    ok = own_on > 0  # a column of the per-emotion null is defined where b's own effect is positive
    null_mean, null_q95 = np.full(K, np.nan), np.full(K, np.nan)
    if len(null):
        null_mean[ok], null_q95[ok] = null[:, ok].mean(0), np.quantile(null[:, ok], 0.95, axis=0)
    # the overall fraction's null: four random directions, one standing in for each emotion, scored as the
    # mapped vectors are (mean over emotions of its shift on that emotion's readout, over b's mean own effect);
    # every assignment of the R directions to the four emotions (R^4), or a seeded sample of them
    sets = np.empty(0)
    if own_on.mean() > 0 and len(random):
        n_r = len(random)
        picks = (np.stack(np.meshgrid(*[np.arange(n_r)] * K, indexing="ij"), -1).reshape(-1, K) if n_r ** K <= 20000
                 else np.random.default_rng(n_r).integers(n_r, size=(20000, K)))
        rand_on = random.mean(1)  # [R, 4]
        sets = rand_on[picks, np.arange(K)].mean(1) / own_on.mean()
    q95 = float(np.quantile(sets, 0.95)) if len(sets) else np.nan
    return {
        "on_target_own": own_on, "on_target_mapped": mapped_on, "fraction": per_emotion,
        "fraction_mean": float(overall), "fraction_ci_low": float(low), "fraction_ci_high": float(high),
        "null_fraction_mean": null_mean, "null_fraction_q95": null_q95,
        "null_fraction_sets_mean": float(sets.mean()) if len(sets) else np.nan,
        "null_fraction_sets_q95": q95,
        "null_p": float((1 + np.sum(sets >= overall)) / (1 + len(sets))) if len(sets) and np.isfinite(overall)
        else np.nan,
        "beats_null": bool(np.isfinite(overall) and np.isfinite(q95) and overall > q95),
    }


def transfer_effect(adapter: ModelAdapter, prompts: Prompts, clean: Edited, layer: int, norm: float, alpha: float,
                    own: np.ndarray, carried: dict[str, tuple[np.ndarray, np.ndarray]], offsets: np.ndarray,
                    averaging: np.ndarray, weights: np.ndarray, batch_size: int = 32) -> dict[str, Any]:
    """Steer b at ``layer`` with its own vectors [4, d] and, per source, carried vectors [4, d] and carried random
    directions [R, d], all as unit directions scaled by alpha * norm, in one batched run.

    Returns {"own": {on_target [4], CI, specificity [4, 4]}, "sources": {name: transfer_fraction(...) +
    specificity_mapped [4, 4]}}.
    """
    blocks = [unit(own)] + [unit(np.concatenate(pair)) for pair in carried.values()]
    run = steer_index(adapter, prompts, clean, layer, np.concatenate(blocks), [alpha], norm, batch_size)
    ld = steering_shifts(run, clean, prompts, offsets, averaging, 1)["ld"][0]  # [D, I, 4]
    own_diag = _diag(ld[:K])
    low, high = _ci(weights @ own_diag)
    out: dict[str, Any] = {"own": {"on_target": own_diag.mean(0), "on_target_ci_low": low, "on_target_ci_high": high,
                                   "specificity": ld[:K].mean(1)}, "sources": {}}
    start = K
    for name, (_, random) in carried.items():
        block = ld[start:start + K + len(random)]
        start += K + len(random)
        out["sources"][name] = transfer_fraction(own_diag, _diag(block[:K]), block[K:], weights) | {
            "specificity_mapped": block[:K].mean(1)}
    return out


# --- run ----------------------------------------------------------------------------------------------
@dataclass
class Split:
    """A model's records in activation order, split by item; the fit half's last-token activations."""

    records: list[dict[str, Any]]
    fit_rows: np.ndarray  # [N_fit] rows of the activations
    held_rows: np.ndarray  # [N_held]
    heldout: list[dict[str, Any]]  # the measured held-out records (whole items, at most max_prompts)
    fit_emotions: list[str]


def split_records(records: Sequence[dict[str, Any]], act: dict[str, Any], activations: str | Path,
                  dataset: str | Path, seed: int, max_prompts: int | None) -> Split:
    """Join records to activations, split whole frames into halves (heads.frame_split), choose the measured items."""
    joined = join_records(records, act, activations, dataset)
    fit, held = frame_split(joined, seed)
    row = {r["id"]: i for i, r in enumerate(joined)}
    return Split(joined, np.array([row[r["id"]] for r in fit]), np.array([row[r["id"]] for r in held]),
                 select_items(held, max_prompts, seed), [r["emotion"] for r in fit])


def _best_layer(on_target: np.ndarray, layers: Sequence[int]) -> tuple[int, list[int]]:
    """Index (position in ``layers``) where the mean on-target shift [Lsel, 4] is largest, and the band of
    indices reaching half of it."""
    score = on_target.mean(-1)
    best = int(np.nanargmax(score))
    band = [layers[i] for i in range(len(layers)) if score[best] > 0 and score[i] >= 0.5 * score[best]]
    return best, band or [layers[best]]


def _nearest(alphas: Sequence[float], target: float) -> float:
    moving = [a for a in alphas if a != 0]
    return float(min(moving, key=lambda a: (abs(a - target), a))) if moving else 0.0


MEASURES = {
    "readout_shift.<ld|prob>.specificity": "[layer][alpha][4][4]: item-mean shift (steered - clean) of readout e' "
                                           "(columns) under the vector of emotion e (rows); ld = logit difference of "
                                           "e' against the mean of the other three labels, prob = calibrated "
                                           "probability",
    "readout_shift.<ld|prob>.on_target": "[layer][alpha][4]: the diagonal, with frame-then-item bootstrap 95% CIs",
    "readout_shift.<ld|prob>.random_mean / random_q95": "[layer][alpha][4]: mean and 95th percentile over random "
                                                        "unit directions (same scale) of their shift of readout e', "
                                                        "with frame-then-item bootstrap 95% CIs",
    "readout_shift.<ld|prob>.beats_random": "[layer][alpha][4]: on-target CI low > random_q95",
    "readout_shift.<ld|prob>.specificity_index": "[layer][alpha]: mean diagonal - mean off-diagonal",
    "kl": "[layer][alpha](...): mean KL(clean || steered) of the full next-token distribution at the last position "
          "over the neutral KL prompts; nonlabel: over tokens other than the four labels, renormalised",
    "ablation": "per ablated index: calibrated readout accuracy (the run's own offsets) and probe accuracy at each "
                "later probed index, emotion subspace vs random subspaces of the same dimension",
}


def run_steering(adapter: ModelAdapter, records: Sequence[dict[str, Any]], activations: str | Path,
                 out_json: str | Path, *, alphas: Sequence[float] = ALPHAS, layer_stride: int = 1, n_random: int = 20,
                 max_prompts: int | None = None, kl_prompts: int = 24, n_random_subspaces: int = 5,
                 n_boot: int = 1000, transfer_alpha: float = 2.0, seed: int = 0, batch_size: int = 32,
                 readout: Readout = DEFAULT, dataset: str | Path = "dataset",
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steering dose-response, specificity, KL cost and directional ablation of one model; save the JSON."""
    started = time.time()
    act = load_pickle(activations, schema="emolens.activations/2")
    if (act["n_layers"], act["d_model"]) != (adapter.n_layers, adapter.d_model):
        raise ValueError(f"{activations}: {act['n_layers']} layers x {act['d_model']} do not match {adapter.name} "
                         f"({adapter.n_layers} x {adapter.d_model}); extract the activations again")
    split = split_records(records, act, activations, dataset, seed, max_prompts)
    x_fit = act["resid"]["last"][split.fit_rows].astype(np.float64)  # [N_fit, L+1, d]
    del act
    vectors = emotion_vectors(x_fit, split.fit_emotions)  # [4, L+1, d]
    norms = typical_norms(x_fit)  # [L+1]
    vnorm = np.linalg.norm(vectors, axis=-1)  # [4, L+1]
    candidates = steer_layers(adapter.n_layers, layer_stride)
    layers = [m for m in candidates if norms[m] > 0 and (vnorm[:, m] > VANISH * norms[m]).all()]
    skipped = [m for m in candidates if m not in layers]
    if not layers:
        raise ValueError(f"{adapter.name}: the emotion vectors vanish at every steered index {candidates}")
    alphas = sorted({float(a) for a in alphas} | {0.0})
    alpha_ref = _nearest(alphas, transfer_alpha)
    prompts = prepare_prompts(adapter, split.heldout, readout, kl_prompts)
    averaging, items = item_matrix(prompts.items)
    weights = bootstrap_weights(split.heldout, items, n_boot, np.random.default_rng([seed, 2]))
    log.info("%s: steering at %d indices %s (skipped %s), alphas %s, %d emotion + %d random directions, on %d "
             "held-out prompts (%d items, %d KL prompts); fit half %d prompts", adapter.name, len(layers), layers,
             skipped, alphas, K, n_random, len(prompts), len(items), int((prompts.kl_row >= 0).sum()), len(x_fit))
    clean = clean_run(adapter, prompts, capture=layers, batch_size=batch_size)
    offsets = clean.labels[0].mean(0)  # [4]: behaviour.py's calibration, on the clean held-out run
    probes = fit_probes(x_fit, split.fit_emotions, layers, seed)
    truth_labels = np.asarray(EMOTIONS)[prompts.truth]
    probe_clean = {m: float((probes[m].predict(clean.acts[m][0]) == truth_labels).mean()) for m in layers}
    per_layer, ablation = [], []
    for m in tqdm(layers, desc=f"steering {adapter.name}"):
        dirs = np.concatenate([unit(vectors[:, m]),
                               random_directions(n_random, adapter.d_model, np.random.default_rng([seed, 3, m]))])
        run = steer_index(adapter, prompts, clean, m, dirs, alphas, float(norms[m]), batch_size)
        shifts = steering_shifts(run, clean, prompts, offsets, averaging, len(alphas))
        per_layer.append({"ld": shift_summary(shifts["ld"], weights), "prob": shift_summary(shifts["prob"], weights),
                          "kl": shifts["kl"], "kl_nonlabel": shifts["kl_nonlabel"]})
        basis = emotion_basis(x_fit[:, m], split.fit_emotions)
        rng = np.random.default_rng([seed, 4, m])
        bases = np.stack([basis] + [random_basis(len(basis), adapter.d_model, rng) for _ in range(n_random_subspaces)])
        ablation.append(ablation_index(adapter, prompts, clean, m, bases, probes, weights, averaging, offsets,
                                       batch_size) | {"k": len(basis)})
    shift = {metric: {key: np.stack([p[metric][key] for p in per_layer]) for key in per_layer[0][metric]}
             for metric in ("ld", "prob")}
    kl = {}
    for suffix, name in (("", "kl"), ("_nonlabel", "kl_nonlabel")):
        values = np.stack([p[name] for p in per_layer])  # [layer, alpha, 4 + R]
        kl[f"emotion{suffix}"] = values[..., :K]
        kl[f"random_mean{suffix}"] = values[..., K:].mean(-1)
        kl[f"random_q95{suffix}"] = np.quantile(values[..., K:], 0.95, axis=-1)
    a_ref = alphas.index(alpha_ref)
    best, band = _best_layer(shift["ld"]["on_target"][:, a_ref], layers)
    result = {
        "schema": SCHEMA, "model": adapter.name, "n_layers": adapter.n_layers, "d_model": adapter.d_model,
        "quantization": adapter.quantization, "emotions": list(EMOTIONS),
        "layers": layers, "relative_depth": [m / adapter.n_layers for m in layers], "skipped_layers": skipped,
        "alphas": alphas, "alpha_ref": alpha_ref,
        "split": {"method": "heads.frame_split (seeded, by frame, stratified by register): vectors, norms, subspaces "
                            "and probes fit on the fit half; measured on whole held-out frames",
                  "n_fit_prompts": len(split.fit_rows), "n_heldout_prompts_available": len(split.held_rows),
                  "n_prompts": len(prompts), "n_items": len(items), "heldout_items": items,
                  "n_kl_prompts": int((prompts.kl_row >= 0).sum())},
        "n_random": n_random, "n_boot": n_boot,
        "typical_norm": norms[layers], "vector_norm": vnorm[:, layers].T,
        "calibration_offsets": dict(zip(EMOTIONS, offsets.tolist(), strict=True)),
        "clean": {"accuracy_calibrated": float(calibrated_accuracy(clean.labels[0], prompts.truth)),
                  "accuracy_raw": float((clean.labels[0].argmax(-1) == prompts.truth).mean()),
                  "probe_accuracy": [probe_clean[m] for m in layers]},
        "readout_shift": shift,
        "kl": kl,
        "best": {
            "layer": layers[best], "relative_depth": layers[best] / adapter.n_layers, "alpha": alpha_ref,
            "effective_band": band, "effective_band_relative_depth": [min(band) / adapter.n_layers,
                                                                      max(band) / adapter.n_layers],
            "on_target_ld": shift["ld"]["on_target"][best, a_ref],
            "on_target_ld_ci_low": shift["ld"]["on_target_ci_low"][best, a_ref],
            "on_target_ld_ci_high": shift["ld"]["on_target_ci_high"][best, a_ref],
            "random_ld_q95": shift["ld"]["random_q95"][best, a_ref],
            "beats_random": shift["ld"]["beats_random"][best, a_ref],
            "specificity_ld": shift["ld"]["specificity"][best, a_ref],
            "specificity_prob": shift["prob"]["specificity"][best, a_ref],
            "specificity_index_ld": shift["ld"]["specificity_index"][best, a_ref],
            "kl": kl["emotion"][best, a_ref], "kl_random_mean": kl["random_mean"][best, a_ref],
            "kl_nonlabel": kl["emotion_nonlabel"][best, a_ref],
            "ablation_readout_drop": ablation[best]["readout_drop"],
            "ablation_readout_drop_random_mean": ablation[best]["readout_drop_random_mean"],
        },
        "ablation": {
            "basis": "span of the fit half's four emotion class means, centred (= the span of its emotion vectors), "
                     "at the ablated index; projected out at every position",
            "k": [a["k"] for a in ablation], "n_random_subspaces": n_random_subspaces,
            "readout_accuracy_clean": float(calibrated_accuracy(clean.labels[0], prompts.truth)),
            **{key: [a[key] for a in ablation] for key in ablation[0] if key.startswith("readout_")},
            "probe_layers": layers, "probe_accuracy_clean": [probe_clean[m] for m in layers],
            "probe_accuracy": [[a["probe_accuracy"].get(m) for m in layers] for a in ablation],
            "probe_accuracy_random_mean": [[a["probe_accuracy_random_mean"].get(m) for m in layers] for a in ablation],
        },
        "measures": MEASURES,
        "readout": readout.as_dict(), "label_token_ids": dict(zip(EMOTIONS, prompts.token_ids, strict=True)),
        "provenance": provenance(settings or {}, started, model=adapter.name),
    }
    save_json(result, out_json)
    b = result["best"]
    log.info("%s: steering strongest at index %d (depth %.2f, band %s) at alpha %g: on-target LD shift %s "
             "(random q95 %s), specificity index %.3f, KL %s; ablation there: readout drop %.3f (random %.3f)",
             adapter.name, b["layer"], b["relative_depth"], band, alpha_ref, np.round(b["on_target_ld"], 3),
             np.round(b["random_ld_q95"], 3), b["specificity_index_ld"], np.round(b["kl"], 4),
             b["ablation_readout_drop"], b["ablation_readout_drop_random_mean"])
    log.info("wrote %s in %.1f s", out_json, time.time() - started)
    return result


def matched_index(layer_b: int, n_layers_b: int, n_layers_a: int) -> int:
    """a's residual index at the relative depth of b's index (halves round up)."""
    return int(math.floor(layer_b * n_layers_a / n_layers_b + 0.5))


def run_transfer(adapter: ModelAdapter, records: Sequence[dict[str, Any]], activations: Sequence[str | Path],
                 steering_json: str | Path, out_json: str | Path, *, n_random: int = 20,
                 max_prompts: int | None = None, n_boot: int = 1000, ridge: float = 0.1, seed: int = 0,
                 batch_size: int = 32, readout: Readout = DEFAULT, dataset: str | Path = "dataset",
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steer model b (``adapter``) with every other model's emotion vectors carried through a ridge map; save."""
    from emolens.alignment import fit_linear_map, map_r2

    started = time.time()
    name = adapter.name
    paths = {Path(p).stem: Path(p) for p in activations}
    if name not in paths:
        raise ValueError(f"steer-transfer: no activations file named {name}.pkl among {sorted(map(str, paths))}")
    steer = json.loads(Path(steering_json).read_text())
    if steer.get("schema") != SCHEMA or steer.get("model") != name:
        raise ValueError(f"{steering_json}: not the steering file of {name}")
    layer_b, alpha = int(steer["best"]["layer"]), float(steer["alpha_ref"])
    act_b = load_pickle(paths[name], schema="emolens.activations/2")
    split = split_records(records, act_b, paths[name], dataset, seed, max_prompts)
    items_b = sorted({str(r["item_id"]) for r in split.heldout})
    if items_b != sorted(steer["split"]["heldout_items"]):
        raise ValueError(f"{steering_json} was measured on other held-out items than this run would use; run "
                         f"steer-transfer with the steering job's seed and max-prompts")
    resid_b = act_b["resid"]["last"][:, layer_b].astype(np.float64)  # [N, d_b]
    ids = list(act_b["ids"])
    del act_b
    xb_fit = resid_b[split.fit_rows]
    own = emotion_vectors(xb_fit[:, None], split.fit_emotions)[:, 0]  # [4, d_b]
    norm = float(typical_norms(xb_fit[:, None])[0])
    carried: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    meta: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for source, path in paths.items():
        if source == name:
            continue
        act_a = load_pickle(path, schema="emolens.activations/2")
        if list(act_a["ids"]) != ids:
            raise ValueError(f"{path} and {paths[name]} hold different prompts or orders; transfer needs the same")
        n_layers_a = int(act_a["n_layers"])
        layer_a = matched_index(layer_b, adapter.n_layers, n_layers_a)
        resid_a = act_a["resid"]["last"][:, layer_a].astype(np.float64)  # [N, d_a]
        del act_a
        xa_fit = resid_a[split.fit_rows]
        va = emotion_vectors(xa_fit[:, None], split.fit_emotions)[:, 0]  # [4, d_a]
        scale = float(typical_norms(xa_fit[:, None])[0])
        if scale == 0 or (np.linalg.norm(va, axis=-1) <= VANISH * scale).any():
            skipped[source] = f"emotion vectors vanish at {source}'s index {layer_a}"
            continue
        lmap = fit_linear_map(xa_fit, xb_fit, ridge)
        mapped = lmap.directions(va)  # [4, d_b]
        rand = lmap.directions(random_directions(n_random, resid_a.shape[1],
                                                 np.random.default_rng([seed, 5, zlib.crc32(source.encode())])))
        if (np.linalg.norm(mapped, axis=-1) == 0).any():
            skipped[source] = f"the map from {source}'s index {layer_a} sends an emotion vector to 0"
            continue
        carried[source] = (mapped, rand)
        meta[source] = {"layer_a": layer_a, "relative_depth_a": layer_a / n_layers_a,
                        "map_r2_heldout": map_r2(lmap, resid_a[split.held_rows], resid_b[split.held_rows]),
                        "cosine_mapped_own": np.sum(unit(mapped) * unit(own), -1)}
    prompts = prepare_prompts(adapter, split.heldout, readout)
    averaging, items = item_matrix(prompts.items)
    weights = bootstrap_weights(split.heldout, items, n_boot, np.random.default_rng([seed, 6]))
    log.info("%s: transfer at index %d, alpha %g, from %s (skipped %s), %d random directions each, on %d prompts",
             name, layer_b, alpha, sorted(carried), skipped, n_random, len(prompts))
    clean = clean_run(adapter, prompts, batch_size=batch_size)
    offsets = clean.labels[0].mean(0)
    effect = transfer_effect(adapter, prompts, clean, layer_b, norm, alpha, own, carried, offsets, averaging, weights,
                             batch_size)
    at = steer["layers"].index(layer_b), steer["alphas"].index(alpha)
    result = {
        "schema": TRANSFER_SCHEMA, "target": name, "layer_b": layer_b, "relative_depth_b": layer_b / adapter.n_layers,
        "alpha": alpha, "ridge": ridge, "n_random": n_random, "n_prompts": len(prompts), "n_items": len(items),
        "own": effect["own"],
        "own_in_steering_file": steer["readout_shift"]["ld"]["on_target"][at[0]][at[1]],
        "sources": {s: meta[s] | effect["sources"][s] for s in carried},
        "skipped_sources": skipped,
        "measure": "fraction = a's mapped vector's on-target LD shift / b's own, ratio of sums over emotions; nulls: "
                   "random unit directions of a's space through the same map; per emotion, each one's shift on "
                   "readout e over b's own[e]; overall (null_fraction_sets_*, null_p), every assignment of four of "
                   "them to the four emotions, scored as the fraction is",
        "provenance": provenance(settings or {}, started, model=name),
    }
    save_json(result, out_json)
    for s in carried:
        r = result["sources"][s]
        log.info("%s -> %s: fraction %.3f [%.3f, %.3f] of own steering (random-set null q95 %.3f, p %.3g), "
                 "map R^2 %.3f", s, name, r["fraction_mean"], r["fraction_ci_low"], r["fraction_ci_high"],
                 r["null_fraction_sets_q95"], r["null_p"], r["map_r2_heldout"])
    return result


def run_transfer_summary(files: Sequence[str | Path], out_json: str | Path) -> dict[str, Any]:
    """The model-pair matrices (rows: source a, columns: target b) of every ``into_<b>.json``; save the JSON."""
    started = time.time()
    found = [json.loads(Path(f).read_text()) for f in files]
    for f, t in zip(files, found, strict=True):
        if t.get("schema") != TRANSFER_SCHEMA:
            raise ValueError(f"{f}: schema {t.get('schema')!r}, expected {TRANSFER_SCHEMA!r}")
    models = list(dict.fromkeys([t["target"] for t in found] + [s for t in found for s in t["sources"]]
                                + [s for t in found for s in t["skipped_sources"]]))
    keys = ("fraction_mean", "fraction_ci_low", "fraction_ci_high", "null_fraction_sets_q95", "null_p",
            "map_r2_heldout", "beats_null", "layer_a")

    def matrix(key: str) -> list[list[Any]]:
        by_target = {t["target"]: t for t in found}
        return [[by_target[b]["sources"].get(a, {}).get(key) if b in by_target else None for b in models]
                for a in models]

    result = {"schema": SUMMARY_SCHEMA, "models": models, "rows": "source a (whose vector is carried)",
              "columns": "target b (steered)", **{k: matrix(k) for k in keys},
              "layer_b": {t["target"]: t["layer_b"] for t in found}, "alpha": {t["target"]: t["alpha"] for t in found},
              "own_on_target": {t["target"]: t["own"]["on_target"] for t in found},
              "provenance": provenance({"files": [str(f) for f in files]}, started)}
    save_json(result, out_json)
    log.info("wrote %s: %d targets, %d models", out_json, len(found), len(models))
    return result
