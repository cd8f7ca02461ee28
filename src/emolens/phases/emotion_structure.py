"""Emotion structure of two models, compared under frame-level label permutations.

Methods. On item-centred activations, with a ridge map from a's space to b's (fit on the fit half's
paired raw activations; it reads no label, so it is fit once). Transfer: cosine between a's fit-half
emotion vectors (mean of one emotion minus mean of the others) carried through the map and b's
held-out-half vectors, mean over emotions. Subspace: mean cosine of the principal angles between the
span of a's fit-half emotion means carried through the map and the span of b's held-out emotion
means (n - 1 dimensions: n means; three for the built-in four). RSA, cross-validated: Pearson
correlation of the n(n - 1) / 2 distances between the n emotion means of a on one half and of b on the
other half, averaged over both assignments of the halves. The halves hold different items, so with
labels that carry nothing every one of these is near its chance level. All are functions of n x n
inner products of emotion means,
which are quadratic forms of the prompts' Gram matrices: exact at any width and vectorised over every
labelling (the observed one and those permuted by frame), each recomputed from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.stats.geometry import item_centred
from emolens.stats.resampling import frame_label_permutations, with_observed
from emolens.stats.similarity import fit_linear_map


def label_codes(emotions: Sequence[str]) -> np.ndarray:
    """Emotion names -> indices 0..n_emotions - 1 into their :func:`emolens.emotion_order`."""
    order = emotion_order(emotions)
    return np.array([order.index(e) for e in emotions])


def permuted_labels(codes: np.ndarray, frames: Sequence[Any], n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm + 1, n] labellings: row 0 the observed labels (codes 0..C - 1, every one present), then the labels
    permuted by frame (one permutation of the emotions per frame, applied to all its items)."""
    return with_observed(codes, frame_label_permutations(codes, frames, n_perm, int(codes.max()) + 1, rng))


def class_mean_weights(labels: np.ndarray, n_emotions: int) -> np.ndarray:
    """[P, n] label indices -> [P, n, n_emotions] weights whose column e averages the prompts labelled e."""
    onehot = (labels[..., None] == np.arange(n_emotions)).astype(np.float64)
    return onehot / np.maximum(onehot.sum(-2, keepdims=True), 1.0)


def _quad(g: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """wx^T g wy for every labelling: [P, C, C] inner products of the C class means from prompt inner products g."""
    p, ny, c = wy.shape
    gw = (g @ wy.transpose(1, 0, 2).reshape(ny, p * c)).reshape(len(g), p, c)  # [nx, P, C]: one GEMM
    return np.matmul(wx.transpose(0, 2, 1), gw.transpose(1, 0, 2))  # [P, C, nx] @ [P, nx, C]


@dataclass(frozen=True)
class EmotionGrams:
    """C x C inner products of the C emotion means of item-centred activations, for P labellings (row 0 observed).

    ``a_fit``, ``a_test``: a's means in a's space on each half; ``b_fit``, ``b_test``: b's, in b's
    space; ``mm``: a's fit-half means carried through the map, with themselves; ``mb``: the same with
    b's held-out means. Everything label-dependent in phase 4 and in k is a function of these.
    """

    a_fit: np.ndarray  # [P, C, C]
    a_test: np.ndarray
    b_fit: np.ndarray
    b_test: np.ndarray
    mm: np.ndarray
    mb: np.ndarray
    n_fit: np.ndarray  # [P, C] prompts per emotion in the fit half, per labelling
    n_test: np.ndarray
    mapped_var: float  # mean squared norm of a's mapped item-centred fit-half prompts (reads no label)
    b_test_var: float  # mean squared norm of b's item-centred held-out prompts (reads no label)


def emotion_grams(ca: np.ndarray, cb: np.ndarray, mapped_fit: np.ndarray, split: tuple[np.ndarray, np.ndarray],
                  labels: np.ndarray) -> EmotionGrams:
    """Class-mean inner products of item-centred ca [n, da], cb [n, db] under labels [P, n] (codes 0..C - 1).

    ``mapped_fit`` [n_fit, db]: a's item-centred fit-half activations carried into b's space.
    """
    fit, test = split
    c = int(labels.max()) + 1  # the emotions
    wf, wt = class_mean_weights(labels[:, fit], c), class_mean_weights(labels[:, test], c)  # [P, n_half, C]
    af, at, bf, bt = ca[fit], ca[test], cb[fit], cb[test]
    gm, gb = mapped_fit @ mapped_fit.T, bt @ bt.T
    return EmotionGrams(
        a_fit=_quad(af @ af.T, wf, wf), a_test=_quad(at @ at.T, wt, wt),
        b_fit=_quad(bf @ bf.T, wf, wf), b_test=_quad(gb, wt, wt),
        mm=_quad(gm, wf, wf), mb=_quad(mapped_fit @ bt.T, wf, wt),
        n_fit=(labels[:, fit, None] == np.arange(c)).sum(1),
        n_test=(labels[:, test, None] == np.arange(c)).sum(1),
        mapped_var=float(np.trace(gm) / len(gm)), b_test_var=float(np.trace(gb) / len(gb)))


def label_structure(xa: np.ndarray, xb: np.ndarray, items: Sequence[Any], split: tuple[np.ndarray, np.ndarray],
                    labels: np.ndarray, ridge: float) -> EmotionGrams:
    """Item-centre one matched depth xa [n, da], xb [n, db], fit the map on the fit half, and return the
    emotion-mean inner products under every labelling in labels [P, n]."""
    ca, cb = item_centred(xa, items), item_centred(xb, items)
    lmap = fit_linear_map(xa[split[0]], xb[split[0]], ridge)
    return emotion_grams(ca, cb, lmap.directions(ca[split[0]]), split, labels)


def _vector_transform(counts: np.ndarray) -> np.ndarray:
    """[P, C] class counts -> [P, C, C] T with T @ means = emotion vectors (mean of one emotion minus the
    mean of all others)."""
    t = -counts[..., None, :] / np.maximum(counts.sum(-1)[..., None, None] - counts[..., :, None], 1)
    eye = np.eye(counts.shape[-1], dtype=bool)
    return np.where(eye, 1.0, t)


def transfer_cosines(e: EmotionGrams) -> np.ndarray:
    """[P, C] cosine of a's mapped fit-half emotion vectors with b's held-out vectors, per emotion."""
    tf, tt = _vector_transform(e.n_fit), _vector_transform(e.n_test)
    cross = np.diagonal(tf @ e.mb @ np.swapaxes(tt, -1, -2), axis1=-2, axis2=-1)
    norm_a = np.diagonal(tf @ e.mm @ np.swapaxes(tf, -1, -2), axis1=-2, axis2=-1)
    norm_b = np.diagonal(tt @ e.b_test @ np.swapaxes(tt, -1, -2), axis1=-2, axis2=-1)
    return cross / np.sqrt(np.maximum(norm_a * norm_b, 1e-300))


def orthonormal_coefficients(g: np.ndarray, q: int) -> np.ndarray:
    """[P, C, C] Gram M M^T of C means -> [P, q, C] c with rows of c @ M orthonormal: M's top-q principal axes."""
    lam, u = np.linalg.eigh(g)  # ascending
    lam, u = lam[..., ::-1][..., :q], u[..., ::-1][..., :q]  # [P, q], [P, C, q]
    keep = lam > 1e-12 * np.maximum(lam[..., :1], 1e-300)  # a rank-deficient structure has fewer axes
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    return np.swapaxes(u, -1, -2) * scale[..., None]


def subspace_cosines(e: EmotionGrams, q: int | None = None) -> np.ndarray:
    """[P, q] cosines of the principal angles between the mapped span of a's fit-half emotion means and
    the span of b's held-out emotion means (descending); q defaults to n_emotions - 1, all the means span."""
    q = e.n_fit.shape[-1] - 1 if q is None else q
    ca, cb = orthonormal_coefficients(e.mm, q), orthonormal_coefficients(e.b_test, q)
    return np.clip(np.linalg.svd(ca @ e.mb @ np.swapaxes(cb, -1, -2), compute_uv=False), 0.0, 1.0)


def _mean_distances(g: np.ndarray) -> np.ndarray:
    """[P, C, C] Gram of the emotion means -> [P, C(C - 1) / 2] their pairwise Euclidean distances (upper triangle)."""
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


# --- RDMs over emotion x frame cells ------------------------------------------------------------------

@dataclass(frozen=True)
class Cells:
    """The emotion x frame cells of a design, each seen in two independent halves of its frame's items.

    A frame's items are dealt alternately (seeded) to half 0 and half 1, so every cell of a frame with two
    items or more has a pattern in each half; a frame with one item has no cell (``index`` -1).
    """

    index: np.ndarray  # [n] cell of each prompt, -1 for none
    half: np.ndarray  # [n] 0 or 1: the item half of each prompt
    first: np.ndarray  # [n_cells] one prompt of each cell (a cell's prompts share frame and label)
    keys: np.ndarray  # [n_cells] frame code * n_emotions + emotion code of each cell, ascending
    n_emotions: int


def emotion_frame_cells(codes: np.ndarray, items: Sequence[Any], frames: Sequence[Any], seed: int) -> Cells:
    """Cells (frame, emotion) of the prompts with emotion ``codes`` [n], items split in halves within frames."""
    items, frames, codes = np.asarray(items), np.asarray(frames), np.asarray(codes)
    rng, half = np.random.default_rng(seed), np.zeros(len(items), int)
    keep = np.zeros(len(items), bool)
    for f in np.unique(frames):
        own = np.unique(items[frames == f])
        if len(own) < 2:
            continue
        for rank, item in enumerate(rng.permutation(own)):
            half[items == item] = rank % 2
        keep[frames == f] = True
    n_emotions = int(codes.max()) + 1
    raw = np.where(keep, np.unique(frames, return_inverse=True)[1].ravel() * n_emotions + codes, -1)
    present = np.unique(raw[keep])
    index = np.where(keep, np.searchsorted(present, raw), -1)
    return Cells(index, half, np.array([np.flatnonzero(index == c)[0] for c in range(len(present))], int),
                 present, n_emotions)


def cv_rdm(x: np.ndarray, cells: Cells) -> np.ndarray:
    """[n_cells, n_cells] cross-validated squared distances of the cells' mean patterns of x [n, d]:
    (a_i - a_j) . (b_i - b_j) with a, b the two item halves' means, unbiased for the squared distance."""
    n_cells = len(cells.first)
    means = []
    for h in (0, 1):
        rows = (cells.index >= 0) & (cells.half == h)
        w = np.zeros((n_cells, len(x)))
        w[cells.index[rows], np.flatnonzero(rows)] = 1.0
        means.append(w @ x / np.maximum(w.sum(1, keepdims=True), 1.0))  # [n_cells, d]
    g = means[0] @ means[1].T  # [n_cells, n_cells]
    d = np.diagonal(g)
    return d[:, None] + d[None, :] - g - g.T


def cell_permutations(cells: Cells, labels: np.ndarray) -> np.ndarray:
    """[P, n_cells] sigma for each labelling of labels [P, n] (permuted by frame): under labelling p, cell c of the
    observed order holds the pattern of observed cell sigma[p, c] (emotions swapped inside the frame)."""
    frame_key = cells.keys - labels[0, cells.first]  # [n_cells]: each cell's frame code * n_emotions
    target = np.searchsorted(cells.keys, frame_key[None, :] + labels[:, cells.first])  # [P, n_cells]: where it goes
    sigma = np.empty_like(target)
    np.put_along_axis(sigma, target, np.arange(len(cells.first))[None, :].repeat(len(labels), 0), axis=1)
    return sigma


def rdm_spearman(rdm_a: np.ndarray, rdm_b: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """[P] Spearman rho between a's RDM and b's with its cells relabelled by each sigma [P, n_cells] (row 0
    observed). b's ranks are computed once: a relabelling permutes the same off-diagonal entries."""
    from scipy.stats import rankdata

    iu = np.triu_indices(len(rdm_a), 1)
    ra = rankdata(rdm_a[iu])
    rb = np.zeros_like(rdm_b)
    rb[iu] = rankdata(rdm_b[iu])
    rb = rb + rb.T
    perm_b = np.stack([rb[s[iu[0]], s[iu[1]]] for s in sigma])  # [P, n_pairs]
    return _pearson(ra[None, :], perm_b)
