"""Steering statistics: readout shifts, doses in natural units, matched nulls, specificity that can fail.

Doses. A direction u at residual index l is added as alpha * sd(u) * u, sd(u) the standard deviation of
the fit half's last-token residual projected on u: alpha counts standard deviations along the
direction itself, so a mean-difference vector, a label-permuted one and a random one are dosed alike
whatever the residual's outlier dimensions do to its norm.

Nulls that match the vectors (at the chosen index and dose): (a) label-permuted mean differences,
labels permuted by frame, the same estimator as the real vector; (b) Gaussian directions drawn from
N(0, Sigma), Sigma the fit half's residual covariance at the index, so they live where the residual
varies; (c) isotropic unit directions, for comparison. p-values are ranks with the +1 rule.

Specificity, two forms that can fail (the n x n matrix M of n emotions holds the shift of readout e'
under the vector of emotion e): row form M[e, e] - max_{e' != e} M[e, e'] (v_e moves its own readout
more than any other); column form M[e, e] - max_{e'' != e} M[e'', e] (readout e moves more under v_e
than under any other emotion's vector). The old index, mean diagonal minus mean off-diagonal, is
exactly n/(n - 1) of the on-target shift for logit differences against the mean of the other n - 1
(they sum to zero), so it is not reported. The number of emotions is read from the arrays' shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.stats.resampling import (
    codes_of,
    frame_groups,
    frame_label_permutations,
    item_mean_bca,
    perm_pvalue,
    two_stage_weights,
)
from emolens.stopwatch import charged


# --- directions and doses --------------------------------------------------------------------------
def unit(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v, dtype=np.float64), where=n > 0)


def projection_sd(x: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """[N, d] fit-half activations, [D, d] directions -> [D] sd of x projected on each unit direction."""
    return (x @ unit(directions).T).std(0)


def random_directions(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[n, d] random unit directions (isotropic): null (c)."""
    return unit(rng.standard_normal((n, d)))


def gaussian_directions(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, d] draws from N(0, Sigma), Sigma the covariance of x [N, d] (no d x d matrix is formed): null (b)."""
    xc = x - x.mean(0)
    return rng.standard_normal((n, len(x))) @ xc / np.sqrt(max(len(x) - 1, 1))


@charged("statistics")
def permuted_vectors(x: np.ndarray, emotions: Sequence[str], frames: Sequence[str], n_perm: int,
                     rng: np.random.Generator) -> np.ndarray:
    """[n_perm, n_emotions, d] emotion vectors (mean of one emotion minus the mean of the others) under labels
    permuted by frame: null (a), the real vectors' estimator on labels that carry no emotion."""
    order = emotion_order(emotions)
    codes = np.array([order.index(e) for e in emotions])
    perms = frame_label_permutations(codes, frames, n_perm, len(order), rng)  # [n_perm, N]
    onehot = perms[..., None] == np.arange(len(order))  # [n_perm, N, n_emotions]
    counts = onehot.sum(1)  # [n_perm, n_emotions]
    means = np.einsum("pne,nd->ped", onehot, x) / np.maximum(counts, 1)[..., None]
    rest = (x.sum(0)[None, None] - means * counts[..., None]) / np.maximum(len(x) - counts, 1)[..., None]
    return means - rest


# --- readout measures and item-level statistics -----------------------------------------------------
def readout_measures(labels: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label logits [..., n_emotions] -> (calibrated probability, LD of each label against the mean of the others)."""
    z = labels - offsets
    prob = np.exp(z - z.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    ld = z - (z.sum(-1, keepdims=True) - z) / (z.shape[-1] - 1)
    return prob, ld


def item_matrix(items: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[I, P] averaging matrix (row i: 1/n_i on item i's prompts) and the item names, in first-seen order."""
    names = list(dict.fromkeys(items.tolist()))
    onehot = (items[None, :] == np.array(names)[:, None]).astype(np.float64)
    return onehot / onehot.sum(1, keepdims=True), names


@dataclass
class ItemBootstrap:
    """Two-stage resampling (frames, then items within frames) of per-item values: weights [B, I], rows
    summing to 1 (the resampled item mean of v [I] is weights @ v), and each item's frame [I] (for BCa)."""

    weights: np.ndarray
    frames: np.ndarray

    def ci(self, values: np.ndarray, stat: Callable[[np.ndarray], np.ndarray] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
        """BCa 95% CI of stat(item mean) of values [I, ...] (:func:`emolens.stats.resampling.item_mean_bca`)."""
        return item_mean_bca(values, self.weights, self.frames, stat)


@charged("statistics")
def item_bootstrap(records: Sequence[dict[str, Any]], items: Sequence[str], n_boot: int,
                   rng: np.random.Generator) -> ItemBootstrap:
    """The two-stage resampling of ``items`` (ids of ``records``), by their frames."""
    frame_of = dict(zip((r["item_id"] for r in records), frame_groups(list(records)), strict=True))
    frames = codes_of([frame_of[i] for i in items])
    weights = two_stage_weights(frames, n_boot, rng)
    return ItemBootstrap(weights / weights.sum(1, keepdims=True), frames)


def register_bootstraps(records: Sequence[dict[str, Any]], items: Sequence[str], n_boot: int,
                        seed: int) -> dict[str, tuple[np.ndarray, ItemBootstrap]]:
    """Each register's rows among ``items`` (ids of ``records``) and their own two-stage resampling."""
    register_of = {str(r["item_id"]): r.get("register") for r in records}
    registers = np.array([register_of.get(str(i)) for i in items], dtype=object)
    out = {}
    for register in sorted({g for g in registers if g}):
        rows = np.flatnonzero(registers == register)
        out[register] = rows, item_bootstrap(records, [items[i] for i in rows], n_boot,
                                             np.random.default_rng([seed, 8]))
    return out


def on_target(shift: np.ndarray) -> np.ndarray:
    """[..., n, I, n] item shifts of the n emotion vectors -> [..., I, n] each vector's shift of its own readout."""
    return np.stack([shift[..., e, :, e] for e in range(shift.shape[-1])], axis=-1)


@charged("statistics")
def shift_summary(shift: np.ndarray, boot: ItemBootstrap) -> dict[str, np.ndarray]:
    """Summaries of item-mean shifts [A, n + R, I, n] (alphas, the n emotion vectors then isotropic directions,
    items, readouts): the matrix [A, n, n], on-target [A, n] with CI, the isotropic directions' mean and 95th
    percentile over directions [A, n] (a per-index comparison; the tests use the matched nulls)."""
    k = shift.shape[-1]
    point = shift.mean(2)  # [A, D, n]
    spec = point[:, :k]  # [A, n, n]
    out = {"specificity": spec, "on_target": np.einsum("aee->ae", spec)}
    out["on_target_ci_low"], out["on_target_ci_high"] = boot.ci(np.moveaxis(on_target(shift[:, :k]), 1, 0))
    if shift.shape[1] > k:
        rand = point[:, k:]  # [A, R, n]
        out["random_mean"], out["random_q95"] = rand.mean(1), np.quantile(rand, 0.95, axis=1)
    return out


# --- the chosen dose: specificity, per-item response and matched nulls ------------------------------
def specificity_forms(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., n, n] shift matrices (rows: vector, columns: readout) -> (row form, column form), each [..., n]."""
    diag = np.einsum("...ee->...e", m)
    off = np.where(np.eye(m.shape[-1], dtype=bool), -np.inf, m)
    return diag - off.max(-1), diag - off.max(-2)


def steerable_fraction(own: np.ndarray, boot: ItemBootstrap) -> dict[str, np.ndarray]:
    """Per emotion, the fraction of items whose on-target shift [I, n] is positive, with a frame-then-item CI."""
    positive = (own > 0).astype(np.float64)
    low, high = boot.ci(positive)
    return {"fraction": positive.mean(0), "ci_low": low, "ci_high": high}


@charged("statistics")
def chosen_dose_tests(emotion: np.ndarray, nulls: dict[str, np.ndarray], boot: ItemBootstrap) -> dict[str, Any]:
    """Everything reported at the chosen (index, dose) from item shifts: the n emotion vectors' [n, I, n] and each
    null's [D, I, n] (null "permuted" holds whole permutations, n vectors each, in emotion order).

    On-target shift with CI and, per null, its rank p per readout; both specificity forms with CIs and p under
    the permuted null (the same forms of each permutation's matrix); the steerable fraction of items.
    """
    k = len(emotion)
    own = on_target(emotion)  # [I, n]
    matrix = emotion.mean(1)  # [n, n]
    row, col = specificity_forms(matrix)
    items = np.moveaxis(emotion, 1, 0)  # [I, n, n]
    out: dict[str, Any] = {"specificity": matrix, "on_target": own.mean(0)}
    out["on_target_ci_low"], out["on_target_ci_high"] = boot.ci(own)
    out["specificity_row"], out["specificity_column"] = row, col
    out["specificity_row_ci_low"], out["specificity_row_ci_high"] = boot.ci(items, lambda m: specificity_forms(m)[0])
    out["specificity_column_ci_low"], out["specificity_column_ci_high"] = boot.ci(
        items, lambda m: specificity_forms(m)[1])
    out["steerable"] = steerable_fraction(own, boot)
    for name, shift in nulls.items():
        point = shift.mean(1)  # [D, n]: each null direction's mean shift of each readout
        if name == "permuted":
            mats = point.reshape(-1, k, k)  # [n_perm, n, n]
            null_on = np.einsum("pee->pe", mats)
            null_row, null_col = specificity_forms(mats)
            out["specificity_row_p"] = np.array([perm_pvalue(row[e], null_row[:, e]) for e in range(k)])
            out["specificity_column_p"] = np.array([perm_pvalue(col[e], null_col[:, e]) for e in range(k)])
        else:
            null_on = point
        out[f"on_target_p_{name}"] = np.array([perm_pvalue(out["on_target"][e], null_on[:, e]) for e in range(k)])
        out[f"null_{name}_q95"] = np.quantile(null_on, 0.95, axis=0)
    return out


def choose_dose(on_target_fit: np.ndarray, kl_fit: np.ndarray, alphas: Sequence[float],
                budget: float) -> dict[str, Any]:
    """The (index, dose) of the largest mean on-target shift whose off-label KL (largest over the emotion vectors)
    stays within ``budget``, from fit-half measures [S, A, n_emotions]; and the half-max dose there (the smallest
    dose reaching half of the chosen shift, the largest within the budget), where transfer is measured.

    When no nonzero dose stays within the budget, the smallest dose at the index of the largest shift is
    chosen and ``within_budget`` is False.
    """
    score, cost = on_target_fit.mean(-1), np.nan_to_num(kl_fit.max(-1), nan=0.0)  # [S, A]
    moving = np.asarray(alphas) > 0
    ok = moving[None] & (cost <= budget)
    within = bool(ok.any())
    if within:
        s, a = np.unravel_index(np.argmax(np.where(ok, score, -np.inf)), score.shape)
    else:
        s, a = int(np.argmax(score.max(-1))), int(np.flatnonzero(moving)[0])
    half = int(np.flatnonzero(moving & (score[s] >= 0.5 * score[s, a]))[0]) if score[s, a] > 0 else int(a)
    return {"position": int(s), "alpha_position": int(a), "half_max_position": half, "within_budget": within,
            "fit_on_target": float(score[s, a]), "fit_kl_nonlabel": float(cost[s, a])}


def choose_within_depth(on_target_ld: np.ndarray, kl_max: np.ndarray, layers: Sequence[int], n_layers: int,
                        alphas: Sequence[float], budget: float, max_depth: float) -> dict[str, Any] | None:
    """:func:`choose_dose` among the steered indices at relative depth ``max_depth`` or less (index / n_layers),
    from the fit half's mean on-target shift and largest off-label KL [S, A]; ``position`` indexes ``layers``.
    None where no steered index is that shallow."""
    inside = [s for s, m in enumerate(layers) if m <= max_depth * n_layers]
    if not inside:
        return None
    choice = choose_dose(on_target_ld[inside, :, None], kl_max[inside, :, None], alphas, budget)
    return choice | {"position": inside[choice["position"]]}
