"""The geometry every phase reads activations through: emotion vectors (class-mean differences) and item centring.

Plain NumPy, so the alignment and transfer jobs that need only these do not import the probes' scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emolens import emotion_order


def emotion_vectors(x: np.ndarray, emotions: Sequence[str]) -> np.ndarray:
    """[N, S, d] activations -> [n_emotions, S, d]: mean of each emotion minus the mean of the others, in
    :func:`emolens.emotion_order`."""
    labels = np.asarray(emotions)
    return np.stack([x[labels == e].mean(0) - x[labels != e].mean(0) for e in emotion_order(emotions)])


def item_centred(x: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
    """[N, ..., d] activations minus their scenario's mean: what varies with the emotion."""
    _, inverse = np.unique(np.asarray(item_ids), return_inverse=True)
    sums = np.zeros((inverse.max() + 1, *x.shape[1:]))
    np.add.at(sums, inverse, x)
    counts = np.bincount(inverse).reshape(-1, *[1] * (x.ndim - 1))
    return x - (sums / counts)[inverse]
