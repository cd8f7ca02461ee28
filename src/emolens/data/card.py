"""The dataset card: what a dataset's texts give away about the emotion before any model reads them.

For any dataset (the built-in one or a user's JSONL, of any emotions: its own, in
:func:`emolens.emotion_order`): its frames per emotion and register, how minimal its items are
(words per text, items within one word, equal token lengths under each tokenizer given, word edit
distance between an item's texts), the surface cues per emotion (pronouns, negation, punctuation,
time words) with their largest difference, the surface and lexical baselines with frames held out,
and the implicit texts that contain an emotion stem or formula (:func:`emolens.data.dataset.emotion_cues`).
``emolens dataset describe`` prints it; the workflow writes it beside the dataset and the findings
quote it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from itertools import combinations
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.data.dataset import REGISTERS, cue_hits, emotion_cues, surface_accuracy
from emolens.data.surface import FEATURES, counts, length_match, token_counts, words
from emolens.io import provenance
from emolens.stats.probes import lexical_model
from emolens.stats.resampling import frame_groups, grouped_folds, out_of_fold

SCHEMA = "emolens.dataset_card/1"


def edit_distance(a: list[str], b: list[str]) -> int:
    """Word-level Levenshtein distance: insertions, deletions and substitutions turning ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, wa in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, wb in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wa != wb))
    return row[-1]


def pair_distances(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean word edit distance between two emotions' texts of one item, over the longer text, per emotion pair."""
    by_item: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for r in records:
        by_item[r["item_id"]][r["emotion"]] = words(r["text"])
    out = {}
    for a, b in combinations(emotion_order(r["emotion"] for r in records), 2):
        d = [edit_distance(t[a], t[b]) / max(len(t[a]), len(t[b]), 1) for t in by_item.values() if a in t and b in t]
        out[f"{a}-{b}"] = float(np.mean(d)) if d else float("nan")
    return out


def _by_emotion(values: np.ndarray, emotions: np.ndarray) -> dict[str, float]:
    return {e: float(values[emotions == e].mean()) for e in emotion_order(emotions) if (emotions == e).any()}


def _largest_difference(means: Mapping[str, float]) -> float:
    return max(means.values()) - min(means.values()) if means else float("nan")


def lexical_accuracy(records: list[dict[str, Any]], seed: int = 0, folds: int = 5) -> dict[str, float]:
    """The lexical baseline (:func:`emolens.stats.probes.lexical_model`) with frames held out, overall and per
    register."""
    labels = np.array([r["emotion"] for r in records])
    texts = np.array([r["text"] for r in records], dtype=object)
    hits = out_of_fold(lexical_model(seed), texts, labels, grouped_folds(frame_groups(records), folds)) == labels
    registers = np.array([r.get("register") for r in records])
    return {"all": float(hits.mean())} | {g: float(hits[registers == g].mean()) for g in REGISTERS
                                           if (registers == g).any()}


def describe(records: list[dict[str, Any]], tokenizers: Mapping[str, Any] | None = None,
             seed: int = 0, folds: int = 5) -> dict[str, Any]:
    """The card of a dataset: see the module docstring; ``tokenizers`` maps a name to a Hugging Face tokenizer."""
    started = time.time()
    emotions = np.array([r["emotion"] for r in records])
    order = emotion_order(emotions)
    registers = np.array([r.get("register") or "all" for r in records])
    items, frames = [r["item_id"] for r in records], frame_groups(records)
    texts = [r["text"] for r in records]
    tokens = {name: token_counts(texts, tok) for name, tok in (tokenizers or {}).items()}
    table = {f: np.array([c[f] for c in map(counts, texts)], dtype=float) for f in FEATURES}
    per_register: dict[str, Any] = {}
    for g in sorted(set(registers.tolist())):
        in_g = registers == g
        cues = {f: _by_emotion(table[f][in_g], emotions[in_g]) for f in FEATURES}
        per_register[g] = {
            "frames": {e: len({f for f, keep in zip(frames, in_g & (emotions == e), strict=True) if keep})
                       for e in order},
            "mean": cues, "largest_difference": {f: _largest_difference(m) for f, m in cues.items()}}
    implicit = [r for r in records if r.get("register") == "implicit"]
    cues = emotion_cues(order)
    return {
        "schema": SCHEMA, "emotions": list(order), "n_prompts": len(records), "n_items": len(set(items)),
        "n_frames": len(set(frames)),
        "registers": per_register,
        "words": length_match(table["words"].astype(int), items),
        "tokens": {name: length_match(n, items) for name, n in tokens.items()},
        "edit_distance": pair_distances(records),
        "surface_accuracy": surface_accuracy(records, list(tokens.values()), seed=seed, folds=folds),
        "lexical_accuracy": lexical_accuracy(records, seed=seed, folds=folds),
        "implicit_with_cues": sum(bool(cue_hits(r["text"], cues)) for r in implicit),
        "provenance": provenance({"seed": seed, "folds": folds}, started),
    }


def render(card: Mapping[str, Any]) -> str:
    """The card as Markdown."""
    def f(x: float) -> str:
        return f"{x:.2f}"

    emotions = card["emotions"]
    lines = [f"{card['n_prompts']} prompts, {card['n_items']} items, {card['n_frames']} frames; "
             f"chance {f(1 / len(emotions))}.", "",
             "| register | " + " | ".join(emotions) + " | largest difference |", "|---|" + "---|" * (len(emotions) + 1)]
    for g, reg in card["registers"].items():
        lines.append(f"| {g}: frames | " + " | ".join(str(reg["frames"][e]) for e in emotions) + " | |")
        for feature in FEATURES:
            means = " | ".join(f(reg["mean"][feature].get(e, np.nan)) for e in emotions)
            lines.append(f"| {g}: {feature.replace('_', ' ')} | {means} | {f(reg['largest_difference'][feature])} |")
    words_match = card["words"]
    lines += ["", f"- items whose texts lie within one word: {f(words_match['items_within_one'])} "
                  f"(pairs of equal word count: {f(words_match['equal_pairs'])})"]
    for name, match in card["tokens"].items():
        lines.append(f"- {name}: pairs of equal token length {f(match['equal_pairs'])}, items within one token "
                     f"{f(match['items_within_one'])}")
    lines.append("- word edit distance within items (over the longer text): "
                 + ", ".join(f"{pair} {f(d)}" for pair, d in card["edit_distance"].items()))
    for kind in ("surface", "lexical"):
        lines.append(f"- {kind} baseline, frames held out: "
                     + ", ".join(f"{g} {f(a)}" for g, a in card[f"{kind}_accuracy"].items()))
    lines.append(f"- implicit texts with an emotion stem or formula: {card['implicit_with_cues']}")
    return "\n".join(lines)
