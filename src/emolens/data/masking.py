"""Masked explicit texts: the emotion words of each explicit text replaced by a neutral placeholder.

The robustness control of the probes (does a probe fit on ordinary texts still read the emotion when the word that
names it is gone?). A word is an emotion word when it starts with one of the emotion-word stems
(:data:`emolens.data.dataset.STEMS` for the built-in four; for any other label set the stems of its emotion names
and label words, :func:`emolens.data.dataset.emotion_cues`); the whole word (to its end; a stem that is a whole
word, such as "mad", only itself) becomes :data:`PLACEHOLDER`. Only explicit texts are masked (implicit ones hold
no emotion word by construction, and stay as they are); the masked texts are used at test time only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from emolens import EMOTIONS
from emolens.data.dataset import STEMS, emotion_cues

PLACEHOLDER = "[MASK]"  # neutral, no emotion stem, the same in every tokenizer's vocabulary of words


def word_patterns(emotions: Iterable[str]) -> list[re.Pattern[str]]:
    """One pattern per emotion-word stem, each extended to the end of its word (case-insensitive)."""
    names = emotions if isinstance(emotions, Mapping) else list(emotions)
    stems = STEMS if set(names) == set(EMOTIONS) else {k: p.pattern for k, p in emotion_cues(names).items()}
    return [re.compile(p if p.endswith(r"\b") else p + r"[\w']*", re.IGNORECASE) for p in stems.values()]


def mask_text(text: str, patterns: Sequence[re.Pattern[str]], placeholder: str = PLACEHOLDER) -> str:
    """``text`` with every emotion word replaced by ``placeholder``."""
    for pattern in patterns:
        text = pattern.sub(placeholder, text)
    return text


def masked_explicit(records: Sequence[dict[str, Any]], emotions: Iterable[str],
                    placeholder: str = PLACEHOLDER) -> tuple[list[int], list[str]]:
    """(rows, masked texts) of the explicit records, in order; ([], []) where no record says its register."""
    patterns = word_patterns(emotions)
    rows = [i for i, r in enumerate(records) if r.get("register") == "explicit"]
    return rows, [mask_text(records[i]["text"], patterns, placeholder) for i in rows]
