"""The words of the prompts as a representation: phase 4's lexical reference and its words-controlled measures.

A prompt's words are its TF-IDF word 1-2-grams (the word half of the lexical baseline,
:func:`emolens.stats.probes.word_vectorizer`), vocabulary and weights learned on the fit half's frames only.
The control removes from a model's activations what a ridge map from the words predicts of them, cross-fitted by
the halves: each half's prediction comes from a map fit on the other half's frames, so no prompt's control was
fit on its own frame. What is left is the part of the representation that no linear function of the words,
learned on other scenarios, explains; it reads no emotion label, so every label-permutation null stays valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emolens.stats.probes import word_vectorizer
from emolens.stats.similarity import fit_linear_map


def word_features(texts: Sequence[str], fit: np.ndarray) -> np.ndarray:
    """[n, v] TF-IDF word 1-2-grams of every text, the vocabulary and its weights learned on the ``fit`` rows."""
    vectorizer = word_vectorizer().fit([texts[i] for i in fit])
    return vectorizer.transform(list(texts)).toarray()


def words_partialled(x: np.ndarray, words: np.ndarray, split: tuple[np.ndarray, np.ndarray],
                     ridge: float) -> np.ndarray:
    """x [n, ...] minus its cross-fitted ridge prediction from the words [n, v] (each half predicted by a map fit
    on the other half, :func:`emolens.stats.similarity.fit_linear_map`); the trailing axes are kept."""
    flat = x.reshape(len(x), -1).astype(np.float64)  # [n, L * d]: every layer from one dual solve
    out = np.empty_like(flat)
    for own, other in (split, split[::-1]):
        lmap = fit_linear_map(words[other], flat[other], ridge)
        out[own] = flat[own] - lmap.points(words[own])
    return out.reshape(x.shape)
