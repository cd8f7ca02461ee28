"""The patching metric that stays bounded: clean separation, exclusion, ratio of sums per cell.

Method. A pair's normalised effect (LD_patched - LD_run) / (LD_donor - LD_run) explodes when the
clean model barely separates the two prompts (LD_donor - LD_run near 0), which is common on real
models that read the emotion weakly. So every file keeps each pair's clean *separation*
LD_donor - LD_run; pairs below ``min_separation`` logits are left out of every normalised summary
and counted per emotion contrast; and a cell is summarised by the ratio of sums over the pairs
kept, sum(LD_patched - LD_run) / sum(LD_donor - LD_run), with a 95% BCa bootstrap CI that resamples
frames, then items within frames (all pairs of an item together; :mod:`emolens.stats.resampling`).
Per-pair normalised effects stay in the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any, NamedTuple

import numpy as np

from emolens import emotion_order
from emolens.stats.resampling import frame_groups, ratio_of_sums

MIN_SEPARATION = 1.0  # logits; the config's patching.min_separation default


def contrasts(emotions: Iterable[str]) -> list[str]:
    """Every unordered emotion contrast of the run, n(n - 1) / 2 of n emotions (six of the built-in four)."""
    return [f"{a}-{b}" for a, b in combinations(emotion_order(emotions), 2)]


def contrast(source: str, target: str) -> str:
    """The unordered emotion contrast of a pair, e.g. 'gratitude-anger' (in :func:`emolens.emotion_order`)."""
    a, b = emotion_order((source, target))
    return f"{a}-{b}"


class PairLabels(NamedTuple):
    """Per pair: its item, its frame (the unit of inference) and its emotion contrast."""

    items: list[str]
    frames: list[str]
    contrasts: list[str]


def pair_labels(pair_ids: Sequence[tuple[str, str]], records: Sequence[dict[str, Any]]) -> PairLabels:
    """Each pair's item id, frame (the item where a record has none) and emotion contrast."""
    by_id = {r["id"]: r for r in records}
    frame_of = dict(zip((r["id"] for r in records), frame_groups(list(records)), strict=True))
    return PairLabels([by_id[s]["item_id"] for s, _ in pair_ids], [frame_of[s] for s, _ in pair_ids],
                      [contrast(by_id[s]["emotion"], by_id[t]["emotion"]) for s, t in pair_ids])


def contrast_counts(pair_contrasts: Sequence[str], included: np.ndarray,
                    emotions: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per emotion contrast of the run's ``emotions`` (all of them, zeros included): pairs, pairs kept, pairs
    excluded."""
    labels = np.asarray(pair_contrasts)
    return {c: {"pairs": int((labels == c).sum()), "included": int(((labels == c) & included).sum()),
                "excluded": int(((labels == c) & ~included).sum())} for c in contrasts(emotions)}


def kept_ratio(gain: np.ndarray, separation: np.ndarray, included: np.ndarray) -> np.ndarray:
    """Ratio of sums over the kept pairs, sum(gain [P, ...]) / sum(separation [P]); NaN if none is kept."""
    if not included.any():
        return np.full(np.shape(gain)[1:], np.nan)
    return np.asarray(gain)[included].sum(0) / np.asarray(separation)[included].sum()


def summarise(ld_patched: np.ndarray, ld_run: np.ndarray, ld_donor: np.ndarray, labels: PairLabels,
              min_separation: float, n_boot: int, seed: int, *, emotions: Iterable[str]) -> dict[str, Any]:
    """The bounded summary of patched LDs [P, ...]: separation, kept pairs, ratio of sums and frame CI;
    ``emotions``: the run's (the contrasts counted)."""
    separation = np.asarray(ld_donor, float) - np.asarray(ld_run, float)  # [P]
    included = separation >= min_separation
    keep = np.flatnonzero(included)
    gain = np.asarray(ld_patched, float) - np.reshape(ld_run, (-1,) + (1,) * (np.ndim(ld_patched) - 1))
    if len(keep):
        summary, low, high = ratio_of_sums(gain[keep], separation[keep], [labels.items[i] for i in keep],
                                           [labels.frames[i] for i in keep], n_boot, seed)
    else:  # nothing the clean model separates: no summary, said by the counts
        summary = low = high = np.full(np.shape(ld_patched)[1:], np.nan)
    return {"separation": separation, "included": included, "min_separation": float(min_separation),
            "summary": summary, "ci_low": low, "ci_high": high,
            "ci": "95% BCa two-stage bootstrap (frames, then items within frames) of the ratio of sums over kept "
                  "pairs",
            "n_frames": len({labels.frames[i] for i in keep}), "n_items": len({labels.items[i] for i in keep}),
            "n_pairs_included": len(keep), "contrast_counts": contrast_counts(labels.contrasts, included, emotions)}
