"""The engine of steering, ablation and transfer: a hook that edits the residual stream, one edit per batch row.

At residual index l the hook projects out an orthonormal basis and/or adds a vector at every position of
the prompt, computed in float32, so that directions, alphas and prompts share the batch dimension (one
prompt can run once below l and be expanded to its conditions there). Measured on readout prompts
(``readout.prompt(text)``): the label logits (one per emotion of the run) at the last position,
edited last-token activations at chosen indices, and the cost KL(clean || edited) of the full
next-token distribution at the last position on the KL prompts (the one place full-vocabulary logits
are computed, from the final hidden state of those rows only), also over the vocabulary without the
label tokens, renormalised. The clean
run is the same hook adding a zero vector, which the tests show is bit-identical to the unhooked model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from emolens import EMOTIONS
from emolens.data.readout import DEFAULT, Readout
from emolens.engine.inputs import length_buckets, tokenize
from emolens.model.adapter import ModelAdapter

log = logging.getLogger(__name__)


# --- the prompts every edited run is measured on -----------------------------------------------------
@dataclass
class Prompts:
    """Held-out readout prompts, tokenised: what every steering run is measured on."""

    tokens: list[list[int]]
    truth: np.ndarray  # [P] emotion index into readout.emotions
    items: np.ndarray  # [P] item ids: the unit of every CI
    kl_row: np.ndarray  # [P] row in the clean full-vocabulary log-probs, -1 = not a KL prompt
    token_ids: list[int]  # label token ids, readout.emotions order
    emotions: tuple[str, ...] = EMOTIONS  # the run's (readout.emotions): truth indexes them

    @property
    def labels(self) -> np.ndarray:  # [P] each prompt's emotion name
        return np.asarray(self.emotions)[self.truth]

    def __len__(self) -> int:
        return len(self.tokens)


def prepare_prompts(adapter: ModelAdapter, records: Sequence[dict[str, Any]], readout: Readout = DEFAULT,
                    kl_prompts: int = 0) -> Prompts:
    """Tokenised readout prompts; the first ``kl_prompts`` neutral ones are the KL prompts (the first of any
    emotion where the run has no neutral)."""
    label_ids = readout.label_token_ids(adapter.tokenizer)
    emotions = readout.emotions
    neutral = [i for i, r in enumerate(records) if r["emotion"] == "neutral" or "neutral" not in emotions][:kl_prompts]
    kl_row = np.full(len(records), -1)
    kl_row[neutral] = np.arange(len(neutral))
    return Prompts(tokens=tokenize(adapter, [r["text"] for r in records], readout),
                   truth=np.array([emotions.index(r["emotion"]) for r in records]),
                   items=np.array([str(r["item_id"]) for r in records]), kl_row=kl_row,
                   token_ids=[label_ids[e] for e in emotions], emotions=emotions)


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

    labels: np.ndarray  # [C, P, n_emotions] label logits
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
    for c, p in tqdm(batches, desc=f"{n_cond} edits x {n} prompts at index {layer}", leave=False):
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
