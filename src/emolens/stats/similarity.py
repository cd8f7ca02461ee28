"""Representational similarity of two models on the same prompts, and its permutation nulls.

Methods. Linear CKA and debiased CKA (Kornblith et al. 2019; unbiased HSIC of Song et al. 2012 via
U-centred Gram matrices, as in Nguyen et al. 2021), mutual k-nearest-neighbour overlap (cosine after
centring), and orthogonal Procrustes (one global scale) between PCA scores truncated to a common k,
PCA and rotation fit on the fit half and R^2 scored on the held-out half. Each null shuffles the
prompt correspondence (across all prompts, or by given permutations such as within items): for CKA
by permuting the indices of one centred Gram, computed once; for k-NN by relabelling one neighbour
table. Also here: the ridge map from one model's width to the other's (dual form, so any widths) with
its held-out R^2, principal angles between spans, and the Spearman RSA of two sets of emotion
vectors. None of these reads an emotion label; the label tests are in :mod:`emolens.phases.emotion_structure`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import orthogonal_procrustes
from scipy.stats import spearmanr

from emolens.stopwatch import charged

# --- permutations ---------------------------------------------------------------------------------------

Perms = int | np.ndarray  # a number of fresh shuffles of all prompts, or given permutations [n_perm, n]


def _permutations(n: int, perms: Perms, rng: np.random.Generator) -> list[np.ndarray]:
    return list(perms) if isinstance(perms, np.ndarray) else [rng.permutation(n) for _ in range(perms)]


# --- CKA ------------------------------------------------------------------------------------------

def center_gram(g: np.ndarray) -> np.ndarray:
    """Double-centre a Gram matrix (H G H): the centring of linear CKA."""
    g = g - g.mean(0, keepdims=True)  # [n, n]
    return g - g.mean(1, keepdims=True)


def u_center_gram(g: np.ndarray) -> np.ndarray:
    """U-centre a Gram matrix (Szekely & Rizzo 2014); inner products of U-centred Grams are unbiased HSIC."""
    n = g.shape[0]
    g = g.copy()
    np.fill_diagonal(g, 0.0)
    row = g.sum(0) / (n - 2)  # [n]
    u = g - row[:, None] - row[None, :] + g.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0.0)
    return u


def gram_cka(gx: np.ndarray, gy: np.ndarray) -> float:
    """CKA of two already-centred Gram matrices: their normalised Frobenius inner product."""
    return float((gx * gy).sum() / np.sqrt((gx * gx).sum() * (gy * gy).sum()))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same n prompts (any widths)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)  # [n, dx], [n, dy]
    return gram_cka(center_gram(x @ x.T), center_gram(y @ y.T))


def debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased linear CKA (unbiased HSIC): near 0 for unrelated representations even when d >> n."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return gram_cka(u_center_gram(x @ x.T), u_center_gram(y @ y.T))


@charged("statistics")
def gram_permutation_null(gx: np.ndarray, gy: np.ndarray, perms: Perms, rng: np.random.Generator) -> np.ndarray:
    """CKA under shuffled prompt correspondence, permuting both indices of one centred Gram (O(n^2) each).

    ``perms``: a number of shuffles of all prompts, or given permutations (e.g. within items). Centring
    commutes with the permutation, so the Grams are centred once; the products run in float32 (about
    1e-6 absolute error, far below the null's spread, and several times faster than float64).
    """
    gx32 = (gx / np.linalg.norm(gx)).astype(np.float32)  # [n, n]
    gy32 = (gy / np.linalg.norm(gy)).astype(np.float32)
    return np.array([np.vdot(gx32, gy32.take(p, axis=0).take(p, axis=1))
                     for p in _permutations(len(gy), perms, rng)], dtype=np.float64)


# --- mutual nearest neighbours -----------------------------------------------------------------------

def knn_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Each prompt's k nearest other prompts by cosine similarity after centring."""
    z = np.asarray(x, np.float64)
    z = z - z.mean(0)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)  # [n, d]
    sim = z @ z.T  # [n, n]
    np.fill_diagonal(sim, -np.inf)
    return np.argpartition(-sim, k - 1, axis=1)[:, :k]  # [n, k]


def knn_overlap(nx: np.ndarray, ny: np.ndarray) -> float:
    """Mean fraction of shared neighbours between two neighbour-index tables."""
    return float((nx[:, :, None] == ny[:, None, :]).any(2).mean())  # [n, k, k] -> [n, k]


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Mutual k-NN alignment: mean overlap fraction of each prompt's k-NN sets in the two spaces."""
    return knn_overlap(knn_indices(x, k), knn_indices(y, k))


@charged("statistics")
def knn_permutation_null(nx: np.ndarray, ny: np.ndarray, perms: Perms, rng: np.random.Generator) -> np.ndarray:
    """k-NN overlap under shuffled correspondence, relabelling y's neighbour table, not recomputing it."""
    # y'[i] = y[p[i]]: y's neighbours of p[i], renamed by the inverse permutation
    return np.array([knn_overlap(nx, np.argsort(p)[ny[p]]) for p in _permutations(len(ny), perms, rng)])


# --- RSA of phase-3 vectors (descriptive) and Procrustes -----------------------------------------------

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def rsa(vec_a: np.ndarray, vec_b: np.ndarray) -> float:
    """Spearman correlation between the upper triangles of the n x n cosine matrices of emotion vectors."""
    iu = np.triu_indices(len(vec_a), 1)
    ca, cb = _unit(vec_a) @ _unit(vec_a).T, _unit(vec_b) @ _unit(vec_b).T  # [n, n]
    return float(spearmanr(ca[iu], cb[iu])[0])


def pca_scores(x: np.ndarray, k: int, train_idx: np.ndarray) -> np.ndarray:
    """All prompts projected on the top-k principal axes of the training prompts (centred on their mean)."""
    mu = x[train_idx].mean(0)
    _, _, vt = np.linalg.svd(x[train_idx] - mu, full_matrices=False)  # vt [min(n, d), d]
    return (x - mu) @ vt[:k].T  # [n, k]


def procrustes_score(xs: np.ndarray, ys: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray) -> float:
    """Held-out R^2 of y's scores predicted by a scaled rotation of x's, both fit on the training prompts."""
    a, b = xs[train_idx], ys[train_idx]  # [n_train, k]
    rot, sv_sum = orthogonal_procrustes(a, b)  # rot [k, k]
    scale = sv_sum / (a * a).sum()
    resid = ys[test_idx] - scale * xs[test_idx] @ rot
    return float(1.0 - (resid**2).sum() / (ys[test_idx] ** 2).sum())


def procrustes_pca(x: np.ndarray, y: np.ndarray, k: int, train_idx: np.ndarray,
                   test_idx: np.ndarray) -> float:
    """Procrustes alignment of PCA-k scores of x and y: fit on train, held-out R^2 on test (1 = same)."""
    return procrustes_score(pca_scores(x, k, train_idx), pca_scores(y, k, train_idx), train_idx, test_idx)


@charged("statistics")
def permutation_null(stat_fn: Callable[[np.ndarray, np.ndarray], float], x: np.ndarray, y: np.ndarray,
                     perms: Perms, rng: np.random.Generator) -> np.ndarray:
    """Statistic under shuffled prompt correspondence (rows of y permuted): measures without a shortcut."""
    return np.array([stat_fn(x, y[p]) for p in _permutations(len(y), perms, rng)])


# --- linear map across widths ------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearMap:
    """Ridge map from a's space to b's, kept in dual form W = Xa^T (Xa Xa^T + lam I)^-1 Xb (rank <= n)."""

    xa: np.ndarray  # [n, da] centred training activations of a
    dual: np.ndarray  # [n, db]
    mean_a: np.ndarray  # [da]
    mean_b: np.ndarray  # [db]

    def directions(self, v: np.ndarray) -> np.ndarray:
        """Carry directions (differences of points, e.g. emotion vectors) from a's space to b's."""
        return (v @ self.xa.T) @ self.dual  # [..., da] -> [..., db]

    def points(self, x: np.ndarray) -> np.ndarray:
        """Predict b's activations from a's."""
        return self.directions(x - self.mean_a) + self.mean_b


def fit_linear_map(xa_train: np.ndarray, xb_train: np.ndarray, ridge: float) -> LinearMap:
    """Ridge regression from a's width to b's; ridge is relative to the mean eigenvalue of a's Gram."""
    mean_a, mean_b = xa_train.mean(0), xb_train.mean(0)
    xa, xb = xa_train - mean_a, xb_train - mean_b  # [n, da], [n, db]
    g = xa @ xa.T  # [n, n]: the dual form costs n^2 d whatever the widths
    lam = ridge * np.trace(g) / len(g)
    dual = np.linalg.solve(g + lam * np.eye(len(g)), xb)
    return LinearMap(xa, dual, mean_a, mean_b)


def map_r2(lmap: LinearMap, xa_test: np.ndarray, xb_test: np.ndarray) -> float:
    """Held-out R^2 of the map's prediction of b's activations (how much of b the map explains)."""
    resid = xb_test - lmap.points(xa_test)
    return float(1.0 - (resid**2).sum() / ((xb_test - lmap.mean_b) ** 2).sum())


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between row spans of a [..., k, d] and b [k2, d]; batched.

    Equal to scipy.linalg.subspace_angles(a.T, b.T) sorted ascending; rows need not be orthonormal.
    """
    qa = np.linalg.qr(np.swapaxes(a, -1, -2))[0]  # [..., d, k]
    qb = np.linalg.qr(b.T)[0]  # [d, k2]
    cos = np.linalg.svd(np.swapaxes(qa, -1, -2) @ qb, compute_uv=False)  # [..., min(k, k2)], descending
    return np.arccos(np.clip(cos, -1.0, 1.0))
