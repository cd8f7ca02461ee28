"""Cross-model alignment of emotion representations (phase 4).

Methods. Two models a and b read the same prompts; we compare their residual streams at the last
token, layer l of a against layer round(l * Lb / La) of b (matched relative depth), and as a full
layer x layer matrix of linear CKA. Width-free measures: linear CKA and debiased CKA (Kornblith et
al. 2019; the unbiased HSIC of Song et al. 2012 via U-centred Gram matrices, as in Nguyen et al.
2021), mutual k-nearest-neighbour overlap (cosine after centring), RSA (Spearman correlation of the
upper triangles of the two 4x4 cosine matrices of the emotion vectors), and orthogonal Procrustes
(with one global scale) between PCA scores truncated to a common k, with PCA and rotation fit on
one half of the prompts and R^2 scored on the other. Across widths, a ridge map from a's residual
space to b's is fit on the paired activations of the same training half; a's emotion vectors
(training half, phase-3 definition) are carried through it and compared with b's own vectors on
the held-out half (cosine per emotion), and a's emotion subspace is carried through it and
compared with b's (principal angles). Nulls: CKA, kNN and Procrustes shuffle the prompt correspondence (for CKA by
permuting the indices of one centred Gram matrix, computed once); RSA permutes b's four emotion
labels exhaustively (24 orders, so p >= 1/24); transferred vectors and subspaces are compared with
random directions and random subspaces of a's space carried through the same map. The halves are a
seeded split of scenarios (item ids; each holds all four emotions, so the halves stay balanced and
no scenario is in both); p-values are one-sided (alignment greater than the null).

Inputs: activations, emotion vectors and emotion subspaces of both models. Outputs:
``alignment/<a>__<b>.pkl`` (schema ``emolens.alignment/1``) and ``alignment/summary.json``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg import orthogonal_procrustes
from scipy.stats import spearmanr

from emolens import EMOTIONS
from emolens.io import load_pickle, provenance, save_json, save_pickle
from emolens.vectors import emotion_vectors

SCHEMA = "emolens.alignment/1"
MEASURES = ("linear_cka", "debiased_cka", "mutual_knn", "rsa", "procrustes", "transfer_cosine_mean",
            "subspace_mean_cos")


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


def gram_permutation_null(gx: np.ndarray, gy: np.ndarray, n_perm: int,
                          rng: np.random.Generator) -> np.ndarray:
    """CKA under shuffled prompt correspondence, permuting both indices of one centred Gram (O(n^2) each).

    Centring commutes with the permutation, so the Grams are centred once; the products run in float32
    (about 1e-6 absolute error, far below the null's spread, and several times faster than float64).
    """
    gx32 = (gx / np.linalg.norm(gx)).astype(np.float32)  # [n, n]
    gy32 = (gy / np.linalg.norm(gy)).astype(np.float32)
    null = np.empty(n_perm)  # [n_perm]
    for i in range(n_perm):
        p = rng.permutation(len(gy))
        null[i] = np.vdot(gx32, gy32.take(p, axis=0).take(p, axis=1))
    return null


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


def knn_permutation_null(nx: np.ndarray, ny: np.ndarray, n_perm: int,
                         rng: np.random.Generator) -> np.ndarray:
    """k-NN overlap under shuffled correspondence, relabelling y's neighbour table, not recomputing it."""
    null = np.empty(n_perm)
    for i in range(n_perm):
        p = rng.permutation(len(ny))  # y'[i] = y[p[i]]
        null[i] = knn_overlap(nx, np.argsort(p)[ny[p]])
    return null


# --- RSA and Procrustes ------------------------------------------------------------------------------

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def rsa(vec_a: np.ndarray, vec_b: np.ndarray) -> float:
    """Spearman correlation between the upper triangles of the 4x4 cosine matrices of emotion vectors."""
    iu = np.triu_indices(len(vec_a), 1)
    ca, cb = _unit(vec_a) @ _unit(vec_a).T, _unit(vec_b) @ _unit(vec_b).T  # [4, 4]
    return float(spearmanr(ca[iu], cb[iu])[0])


def rsa_label_null(vec_a: np.ndarray, vec_b: np.ndarray) -> np.ndarray:
    """RSA under every reordering of b's emotion labels (exhaustive; includes the identity)."""
    return np.array([rsa(vec_a, vec_b[list(p)]) for p in itertools.permutations(range(len(vec_b)))])


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


def permutation_null(stat_fn: Callable[[np.ndarray, np.ndarray], float], x: np.ndarray, y: np.ndarray,
                     n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """Statistic under shuffled prompt correspondence (rows of y permuted): measures without a shortcut."""
    return np.array([stat_fn(x, y[rng.permutation(len(y))]) for _ in range(n_perm)])


def perm_pvalue(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value (observed greater than the null), never 0."""
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


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


def transfer_vectors(vec_a: np.ndarray, vec_b: np.ndarray, lmap: LinearMap, n_null: int,
                     rng: np.random.Generator) -> dict[str, Any]:
    """Cosine of a's mapped emotion vectors with b's, per emotion and mean, vs mapped random directions."""
    cos = np.sum(_unit(lmap.directions(vec_a)) * _unit(vec_b), axis=1)  # [4]
    rand = lmap.directions(rng.standard_normal((n_null, vec_a.shape[1])))  # [n_null, db]
    null = _unit(rand) @ _unit(vec_b).T  # [n_null, 4]
    return {
        "transfer_cosine": cos,
        "transfer_null_mean": null.mean(0),
        "transfer_null_q95": np.quantile(null, 0.95, axis=0),
        "transfer_p": np.array([perm_pvalue(c, null[:, e]) for e, c in enumerate(cos)]),
        **_with_null("transfer_cosine_mean", float(cos.mean()), null.mean(1)),
    }


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between row spans of a [..., k, d] and b [k2, d]; batched.

    Equal to scipy.linalg.subspace_angles(a.T, b.T) sorted ascending; rows need not be orthonormal.
    """
    qa = np.linalg.qr(np.swapaxes(a, -1, -2))[0]  # [..., d, k]
    qb = np.linalg.qr(b.T)[0]  # [d, k2]
    cos = np.linalg.svd(np.swapaxes(qa, -1, -2) @ qb, compute_uv=False)  # [..., min(k, k2)], descending
    return np.arccos(np.clip(cos, -1.0, 1.0))


def subspace_curve(basis_a: np.ndarray, basis_b: np.ndarray, lmap: LinearMap, n_null: int,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Mean cosine of principal angles between a's mapped top-k axes and b's, for k = 1..k_max, with null.

    The null carries the first k rows of random Gaussian frames of a's space through the same map.
    """
    k_max = min(len(basis_a), len(basis_b))
    mapped = lmap.directions(basis_a[:k_max])  # [k_max, db]
    rand = lmap.directions(rng.standard_normal((n_null, k_max, basis_a.shape[1])))  # [n_null, k_max, db]
    score, null = np.empty(k_max), np.empty((n_null, k_max))
    for k in range(1, k_max + 1):
        score[k - 1] = np.cos(principal_angles(mapped[:k], basis_b[:k])).mean()
        null[:, k - 1] = np.cos(principal_angles(rand[:, :k], basis_b[:k])).mean(-1)
    return {"score": score, "null": null, "angles": principal_angles(mapped, basis_b[:k_max])}


# --- layers, splits, vectors -------------------------------------------------------------------------

def matched_layers(n_layers_a: int, n_layers_b: int) -> list[tuple[int, int]]:
    """Pairs (l, round(l * Lb / La)) for every residual index l = 0..La of a (halves round up)."""
    return [(la, int(np.floor(la * n_layers_b / n_layers_a + 0.5))) for la in range(n_layers_a + 1)]


def varying_layers(resid: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """[n, L+1, d] -> [L+1] bool: layers whose vectors differ across prompts.

    At index 0 the last token is the suffix's last word for every prompt, so a model without
    learned absolute positions has the same vector for all prompts there: nothing to compare.
    """
    x = resid.astype(np.float64)
    spread = ((x - x.mean(0)) ** 2).sum(axis=(0, 2))
    return spread > rtol * (x**2).sum(axis=(0, 2))


def comparable_layers(resid_a: np.ndarray, resid_b: np.ndarray, n_layers_a: int,
                      n_layers_b: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Matched-depth layer pairs split into (comparable, skipped: one side is constant across prompts)."""
    va, vb = varying_layers(resid_a), varying_layers(resid_b)
    pairs = matched_layers(n_layers_a, n_layers_b)
    return [p for p in pairs if va[p[0]] and vb[p[1]]], [p for p in pairs if not (va[p[0]] and vb[p[1]])]


def split_halves(emotions: Sequence[str], seed: int,
                 groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded half split (train, test) stratified by emotion; with groups, no scenario is in both halves.

    Without groups each emotion's shuffled prompts alternate train/test. With groups (item ids) the
    shuffled scenarios alternate instead; each item holds all four emotions, so halves stay balanced.
    """
    rng, labels = np.random.default_rng(seed), np.asarray(emotions)
    if groups is not None:
        items = np.asarray(groups)
        train = np.isin(items, rng.permutation(np.unique(items))[0::2])
        return np.flatnonzero(train), np.flatnonzero(~train)
    idx = [rng.permutation(np.flatnonzero(labels == e)) for e in EMOTIONS]
    return np.sort(np.concatenate([i[0::2] for i in idx])), np.sort(np.concatenate([i[1::2] for i in idx]))


def _with_null(name: str, observed: float, null: np.ndarray) -> dict[str, float]:
    return {name: observed, f"{name}_null_mean": float(null.mean()),
            f"{name}_null_q95": float(np.quantile(null, 0.95)), f"{name}_p": perm_pvalue(observed, null)}


def _normalised_grams(resid: np.ndarray) -> np.ndarray:
    """Centred, unit-Frobenius Gram matrix of every layer: the full CKA matrix is then one product."""
    grams = np.empty((resid.shape[1], len(resid), len(resid)))  # [L+1, n, n]
    for layer in range(resid.shape[1]):
        x = resid[:, layer].astype(np.float64)  # [n, d]
        g = center_gram(x @ x.T)
        norm = np.linalg.norm(g)
        grams[layer] = g / norm if norm > 0 else np.nan  # a constant layer has no CKA
    return grams


Pair = tuple[np.ndarray, np.ndarray]


def _compare_depth(xa: np.ndarray, xb: np.ndarray, ga: np.ndarray, gb: np.ndarray, split: Pair,
                   emotions: Sequence[str], vec: Pair, sub: Pair, settings: dict[str, Any],
                   rng: np.random.Generator) -> dict[str, Any]:
    """Every measure, its null mean, 95th percentile and p-value, for one matched pair of layers.

    xa [n, da], xb [n, db]: float64 activations; ga, gb: their centred Grams; split: (train, test)
    indices; vec: the two models' emotion vectors [4, d]; sub: their subspace bases [k_max, d].
    """
    train, test = split
    n_perm = settings["n_perm"]
    ua, ub = u_center_gram(xa @ xa.T), u_center_gram(xb @ xb.T)
    nx, ny = knn_indices(xa, settings["k_nn"]), knn_indices(xb, settings["k_nn"])
    k = min(settings["k_pca"], xa.shape[1], xb.shape[1], len(train) - 1)
    xs, ys = pca_scores(xa, k, train), pca_scores(xb, k, train)
    lmap = fit_linear_map(xa[train], xb[train], settings["ridge"])
    labels = np.asarray(emotions)
    curve = subspace_curve(sub[0], sub[1], lmap, n_perm, rng)
    return {
        **_with_null("linear_cka", gram_cka(ga, gb), gram_permutation_null(ga, gb, n_perm, rng)),
        **_with_null("debiased_cka", gram_cka(ua, ub), gram_permutation_null(ua, ub, n_perm, rng)),
        **_with_null("mutual_knn", knn_overlap(nx, ny), knn_permutation_null(nx, ny, n_perm, rng)),
        **_with_null("rsa", rsa(*vec), rsa_label_null(*vec)),
        **_with_null("procrustes", procrustes_score(xs, ys, train, test),
                     permutation_null(lambda a, b: procrustes_score(a, b, train, test), xs, ys, n_perm, rng)),
        "procrustes_k": k,
        "map_r2": map_r2(lmap, xa[test], xb[test]),
        **transfer_vectors(emotion_vectors(xa[train], labels[train]), emotion_vectors(xb[test], labels[test]),
                           lmap, n_perm, rng),
        **_with_null("subspace_mean_cos", float(curve["score"][-1]), curve["null"][:, -1]),
        "subspace_angles": curve["angles"],
        "subspace_mean_cos_by_k": curve["score"],
        "subspace_null_q95_by_k": np.quantile(curve["null"], 0.95, axis=0),
    }


def run_pair(act_a: str | Path, act_b: str | Path, vec_a: str | Path, vec_b: str | Path, sub_a: str | Path,
             sub_b: str | Path, out: str | Path, seed: int = 0, n_perm: int = 200, k_nn: int = 10,
             k_pca: int = 10, ridge: float = 0.1, position: str = "last") -> None:
    """Compare two models on the same prompts at matched depths and layer x layer; save the pair's pickle."""
    started = time.time()
    acts = [load_pickle(p, "emolens.activations/1") for p in (act_a, act_b)]
    vecs = [load_pickle(p, "emolens.vectors/1") for p in (vec_a, vec_b)]
    subs = [load_pickle(p, "emolens.subspaces/1") for p in (sub_a, sub_b)]
    if list(acts[0]["ids"]) != list(acts[1]["ids"]):
        raise ValueError(f"{act_a} and {act_b} hold different prompts or orders; alignment needs the same")
    for v, path in zip(vecs, (vec_a, vec_b), strict=True):
        if tuple(v["emotions"]) != EMOTIONS:
            raise ValueError(f"{path}: emotions {v['emotions']} are not in the order {EMOTIONS}")
    models = [Path(act_a).stem, Path(act_b).stem]
    settings = {"seed": seed, "n_perm": n_perm, "k_nn": k_nn, "k_pca": k_pca, "ridge": ridge,
                "position": position}
    ra, rb = (a["resid"][position] for a in acts)  # [n, La+1, da], [n, Lb+1, db]
    grams_a, grams_b = _normalised_grams(ra), _normalised_grams(rb)
    cka = grams_a.reshape(len(grams_a), -1) @ grams_b.reshape(len(grams_b), -1).T  # [La+1, Lb+1]
    emotions = list(acts[0]["emotions"])
    split = split_halves(emotions, seed, acts[0].get("item_ids"))
    rng = np.random.default_rng(seed)
    n_layers_a, n_layers_b = int(acts[0]["n_layers"]), int(acts[1]["n_layers"])
    matched = []
    comparable, skipped = comparable_layers(ra, rb, n_layers_a, n_layers_b)
    for la, lb in comparable:
        xa, xb = ra[:, la].astype(np.float64), rb[:, lb].astype(np.float64)
        vec = (vecs[0]["vectors"][:, la], vecs[1]["vectors"][:, lb])
        sub = (subs[0]["basis"][la], subs[1]["basis"][lb])
        depth = {"layer_a": la, "layer_b": lb, "relative_depth": la / n_layers_a}
        matched.append(depth | _compare_depth(xa, xb, grams_a[la], grams_b[lb], split, emotions, vec, sub,
                                              settings, rng))
    quant = [a.get("quantization") for a in acts]
    save_pickle({
        "schema": SCHEMA, "models": models, "quantization": quant, "int8_involved": "int8" in quant,
        "d_model": [int(a["d_model"]) for a in acts], "n_layers": [n_layers_a, n_layers_b],
        "n_prompts": len(emotions), "train_idx": split[0], "test_idx": split[1], "cka_matrix": cka,
        "matched": matched, "skipped_layers": skipped, "settings": settings,
        "provenance": provenance(settings, started, models=models,
                                 inputs=[str(p) for p in (act_a, act_b, vec_a, vec_b, sub_a, sub_b)]),
    }, out)


def run_summary(pair_files: Sequence[str | Path], out_json: str | Path, alpha: float = 0.05) -> None:
    """Headline numbers per model pair at matched depths, with flags, into ``alignment/summary.json``."""
    started = time.time()
    pairs = []
    for path in pair_files:
        r = load_pickle(path, SCHEMA)
        matched = r["matched"]
        measures = {}
        for m in MEASURES:
            values, pvals = np.array([d[m] for d in matched]), np.array([d[f"{m}_p"] for d in matched])
            measures[m] = {"value": values, "null_mean": [d[f"{m}_null_mean"] for d in matched], "p": pvals,
                           "mean": float(np.nanmean(values)), "n_significant": int(np.sum(pvals < alpha))}
        flags = (["int8_involved"] if r["int8_involved"] else []) + (
            ["different_widths"] if r["d_model"][0] != r["d_model"][1] else [])
        pairs.append({"models": r["models"], "file": str(path), "quantization": r["quantization"],
                      "int8_involved": r["int8_involved"],
                      "flags": flags, "d_model": r["d_model"], "n_prompts": r["n_prompts"],
                      "matched_layers": [[d["layer_a"], d["layer_b"]] for d in matched],
                      "map_r2": [d["map_r2"] for d in matched], "measures": measures})
    prov = provenance({"alpha": alpha}, started, inputs=[str(p) for p in pair_files])
    save_json({"alpha": alpha, "pairs": pairs, "provenance": prov}, out_json)
