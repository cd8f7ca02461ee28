"""The classifiers every accuracy in emolens comes from, so the probe and its baselines differ only in what they read.

The probe and the surface baseline: standardised multinomial logistic regression (on one layer's activations, or on
surface counts of the text), optionally after LEACE erasure of a concept (:mod:`emolens.stats.erasure`). The
lexical baseline: TF-IDF word 1-2-grams and ``char_wb`` 2-5-grams of the text, then logistic regression. The ridge
hat map of the decoding test's probe (:func:`ridge_hat`). scikit-learn is imported when a model is made: a job that
fits no probe (most model jobs) does not pay its second of start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline


def probe_model(seed: int, erase: int = 0) -> Pipeline:
    """The probe: a standardised multinomial logistic regression on one layer's activations; with ``erase``
    > 0, the inputs' last ``erase`` columns are a concept that LEACE erases first (:mod:`emolens.stats.erasure`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from emolens.stats.erasure import ConceptEraser

    steps = [ConceptEraser(erase)] if erase else []
    return make_pipeline(*steps, StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))


def word_vectorizer() -> TfidfVectorizer:
    """A text's words: TF-IDF word 1-2-grams (the lexical baseline's word half and phase 4's words reference)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="word", ngram_range=(1, 2))


def lexical_model(seed: int) -> Pipeline:
    """The lexical baseline: TF-IDF word 1-2-grams and ``char_wb`` 2-5-grams of the text, then a logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline

    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5))
    return make_pipeline(FeatureUnion([("words", word_vectorizer()), ("chars", chars)]),
                         LogisticRegression(max_iter=2000, random_state=seed))


def ridge_hat(xtr: np.ndarray, xte: np.ndarray, lam: float) -> np.ndarray:
    """[n_te, n_tr] map from training targets to ridge predictions on xte, Xte (Xtr^T Xtr + lam I)^-1 Xtr^T,
    solved in the smaller of the primal (width) and dual (prompts) forms: they are equal."""
    if xtr.shape[1] < len(xtr):
        return xte @ np.linalg.solve(xtr.T @ xtr + lam * np.eye(xtr.shape[1]), xtr.T)
    return np.linalg.solve(xtr @ xtr.T + lam * np.eye(len(xtr)), xtr @ xte.T).T


def ridge_classify(xtr: np.ndarray, xte: np.ndarray, onehot: np.ndarray, onehot_null: np.ndarray,
                   ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """The decoding test's probe: a ridge classifier on xtr [n_tr, d] standardised by its own mean and sd, fit to the
    labels onehot [n_tr, C] and to every permuted labelling onehot_null [P, n_tr, C] with one solve (a ridge fit is
    linear in its targets, :func:`ridge_hat`); returns the classes it predicts for xte [n_te, d], [n_te] and
    [P, n_te]."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    lam = max(ridge * float((xtr * xtr).sum()) / len(xtr), 1e-6)  # a constant layer (index 0 of rotary models)
    hat = ridge_hat(xtr, xte, lam)  # [n_te, n_tr]
    mean = onehot.mean(0)
    predicted = (hat @ (onehot - mean) + mean).argmax(-1)
    means = onehot_null.mean(1, keepdims=True)  # [P, 1, C]
    centred = (onehot_null - means).transpose(1, 0, 2).reshape(len(xtr), -1)  # [n_tr, P C]
    scores = (hat @ centred).reshape(len(xte), len(onehot_null), -1).transpose(1, 0, 2) + means  # one GEMM
    return predicted, scores.argmax(-1)
