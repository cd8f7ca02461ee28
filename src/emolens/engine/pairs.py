"""Pairs: ordered (source, target) prompts of one item with different emotions, tokenised to patch.

Denoising (the default) runs the target prompt and patches in the source's activations; noising runs
the source and patches in the target's. The metric's label indices travel with the pairs, so every
phase that patches reads the same logit difference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.data.readout import DEFAULT, Readout
from emolens.engine.inputs import tokenize
from emolens.model.adapter import ModelAdapter

DIRECTIONS = ("denoising", "noising")


def make_pairs(records: Sequence[dict[str, Any]], max_pairs: int | None = None,
               seed: int = 0) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Ordered (source, target) record pairs of distinct emotions within each item_id.

    Items in order of first appearance; within an item, records in file order (n(n - 1) pairs for an
    item of n emotions, 12 for a quadruple). ``max_pairs`` keeps a seeded random subset, in the original order.
    """
    items: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        items[r["item_id"]].append(r)
    pairs = [(s, t) for recs in items.values() for s in recs for t in recs if s["emotion"] != t["emotion"]]
    if max_pairs is not None and len(pairs) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False))
        pairs = [pairs[i] for i in keep]
    return pairs


@dataclass
class Pairs:
    """Tokenised pairs, ready to patch: run and donor prompts and the label indices of the metric."""

    ids: list[tuple[str, str]]  # (source id, target id), the unit of statistics
    run: list[list[int]]  # token ids of the prompt that is run (the target when denoising)
    donor: list[list[int]]  # token ids of the prompt whose activations are patched in
    ld_index: np.ndarray  # [P, 2] (source label, target label) as indices into token_ids
    label_token_ids: dict[str, int]  # {emotion: token id of its one-token label word}, the run's emotions
    direction: str
    readout: Readout = DEFAULT  # how the prompts were built and read

    @property
    def token_ids(self) -> list[int]:  # the label tokens in :func:`emolens.emotion_order`
        return [self.label_token_ids[e] for e in emotion_order(self.label_token_ids)]

    @property
    def same_length(self) -> np.ndarray:  # [P] bool: run and donor tokenise to the same length
        return np.array([len(r) == len(d) for r, d in zip(self.run, self.donor, strict=True)], dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)


def prepare_pairs(adapter: ModelAdapter, records: Sequence[dict[str, Any]], *, direction: str = "denoising",
                  max_pairs: int | None = None, seed: int = 0, readout: Readout = DEFAULT) -> Pairs:
    """Build, subsample and tokenise the pairs of ``records`` for ``direction``, in ``readout``'s prompts."""
    if direction not in DIRECTIONS:
        raise ValueError(f"patching direction {direction!r} is not one of {DIRECTIONS}")
    pairs = make_pairs(records, max_pairs, seed)
    if not pairs:
        raise ValueError("no (source, target) pairs: every item_id needs records of at least two emotions")
    texts = sorted({r["id"]: r["text"] for pair in pairs for r in pair}.items())
    label_ids = readout.label_token_ids(adapter.tokenizer)  # refuses a label that is not one token
    tokens = dict(zip((i for i, _ in texts), tokenize(adapter, [t for _, t in texts], readout), strict=True))
    run, donor = [], []
    for s, t in pairs:
        r, d = (t, s) if direction == "denoising" else (s, t)
        run.append(tokens[r["id"]])
        donor.append(tokens[d["id"]])
    index = {e: i for i, e in enumerate(emotion_order(label_ids))}
    return Pairs(ids=[(s["id"], t["id"]) for s, t in pairs], run=run, donor=donor,
                 ld_index=np.array([[index[s["emotion"]], index[t["emotion"]]] for s, t in pairs]),
                 label_token_ids=label_ids, direction=direction, readout=readout)
