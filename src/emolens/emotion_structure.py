"""Emotion structure of two models, compared under frame-level label permutations.

Methods. On item-centred activations, with a ridge map from a's space to b's (fit on the fit half's
paired raw activations; it reads no label, so it is fit once). Transfer: cosine between a's fit-half
emotion vectors (mean of one emotion minus mean of the others) carried through the map and b's
held-out-half vectors, mean over emotions. Subspace: mean cosine of the principal angles between the
span of a's fit-half emotion means carried through the map and the span of b's held-out emotion
means (three dimensions: four means). RSA, cross-validated: Pearson correlation of the six distances
between the four emotion means of a on one half and of b on the other half, averaged over both
assignments of the halves. The halves hold different items, so with labels that carry nothing every
one of these is near its chance level. All are functions of 4 x 4 inner products of emotion means,
which are quadratic forms of the prompts' Gram matrices: exact at any width and vectorised over every
labelling (the observed one and those permuted by frame), each recomputed from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolens import EMOTIONS
from emolens.resampling import frame_label_permutations, with_observed
from emolens.similarity import fit_linear_map
from emolens.vectors import item_centred


def label_codes(emotions: Sequence[str]) -> np.ndarray:
    """Emotion names -> indices into EMOTIONS; an unknown label is an error."""
    unknown = sorted(set(emotions) - set(EMOTIONS))
    if unknown:
        raise ValueError(f"unknown emotion labels {unknown}; expected {EMOTIONS}")
    return np.array([EMOTIONS.index(e) for e in emotions])


def permuted_labels(codes: np.ndarray, frames: Sequence[Any], n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm + 1, n] labellings: row 0 the observed labels, then the labels permuted by frame (one
    permutation of the emotions per frame, applied to all its items)."""
    return with_observed(codes, frame_label_permutations(codes, frames, n_perm, len(EMOTIONS), rng))


def class_mean_weights(labels: np.ndarray) -> np.ndarray:
    """[P, n] label indices -> [P, n, 4] weights whose column e averages the prompts labelled e."""
    onehot = (labels[..., None] == np.arange(len(EMOTIONS))).astype(np.float64)
    return onehot / np.maximum(onehot.sum(-2, keepdims=True), 1.0)


def _quad(g: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """wx^T g wy for every labelling: [P, 4, 4] inner products of class means from prompt inner products g."""
    p, ny, c = wy.shape
    gw = (g @ wy.transpose(1, 0, 2).reshape(ny, p * c)).reshape(len(g), p, c)  # [nx, P, 4]: one GEMM
    return np.matmul(wx.transpose(0, 2, 1), gw.transpose(1, 0, 2))  # [P, 4, nx] @ [P, nx, 4]


@dataclass(frozen=True)
class EmotionGrams:
    """4 x 4 inner products of emotion means of item-centred activations, for P labellings (row 0 observed).

    ``a_fit``, ``a_test``: a's means in a's space on each half; ``b_fit``, ``b_test``: b's, in b's
    space; ``mm``: a's fit-half means carried through the map, with themselves; ``mb``: the same with
    b's held-out means. Everything label-dependent in phase 4 and in k is a function of these.
    """

    a_fit: np.ndarray  # [P, 4, 4]
    a_test: np.ndarray
    b_fit: np.ndarray
    b_test: np.ndarray
    mm: np.ndarray
    mb: np.ndarray
    n_fit: np.ndarray  # [P, 4] prompts per emotion in the fit half, per labelling
    n_test: np.ndarray
    mapped_var: float  # mean squared norm of a's mapped item-centred fit-half prompts (reads no label)
    b_test_var: float  # mean squared norm of b's item-centred held-out prompts (reads no label)


def emotion_grams(ca: np.ndarray, cb: np.ndarray, mapped_fit: np.ndarray, split: tuple[np.ndarray, np.ndarray],
                  labels: np.ndarray) -> EmotionGrams:
    """Class-mean inner products of item-centred ca [n, da], cb [n, db] under labels [P, n].

    ``mapped_fit`` [n_fit, db]: a's item-centred fit-half activations carried into b's space.
    """
    fit, test = split
    wf, wt = class_mean_weights(labels[:, fit]), class_mean_weights(labels[:, test])  # [P, n_half, 4]
    af, at, bf, bt = ca[fit], ca[test], cb[fit], cb[test]
    gm, gb = mapped_fit @ mapped_fit.T, bt @ bt.T
    return EmotionGrams(
        a_fit=_quad(af @ af.T, wf, wf), a_test=_quad(at @ at.T, wt, wt),
        b_fit=_quad(bf @ bf.T, wf, wf), b_test=_quad(gb, wt, wt),
        mm=_quad(gm, wf, wf), mb=_quad(mapped_fit @ bt.T, wf, wt),
        n_fit=(labels[:, fit, None] == np.arange(len(EMOTIONS))).sum(1),
        n_test=(labels[:, test, None] == np.arange(len(EMOTIONS))).sum(1),
        mapped_var=float(np.trace(gm) / len(gm)), b_test_var=float(np.trace(gb) / len(gb)))


def label_structure(xa: np.ndarray, xb: np.ndarray, items: Sequence[Any], split: tuple[np.ndarray, np.ndarray],
                    labels: np.ndarray, ridge: float) -> EmotionGrams:
    """Item-centre one matched depth xa [n, da], xb [n, db], fit the map on the fit half, and return the
    emotion-mean inner products under every labelling in labels [P, n]."""
    ca, cb = item_centred(xa, items), item_centred(xb, items)
    lmap = fit_linear_map(xa[split[0]], xb[split[0]], ridge)
    return emotion_grams(ca, cb, lmap.directions(ca[split[0]]), split, labels)


def _vector_transform(counts: np.ndarray) -> np.ndarray:
    """[P, 4] class counts -> [P, 4, 4] T with T @ means = emotion vectors (mean of one emotion minus the
    mean of all others)."""
    t = -counts[..., None, :] / np.maximum(counts.sum(-1)[..., None, None] - counts[..., :, None], 1)
    eye = np.eye(counts.shape[-1], dtype=bool)
    return np.where(eye, 1.0, t)


def transfer_cosines(e: EmotionGrams) -> np.ndarray:
    """[P, 4] cosine of a's mapped fit-half emotion vectors with b's held-out vectors, per emotion."""
    tf, tt = _vector_transform(e.n_fit), _vector_transform(e.n_test)
    cross = np.diagonal(tf @ e.mb @ np.swapaxes(tt, -1, -2), axis1=-2, axis2=-1)
    norm_a = np.diagonal(tf @ e.mm @ np.swapaxes(tf, -1, -2), axis1=-2, axis2=-1)
    norm_b = np.diagonal(tt @ e.b_test @ np.swapaxes(tt, -1, -2), axis1=-2, axis2=-1)
    return cross / np.sqrt(np.maximum(norm_a * norm_b, 1e-300))


def orthonormal_coefficients(g: np.ndarray, q: int) -> np.ndarray:
    """[P, 4, 4] Gram M M^T of 4 means -> [P, q, 4] c with rows of c @ M orthonormal: M's top-q principal axes."""
    lam, u = np.linalg.eigh(g)  # ascending
    lam, u = lam[..., ::-1][..., :q], u[..., ::-1][..., :q]  # [P, q], [P, 4, q]
    keep = lam > 1e-12 * np.maximum(lam[..., :1], 1e-300)  # a rank-deficient structure has fewer axes
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    return np.swapaxes(u, -1, -2) * scale[..., None]


def subspace_cosines(e: EmotionGrams, q: int = len(EMOTIONS) - 1) -> np.ndarray:
    """[P, q] cosines of the principal angles between the mapped span of a's fit-half emotion means and
    the span of b's held-out emotion means (descending)."""
    ca, cb = orthonormal_coefficients(e.mm, q), orthonormal_coefficients(e.b_test, q)
    return np.clip(np.linalg.svd(ca @ e.mb @ np.swapaxes(cb, -1, -2), compute_uv=False), 0.0, 1.0)


def _mean_distances(g: np.ndarray) -> np.ndarray:
    """[P, 4, 4] Gram of the emotion means -> [P, 6] their pairwise Euclidean distances (upper triangle)."""
    d = np.diagonal(g, axis1=-2, axis2=-1)
    iu = np.triu_indices(g.shape[-1], 1)
    return np.sqrt(np.maximum((d[..., :, None] + d[..., None, :] - 2 * g)[..., iu[0], iu[1]], 0.0))


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    return np.where(den > 0, (x * y).sum(-1) / np.where(den > 0, den, 1.0), 0.0)


def rsa_cross_validated(e: EmotionGrams) -> np.ndarray:
    """[P] RSA of emotion-mean distances, a on one half and b on the other, mean of both assignments."""
    return 0.5 * (_pearson(_mean_distances(e.a_fit), _mean_distances(e.b_test))
                  + _pearson(_mean_distances(e.a_test), _mean_distances(e.b_fit)))
