"""Resampling at the design's unit, the frame: folds, splits, label permutations, sign flips and the bootstrap.

The built-in dataset writes each emotion of an item with its frame's template, and a frame's 3-4
items share those templates, so items are not exchangeable: frames are. Every cross-validation fold
holds whole frames; every split that separates selection from confirmation is by frame (stratified
by register); every label permutation applies one permutation of the labels per frame to all its
items; every bootstrap resamples frames, then items within frames; every sign flip flips frame
means. A dataset without frames (a user's JSONL) makes each item its own frame, where all of this
reduces to the item-level versions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import ndtr, ndtri

from emolens.stopwatch import charged

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator


def codes_of(groups: Sequence[Any]) -> np.ndarray:
    """[n] group index (0..G-1, in sorted order of the group names) of every entry."""
    return np.unique(np.asarray(groups), return_inverse=True)[1].ravel()


def frame_groups(records: list[dict[str, Any]]) -> list[str]:
    """Cross-validation group of each record: its ``frame``, or its ``item_id`` where it has none."""
    return [r.get("frame") or r["item_id"] for r in records]


def frame_halves(frames: Sequence[Any], registers: Sequence[Any] | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (first, second) index arrays splitting whole frames, stratified by register.

    Each register's frames are shuffled and dealt alternately to the two halves, the alternation
    continuing across registers, so the halves differ by at most one frame and no frame is in both.
    """
    frames = np.asarray(frames)
    strata = np.asarray(registers) if registers is not None else np.zeros(len(frames), int)
    rng, dealt = np.random.default_rng(seed), []
    for stratum in np.unique(strata):
        dealt += list(rng.permutation(np.unique(frames[strata == stratum])))
    first = np.isin(frames, list(dict.fromkeys(dealt))[0::2])
    return np.flatnonzero(first), np.flatnonzero(~first)


def frame_split(records: Sequence[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records split once by frame into a selection half (6a) and a confirmation half (6b).

    Seeded and stratified by register (:func:`frame_halves`): no frame, and so no
    template, is in both halves. Steering uses the same split for its fit and measured halves.
    """
    first, _ = frame_halves(frame_groups(list(records)), [r.get("register") or "" for r in records], seed)
    chosen = set(first.tolist())
    return [r for i, r in enumerate(records) if i in chosen], [r for i, r in enumerate(records) if i not in chosen]


@charged("statistics")
def frame_label_permutations(codes: np.ndarray, frames: Sequence[Any], n_perm: int, n_classes: int,
                             rng: np.random.Generator) -> np.ndarray:
    """[n_perm, n] labellings: each frame's labels mapped through one random permutation of the classes.

    All items of a frame get the same permutation, so a frame's template for one emotion moves as a
    whole to another emotion; what varies by frame alone can then not pass as emotion structure.
    """
    f = codes_of(frames)
    maps = rng.random((n_perm, f.max() + 1, n_classes)).argsort(-1)  # [n_perm, F, C]: one permutation per frame
    return maps[:, f, np.asarray(codes)]


@charged("statistics")
def frame_slot_permutations(codes: np.ndarray, items: Sequence[Any], frames: Sequence[Any], n_perm: int,
                            n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm, n] index permutations inside items, the same slot permutation for every item of a frame.

    Prompt i (item t, emotion c) goes to the prompt of item t with emotion pi_f(c), pi_f drawn once
    per frame: a correspondence shuffle that keeps what a frame's items share (their templates) in
    register. Items that do not hold every emotion exactly once are shuffled on their own.
    """
    codes, t = np.asarray(codes), codes_of(items)
    table = np.full((t.max() + 1, n_classes), -1)
    table[t, codes] = np.arange(len(codes))
    complete = (np.bincount(t * n_classes + codes, minlength=table.size).reshape(table.shape) == 1).all(1)[t]
    perm = within_group_permutations(t, n_perm, rng)
    mapped = table[t[None], frame_label_permutations(codes, frames, n_perm, n_classes, rng)]  # [n_perm, n]
    return np.where(complete[None], mapped, perm)


@charged("statistics")
def within_group_permutations(groups: Sequence[Any], n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm, n] permutations that move each index only inside its group (item); row p: i -> perm[p, i]."""
    groups = codes_of(groups)
    base = np.argsort(groups, kind="stable")
    keys = groups[base] + rng.random((n_perm, len(groups)))  # group number + U(0, 1): sorting shuffles inside groups
    perm = np.empty((n_perm, len(groups)), dtype=np.intp)
    perm[:, base] = base[np.argsort(keys, axis=1)]
    return perm


def with_observed(codes: np.ndarray, permuted: np.ndarray) -> np.ndarray:
    """[n_perm + 1, n]: the observed labelling as row 0, then the permuted ones."""
    return np.vstack([np.asarray(codes)[None], permuted])


def perm_pvalue(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value (observed greater than the null), with the +1 rule: never 0. An
    undefined statistic (NaN: e.g. a similarity of a representation with no variance) has no p-value: NaN,
    which every family leaves out, never the smallest p."""
    if not np.isfinite(observed):
        return float("nan")
    return float((1 + np.sum(np.asarray(null) >= observed)) / (1 + len(null)))


def perm_pvalues(observed: np.ndarray, null: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """:func:`perm_pvalue` per cell: observed [...], null [n, ...]; a null draw within ``tol`` below the
    observed value counts as a tie (floating-point accuracies)."""
    observed = np.asarray(observed, float)
    p = (1 + (np.asarray(null) >= observed - tol).sum(0)) / (1 + len(null))
    return np.where(np.isfinite(observed), p, np.nan)


def max_statistic_pvalues(observed: np.ndarray, null: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """Family-wise p per cell: observed [...] against the null's maximum over all cells of each draw
    (null [n, ...]), with the +1 rule; NaN where observed is NaN."""
    observed = np.asarray(observed, float)
    maxima = np.asarray(null, float).reshape(len(null), -1).max(1).reshape((-1,) + (1,) * observed.ndim)
    p = (1 + (maxima >= observed - tol).sum(0)) / (1 + len(null))
    return np.where(np.isfinite(observed), p, np.nan)


@charged("statistics")
def sign_flip_pvalue(x: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """Two-sided sign-flip permutation p-value of each column's mean against 0 (x [units, c], no NaN)."""
    observed = np.abs(x.mean(0))  # [c]
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, len(x)))  # [n_perm, units]
    null = np.abs(signs @ x) / len(x)  # [n_perm, c]
    return (1 + np.sum(null >= observed * (1 - 1e-12), axis=0)) / (1 + n_perm)


def group_sums(num: np.ndarray, den: np.ndarray, groups: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per group, in sorted order of the names: the sums of num [n, c] -> [G, c] and of den [n] -> [G]."""
    g = codes_of(groups)
    n_groups = int(g.max()) + 1 if len(g) else 0
    sums = np.zeros((n_groups, num.shape[1]))
    np.add.at(sums, g, num)
    return sums, np.bincount(g, weights=np.asarray(den, float), minlength=n_groups)


def item_frames(items: Sequence[Any], frames: Sequence[Any]) -> np.ndarray:
    """[I] frame index of every item, items in sorted order of their names (as :func:`group_sums` orders them)."""
    _, first = np.unique(np.asarray(items), return_index=True)
    return codes_of(np.asarray(frames)[first])


@charged("statistics")
def two_stage_weights(frame_of_item: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[B, I] bootstrap weights of items: frames resampled with replacement, then items within each drawn frame.

    Weight of item i = (times its frame was drawn) x (times it was drawn inside its frame's draw),
    so a weighted sum over items is the statistic's sum over a two-stage resample.
    """
    frame_of_item = np.asarray(frame_of_item)
    n_frames = int(frame_of_item.max()) + 1
    frame_counts = rng.multinomial(n_frames, np.full(n_frames, 1 / n_frames), size=n_boot)  # [B, F]
    weights = np.zeros((n_boot, len(frame_of_item)))
    for f in range(n_frames):
        members = np.flatnonzero(frame_of_item == f)
        for draw in range(frame_counts[:, f].max()):  # each draw of the frame resamples its items afresh
            drawn = frame_counts[:, f] > draw  # [B]
            inner = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_boot)
            weights[:, members] += inner * drawn[:, None]
    return weights


def bca_interval(estimate: np.ndarray, boot: np.ndarray, jackknife: np.ndarray,
                 level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval per column from bootstrap replicates boot [B, c] and leave-one-frame-out values [F, c].

    Bias correction z0 from the replicates below the estimate, acceleration from the frame jackknife
    (Efron 1987), the same formulas as ``scipy.stats.bootstrap(method="BCa")``.
    """
    boot, jackknife = np.atleast_2d(boot.T).T, np.atleast_2d(jackknife.T).T
    z0 = ndtri((boot < estimate).mean(0) + 0.5 * (boot == estimate).mean(0))
    d = jackknife.mean(0) - jackknife
    with np.errstate(divide="ignore", invalid="ignore"):
        accel = (d**3).sum(0) / (6 * ((d**2).sum(0)) ** 1.5)
    accel = np.nan_to_num(accel)
    out = []
    for tail in ((1 - level) / 2, (1 + level) / 2):
        z = z0 + ndtri(tail)
        q = ndtr(z0 + z / (1 - accel * z))
        out.append(np.array([np.nanquantile(boot[:, c], q[c]) if np.isfinite(q[c]) else np.nan
                             for c in range(boot.shape[1])]))
    return out[0], out[1]


@charged("statistics")
def item_mean_bca(values: np.ndarray, weights: np.ndarray, frame_of_item: np.ndarray,
                  stat: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage BCa 95% CI of ``stat`` (default: identity) of the item mean of per-item values [I, ...].

    Replicates from two-stage bootstrap weights [B, I] (rows summing to 1), acceleration from the
    leave-one-frame-out means; ``stat`` maps [..., *values.shape[1:]] arrays over leading axes. A cell
    the resampling cannot move gets a point CI; fewer than two frames give NaN.
    """
    stat = stat or (lambda m: m)
    estimate = np.asarray(stat(values.mean(0)), float)
    n_frames = int(frame_of_item.max()) + 1 if len(frame_of_item) else 0
    if n_frames < 2:
        return np.full_like(estimate, np.nan), np.full_like(estimate, np.nan)
    keep = (frame_of_item[None, :] != np.arange(n_frames)[:, None]).astype(float)  # [F, I]
    boot = np.asarray(stat(np.tensordot(weights, values, 1)), float).reshape(len(weights), -1)
    jack = np.asarray(stat(np.tensordot(keep / keep.sum(1, keepdims=True), values, 1)), float).reshape(n_frames, -1)
    flat = estimate.ravel()
    low, high = flat.copy(), flat.copy()
    vary = np.ptp(boot, axis=0) > 1e-12
    if vary.any():
        low[vary], high[vary] = bca_interval(flat[vary], boot[:, vary], jack[:, vary])
    return low.reshape(estimate.shape), high.reshape(estimate.shape)


@charged("statistics")
def ratio_of_sums(num: np.ndarray, den: np.ndarray, items: Sequence[Any], frames: Sequence[Any], n_boot: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sum(num) / sum(den) over rows, per cell, with a two-stage (frames, then items) BCa 95% CI.

    ``num`` [P, ...] and ``den`` [P] are per-pair values with each pair's item and frame; the pairs
    of an item move together. Returns (ratio, low, high) of shape num.shape[1:]; fewer than two
    frames give a NaN CI, and a cell where every item has the same ratio a point CI.
    """
    num = np.asarray(num, float)
    shape = num.shape[1:]
    item_num, item_den = group_sums(num.reshape(len(num), -1), den, items)  # [I, c], [I]
    frame_of_item = item_frames(items, frames)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = item_num.sum(0) / item_den.sum()
        vary = np.ptp(item_num / item_den[:, None], axis=0) > 1e-12
    low, high = np.full_like(ratio, np.nan), np.full_like(ratio, np.nan)
    n_frames = frame_of_item.max() + 1 if len(frame_of_item) else 0
    if n_frames >= 2 and np.isfinite(ratio).all():
        low[~vary], high[~vary] = ratio[~vary], ratio[~vary]
        if vary.any():
            w = two_stage_weights(frame_of_item, n_boot, np.random.default_rng(seed))  # [B, I]
            with np.errstate(divide="ignore", invalid="ignore"):
                boot = (w @ item_num[:, vary]) / (w @ item_den)[:, None]  # [B, c]
                keep = frame_of_item[None, :] != np.arange(n_frames)[:, None]  # [F, I]: leave one frame out
                jack = (keep @ item_num[:, vary]) / (keep @ item_den)[:, None]
            low[vary], high[vary] = bca_interval(ratio[vary], boot, jack)
    return ratio.reshape(shape), low.reshape(shape), high.reshape(shape)


@charged("statistics")
def simultaneous_band(estimate: np.ndarray, boot: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray,
                                                                                              float]:
    """Max-t simultaneous band over columns from bootstrap replicates boot [B, c]: (low, high, critical t).

    Each column is standardised by its bootstrap sd; the critical value is the ``level`` quantile of the
    largest |t| over columns, so all columns lie inside their band together with probability ``level``.
    """
    sd = boot.std(0, ddof=1)
    safe = np.where(sd > 0, sd, np.inf)
    crit = float(np.quantile(np.abs((boot - estimate) / safe).max(1), level))
    return estimate - crit * sd, estimate + crit * sd, crit


def grouped_folds(groups: Sequence[str], folds: int) -> np.ndarray:
    """Fold number [N] of every prompt: ``GroupKFold`` over ``groups``, so each group lies in one fold."""
    n_groups = len(set(groups))
    if folds < 2 or n_groups < folds:
        raise ValueError(f"cannot make {folds} cross-validation folds from {n_groups} group(s) (frames, or items "
                         f"where a record has no frame): set subspace.probe_folds between 2 and {n_groups}, "
                         f"or use a dataset with more frames")
    from sklearn.model_selection import GroupKFold  # where used: most jobs never cross-validate

    fold = np.full(len(groups), -1)
    split = GroupKFold(n_splits=folds).split(np.zeros((len(groups), 1)), groups=np.asarray(groups))
    for k, (_, test) in enumerate(split):
        fold[test] = k
    return fold


@charged("statistics")
def out_of_fold(model: BaseEstimator, x: Any, labels: Sequence[str], fold: np.ndarray) -> np.ndarray:
    """Prediction [N] for every prompt from a copy of ``model`` fitted on the other folds."""
    from sklearn.model_selection import PredefinedSplit, cross_val_predict

    return cross_val_predict(model, x, np.asarray(labels), cv=PredefinedSplit(fold))
