"""Robustness of the probes to the emotion words: fit on ordinary texts, tested on explicit texts with them masked.

Method. The activations job runs the explicit prompts once more with every emotion word replaced by a
neutral placeholder (:mod:`emolens.data.masking`). The probe of the decoding test (a ridge classifier on
standardised last-token activations, the decoding test of :mod:`emolens.phases.vectors`) is fitted per layer on
the ordinary (unmasked) prompts of the training folds, the same frame-grouped folds as every probe, and
tested on the held-out fold's explicit prompts twice: as written and masked. The drop (unmasked minus
masked accuracy, paired on the same prompts) has a simultaneous 95% band over layers from the two-stage
bootstrap (frames, then items); masked accuracy is tested against chance with the decoding test's null
(labels permuted by frame, the whole fit recomputed; ``p_fwer`` family-wise over layers). Neutral explicit
texts name no emotion and stay unmasked, so the drop comes from the other emotions' prompts, and the accuracy on
the prompts that lost a word alone (``*_changed``) is the sharper number: the pooled one keeps the neutral ones.

Inputs: the activations' ``masked`` part and the probes' folds. Output: the ``masked`` entry of the vectors file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emolens.stats.probes import ridge_classify
from emolens.stats.resampling import (
    frame_label_permutations,
    group_sums,
    item_frames,
    max_statistic_pvalues,
    perm_pvalues,
    simultaneous_band,
    two_stage_weights,
)


def _mean(hits: np.ndarray) -> np.ndarray:
    """[S, n] hits -> [S] accuracy, NaN where n = 0."""
    return hits.mean(1) if hits.shape[1] else np.full(len(hits), np.nan)


def masked_test(x: np.ndarray, masked: dict[str, Any], labels: Sequence[str], frames: Sequence[str],
                items: Sequence[str], fold: np.ndarray, n_perm: int, n_boot: int, seed: int,
                ridge: float = 1.0) -> dict[str, Any]:
    """Accuracy per layer of the ridge probe fitted on unmasked training folds of x [N, S, d], on the held-out
    explicit prompts unmasked (x[rows]) and masked (masked["last"] [M, S, d], rows masked["rows"] [M]), the paired
    drop with its band, and the masked accuracy's permutation p against labels permuted by frame."""
    rows = np.asarray(masked["rows"])
    xm = np.asarray(masked["last"], dtype=np.float64)
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    y = y.ravel()
    onehot = np.eye(len(classes))[y]  # [N, C]
    y_null = frame_label_permutations(y, frames, n_perm, len(classes), np.random.default_rng(seed))  # [n_perm, N]
    onehot_null = np.eye(len(classes))[y_null]  # [n_perm, N, C]
    n_sites = x.shape[1]
    hit_u, hit_m = np.zeros((n_sites, len(rows)), bool), np.zeros((n_sites, len(rows)), bool)
    null = np.zeros((n_perm, n_sites))
    for s in range(n_sites):
        for k in np.unique(fold):
            tr, pos = np.flatnonzero(fold != k), np.flatnonzero(fold[rows] == k)
            if not len(pos):
                continue
            te = rows[pos]
            both = np.concatenate([x[te, s], xm[pos, s]])  # [2 n_te, d]: unmasked, then masked
            pred, pred_null = ridge_classify(x[tr, s], both, onehot[tr], onehot_null[:, tr], ridge)
            hit_u[s, pos], hit_m[s, pos] = pred[:len(pos)] == y[te], pred[len(pos):] == y[te]
            null[:, s] += (pred_null[:, len(pos):] == y_null[:, te]).sum(-1)  # the masked prompts' null
    null /= len(rows)
    masked_acc = hit_m.mean(1)
    diff = hit_u.astype(float) - hit_m.astype(float)  # [S, M]
    its = np.asarray(items)[rows]
    item_sum, item_n = group_sums(diff.T, np.ones(len(rows)), its)  # [I, S], [I]
    w = two_stage_weights(item_frames(its, np.asarray(frames)[rows]), n_boot, np.random.default_rng([seed, 5]))
    low, high, _ = simultaneous_band(diff.mean(1), (w @ item_sum) / (w @ item_n)[:, None])
    truth = y[rows]
    changed = np.asarray(masked["changed"], bool)  # the prompts that named their emotion (not neutral ones)
    return {"probe": "the decoding test's ridge probe, fitted on the unmasked prompts of the training folds",
            "placeholder": masked["placeholder"], "n_prompts": len(rows),
            "n_changed": int(np.sum(masked["changed"])), "emotions": classes.tolist(),
            "accuracy_unmasked": hit_u.mean(1), "accuracy_masked": masked_acc,
            "accuracy_unmasked_by_emotion": np.stack([hit_u[:, truth == c].mean(1) for c in range(len(classes))], 1),
            "accuracy_masked_by_emotion": np.stack([hit_m[:, truth == c].mean(1) for c in range(len(classes))], 1),
            "accuracy_unmasked_changed": _mean(hit_u[:, changed]), "accuracy_masked_changed": _mean(hit_m[:, changed]),
            "drop": diff.mean(1), "drop_band_low": low, "drop_band_high": high, "chance": 1 / len(classes),
            "null_mean": null.mean(0), "null_q95": np.quantile(null, 0.95, axis=0), "n_perm": n_perm,
            "p_perm": perm_pvalues(masked_acc, null, tol=1e-12),
            "p_fwer": max_statistic_pvalues(masked_acc, null, tol=1e-12)}
