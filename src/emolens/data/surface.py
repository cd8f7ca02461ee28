"""Surface features of a text, and the baseline that predicts the emotion from them alone.

Length, pronouns, punctuation, negation and time words are not emotion, but a dataset can let them
give the emotion away (apologies long and in the first person, neutral texts short and full of
times). The surface baseline is a logistic regression on these counts with the same frame-held-out
folds as the probes: a dataset is fit for purpose only where it stays near chance, and a probe that
beats it reads more than the surface.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from emolens.stopwatch import charged

FIRST_PERSON = frozenset("i me my mine myself we us our ours ourselves i'm i've i'll i'd we're we've we'll".split())
SECOND_PERSON = frozenset("you your yours yourself yourselves you're you've you'll you'd".split())
NEGATION = frozenset("not no never nothing nobody none nor cannot without".split())
TIME_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty hundred "
    "first second third half quarter o'clock noon midnight morning afternoon evening night tonight today "
    "tomorrow yesterday hour hours minute minutes day days week weeks weekend month months year years "
    "monday tuesday wednesday thursday friday saturday sunday am pm".split())
_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")

# Feature columns, in order; token counts under each tokenizer given are appended.
FEATURES = ("words", "first_person", "second_person", "negation", "time_words", "commas", "question_marks",
            "exclamation_marks")


def words(text: str) -> list[str]:
    """The lower-cased words of a text (letters and digits, with an apostrophe suffix such as n't or 'm)."""
    return [w.lower() for w in _WORD.findall(text)]


def counts(text: str) -> dict[str, int]:
    """The surface counts of one text, keyed as :data:`FEATURES`."""
    ws = words(text)
    return {"words": len(ws),
            "first_person": sum(w in FIRST_PERSON for w in ws),
            "second_person": sum(w in SECOND_PERSON for w in ws),
            "negation": sum(w in NEGATION or w.endswith("n't") for w in ws),
            "time_words": sum(w in TIME_WORDS or w.isdigit() for w in ws),
            "commas": text.count(","), "question_marks": text.count("?"), "exclamation_marks": text.count("!")}


def token_counts(texts: Sequence[str], tokenizer: Any) -> np.ndarray:
    """Tokens [N] of each text under a Hugging Face tokenizer, without special tokens."""
    with charged("tokenise"):
        return np.array([len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]])


def feature_matrix(texts: Sequence[str], tokens: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """[N, F] surface features: :data:`FEATURES`, then each given column of token counts [N]."""
    table = np.array([[c[f] for f in FEATURES] for c in map(counts, texts)], dtype=float).reshape(-1, len(FEATURES))
    return np.column_stack([table, *tokens])


def length_match(lengths: Sequence[int], items: Sequence[str]) -> dict[str, Any]:
    """How well an item's texts match in length ([N] counts, words or tokens): the share of within-item
    pairs of equal length, the share of items whose texts lie within one of each other, and the
    items beyond (with their lengths)."""
    by_item: dict[str, list[int]] = {}
    for item, n in zip(items, lengths, strict=True):
        by_item.setdefault(item, []).append(int(n))
    pairs = [a == b for ns in by_item.values() for i, a in enumerate(ns) for b in ns[i + 1:]]
    beyond = {item: ns for item, ns in by_item.items() if max(ns) - min(ns) > 1}
    return {"equal_pairs": float(np.mean(pairs)) if pairs else float("nan"),
            "items_within_one": 1 - len(beyond) / len(by_item), "beyond": beyond}
