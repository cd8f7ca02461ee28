"""The question families that Benjamini-Hochberg corrects within, and the correction itself.

A family is one question asked many times (of every layer, position, head, depth or model pair).
Every "significant" count in the result files is after Benjamini-Hochberg within its family
(statsmodels ``multipletests``, ``fdr_bh``): a test is significant where its adjusted p <= alpha.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from statsmodels.stats.multitest import multipletests

PATCHING = ("per model: all residual layer x position cells (identity cells excluded), single heads and the "
            "joint patch")
ALIGNMENT = {
    "texts_alike": "Do the two models represent these texts alike? (raw activations)",
    "emotion_alike": "Do they represent what varies inside a scenario alike? (item-centred activations; label-free, "
                     "so emotion and frame template together)",
    "emotion_specific": "Is their emotion structure the same? (tests that read the emotion labels)",
}
CORRECTION = "Benjamini-Hochberg (statsmodels multipletests, fdr_bh), significant where the adjusted p <= alpha"


def bh(pvalues: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(adjusted p, significant) over one family; NaN entries (no test) stay NaN, not significant, not counted."""
    pvalues = np.asarray(pvalues, float)
    adjusted, reject = np.full(len(pvalues), np.nan), np.zeros(len(pvalues), bool)
    ok = np.isfinite(pvalues)
    if ok.any():
        reject[ok], adjusted[ok] = multipletests(pvalues[ok], alpha=alpha, method="fdr_bh")[:2]
    return adjusted, reject


def pool(tables: Sequence[dict[str, np.ndarray]], alpha: float) -> int:
    """One family of every table's ``p_perm`` (any shapes): add ``p_bh`` and ``significant`` to each table;
    return the number of significant tests."""
    adjusted, reject = bh(np.concatenate([np.ravel(t["p_perm"]) for t in tables]), alpha)
    start = 0
    for t in tables:
        size, shape = np.size(t["p_perm"]), np.shape(t["p_perm"])
        t["p_bh"], t["significant"] = (a[start:start + size].reshape(shape) for a in (adjusted, reject))
        start += size
    return int(reject.sum())
