"""The readout task every phase shares: a fixed suffix after each message, and one label token per emotion.

A prompt is the message followed by :data:`READOUT_SUFFIX`; the model's answer is read at the last
position as the logits of the four label words (each with its leading space). The metric uses each
label word's first token id, so two labels that share a first token would be indistinguishable:
:func:`label_token_ids` refuses such a tokenizer.
"""

from __future__ import annotations

from typing import Any

from emolens import EMOTIONS

READOUT_SUFFIX = "\nThe emotion of this message is"
LABEL_WORDS: dict[str, str] = {e: " " + e for e in EMOTIONS}


def prompt(text: str) -> str:
    """The readout prompt for one message: the text, then the fixed suffix."""
    return text + READOUT_SUFFIX


def label_token_ids(tokenizer: Any) -> dict[str, int]:
    """The first token id of each emotion's label word; a ValueError if two labels share one."""
    ids = {}
    for emotion, word in LABEL_WORDS.items():
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if not tokens:
            raise ValueError(f"label word {word!r} encodes to no tokens")
        ids[emotion] = int(tokens[0])
    by_id: dict[int, list[str]] = {}
    for emotion, tid in ids.items():
        by_id.setdefault(tid, []).append(emotion)
    shared = {tid: es for tid, es in by_id.items() if len(es) > 1}
    if shared:
        raise ValueError(f"label words share a first token, so the readout cannot tell them apart: "
                         f"{ {tokenizer.convert_ids_to_tokens(t): es for t, es in shared.items()} }")
    return ids
