"""The prompts' token ids and their length buckets: what every engine that runs prompts in batches shares.

Batches group prompts of equal token length, so no padding enters any sum.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from emolens.data.readout import DEFAULT, Readout
from emolens.model.adapter import ModelAdapter
from emolens.stopwatch import charged


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal length, then cut into batches of at most ``batch_size``."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        by_length[n].append(i)
    return [idx[s:s + batch_size] for n in sorted(by_length) for idx in [by_length[n]]
            for s in range(0, len(idx), batch_size)]


@charged("tokenise")
def tokenize(adapter: ModelAdapter, texts: Sequence[str], readout: Readout = DEFAULT,
             chat: bool = False) -> list[list[int]]:
    """Token ids of each readout prompt (the tokenizer's own special tokens included); with ``chat``, of the
    prompt in the tokenizer's chat template, whose text already holds the special tokens."""
    tok = adapter.tokenizer
    if chat:
        return [tok(readout.chat_prompt(t, tok), add_special_tokens=False)["input_ids"] for t in texts]
    return [tok(readout.prompt(t))["input_ids"] for t in texts]
