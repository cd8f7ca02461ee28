"""Phase 3, emotion vectors, subspaces and linear probes, per layer.

Method. At every residual index, an emotion's vector is the mean last-token activation of its
prompts minus the mean of all other prompts. A cross-validated multinomial logistic probe
(folds grouped by ``item_id``, so no scenario is seen in training and test) measures how linearly
decodable the emotion is. Four class means span at most three dimensions, so the subspace is
taken from the item-centred activations instead: subtracting each scenario's mean over its
emotions leaves the variation the emotion explains, whose principal directions (PCA) give an
orthonormal basis of up to ``k_max`` dimensions, with the share of that variance each explains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from emolens import EMOTIONS
from emolens.io import load_pickle, provenance, save_pickle

log = logging.getLogger(__name__)


def emotion_vectors(x: np.ndarray, emotions: Sequence[str]) -> np.ndarray:
    """[N, S, d] activations -> [4, S, d]: mean of each emotion minus the mean of the others."""
    labels = np.asarray(emotions)
    return np.stack([x[labels == e].mean(0) - x[labels != e].mean(0) for e in EMOTIONS])


def item_centred(x: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
    """[N, ..., d] activations minus their scenario's mean: what varies with the emotion."""
    _, inverse = np.unique(np.asarray(item_ids), return_inverse=True)
    sums = np.zeros((inverse.max() + 1, *x.shape[1:]))
    np.add.at(sums, inverse, x)
    counts = np.bincount(inverse).reshape(-1, *[1] * (x.ndim - 1))
    return x - (sums / counts)[inverse]


def subspace(xc: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k principal directions [k, d] of item-centred activations [N, d] and their variance shares."""
    _, s, vt = np.linalg.svd(xc - xc.mean(0), full_matrices=False)
    var = s**2
    k = min(k_max, vt.shape[0])
    return vt[:k], var[:k] / max(var.sum(), 1e-30)


def probe_accuracy(x: np.ndarray, emotions: Sequence[str], item_ids: Sequence[str], folds: int,
                   seed: int) -> float:
    """Cross-validated accuracy of a standardised multinomial logistic probe, folds grouped by item."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    scores = cross_val_score(probe, x, np.asarray(emotions), groups=np.asarray(item_ids),
                             cv=GroupKFold(n_splits=folds))
    return float(scores.mean())


def run(activations: str | Path, vectors_out: str | Path, subspaces_out: str | Path, *, k_max: int,
        folds: int, seed: int) -> None:
    """Load one model's activations; save its emotion vectors, probe accuracies and subspaces."""
    started = time.time()
    act = load_pickle(activations, schema="emolens.activations/1")
    x = act["resid"]["last"].astype(np.float64)  # [N, L+1, d]
    emotions, items = act["emotions"], act["item_ids"]
    n_sites = x.shape[1]
    settings = {"k_max": k_max, "folds": folds, "seed": seed}
    name = act["provenance"].get("model")
    accuracy = np.array([probe_accuracy(x[:, s], emotions, items, folds, seed)
                         for s in tqdm(range(n_sites), desc=f"probes {name}")])
    xc = item_centred(x, items)
    bases, ratios = zip(*(subspace(xc[:, s], k_max) for s in range(n_sites)), strict=True)
    common = {"emotions": list(EMOTIONS), "n_layers": act["n_layers"], "d_model": act["d_model"],
              "quantization": act["quantization"]}
    save_pickle({"schema": "emolens.vectors/1", "vectors": emotion_vectors(x, emotions).astype(np.float32),
                 "probe_accuracy": accuracy, **common,
                 "provenance": provenance(settings, started, model=name)}, vectors_out)
    k = min(len(b) for b in bases)
    save_pickle({"schema": "emolens.subspaces/1",
                 "basis": np.stack([b[:k] for b in bases]).astype(np.float32),  # [L+1, k, d]
                 "explained_variance_ratio": np.stack([r[:k] for r in ratios]), **common,
                 "provenance": provenance(settings, started, model=name)}, subspaces_out)
    log.info("wrote %s and %s; best probe accuracy %.3f at index %d", vectors_out, subspaces_out,
             accuracy.max(), int(accuracy.argmax()))
