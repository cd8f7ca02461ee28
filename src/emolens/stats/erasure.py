"""The length-erasure control: LEACE removes the linear information about a text's length first.

In models with learned absolute positions (GPT-2, GPT-Neo) the residual stream carries the prompt's
length, and a dataset whose emotions differ in length would let a probe read it. LEACE (Belrose et
al. 2023, the ``concept-erasure`` package) finds the least-squares edit of the activations after
which no linear map predicts the concept (here: the text's token and word counts). It is fitted on
the training folds only and applied to both sides, inside the same cross-validation as the probe,
so what a probe still decodes after it is emotion that is not linear in length.
"""

from __future__ import annotations

import numpy as np
import torch
from concept_erasure import LeaceEraser
from sklearn.base import BaseEstimator, TransformerMixin


class ConceptEraser(TransformerMixin, BaseEstimator):
    """A transformer on [N, d + c] inputs whose last ``n_concept`` columns are the concept: fit learns a
    LEACE eraser from them, transform returns the first d columns with the concept erased."""

    def __init__(self, n_concept: int = 1):
        self.n_concept = n_concept

    def fit(self, x: np.ndarray, y: object = None) -> ConceptEraser:
        features, concept = self._split(x)
        self.eraser_ = LeaceEraser.fit(features, concept)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.eraser_(self._split(x)[0]).numpy()

    def _split(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(np.asarray(x, dtype=np.float64))
        return t[:, :-self.n_concept], t[:, -self.n_concept:]


def erased(x: np.ndarray, concept: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """x [N, d] with the concept [N, c] erased by a LEACE eraser fitted on the rows ``fit`` only."""
    both = np.column_stack([x, concept])
    return ConceptEraser(concept.shape[1]).fit(both[fit]).transform(both)

