"""Directional ablation: does removing the emotion subspace remove what reads or decodes the emotion?

At index l, x <- x - B^T B x at every position, B [k, d] (k <= n - 1 of n emotions, 3 for the built-in
four) the orthonormal basis of the span of the fit half's emotion class means, centred (the span of its
emotion vectors), against random k-dimensional subspaces (``n_random_subspaces`` of them in
:func:`emolens.phases.steering.run_steering`). Measured on the
held-out prompts: the calibrated readout accuracy (offsets = the run's own mean label logits, as
behaviour.py calibrates) and the accuracy of the phase-3 probe (standardised logistic regression) fitted
on the fit half's clean activations at each later index m >= l and tested on the held-out ablated
activations there.

Matched nulls at the chosen index (:func:`matched_null`): label-permuted emotion subspaces (the same
estimator on labels permuted by frame) and random k-dimensional subspaces whose removed variance on
the fit half lies within 10% of the emotion subspace's (directions mixed between the fit covariance's
and isotropic ones, kept by rejection), each with a rank p-value for the drop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.engine.edits import Edited, Prompts, run_edits
from emolens.model.adapter import ModelAdapter
from emolens.stats.probes import probe_model
from emolens.stats.resampling import frame_label_permutations, perm_pvalue
from emolens.stats.steering_stats import ItemBootstrap


def emotion_basis(x: np.ndarray, emotions: Sequence[str], tol: float = 1e-8) -> np.ndarray:
    """[k <= n - 1, d] orthonormal basis of the span of the n emotions' class means of [N, d], centred."""
    labels, order = np.asarray(emotions), emotion_order(emotions)
    means = np.stack([x[labels == e].mean(0) for e in order])  # [n, d]
    _, s, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
    return vt[: int((s > tol * max(s.max(initial=0.0), 1e-30)).sum())][: len(order) - 1]


def random_basis(k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[k, d] orthonormal basis of a random k-dimensional subspace."""
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q.T


def removed_variance(x: np.ndarray, basis: np.ndarray) -> float:
    """Variance of x [N, d] inside the span of an orthonormal ``basis`` [k, d] (what projecting it out removes)."""
    return float(((x - x.mean(0)) @ basis.T).var(0).sum())


def matched_bases(x: np.ndarray, k: int, target: float, n: int, rng: np.random.Generator,
                  tol: float = 0.1, max_draws: int = 200) -> np.ndarray:
    """[<= n, k, d] random k-dimensional subspaces whose removed variance on x [N, d] is within ``tol`` of
    ``target``: each direction a mix w * (covariance draw) + (1 - w) * (isotropic draw), w uniform, kept by
    rejection (at most ``max_draws`` tries per subspace kept)."""
    xc = (x - x.mean(0)) / np.sqrt(max(len(x) - 1, 1))
    kept: list[np.ndarray] = []
    for _ in range(n * max_draws):
        if len(kept) == n:
            break
        w = rng.random()
        g = rng.standard_normal((k, len(x))) @ xc
        r = rng.standard_normal((k, x.shape[1]))
        mix = w * g / np.linalg.norm(g, axis=1, keepdims=True) + (1 - w) * r / np.linalg.norm(r, axis=1, keepdims=True)
        basis = np.linalg.qr(mix.T)[0].T
        if abs(removed_variance(x, basis) - target) <= tol * target:
            kept.append(basis)
    return np.array(kept).reshape(-1, k, x.shape[1])


def calibrated_accuracy(labels: np.ndarray, truth: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Accuracy [...] of argmax(label logits [..., P, n_emotions] - offsets); offsets default to the run's own mean
    label logits over its prompts (the contextual calibration of behaviour.py)."""
    if offsets is None:
        offsets = labels.mean(-2, keepdims=True)
    return ((labels - offsets).argmax(-1) == truth).mean(-1)


def fit_probes(x_fit: np.ndarray, emotions: Sequence[str], layers: Sequence[int], seed: int) -> dict[int, Any]:
    """The phase-3 probe (standardised logistic regression) fitted on fit-half activations [N, S, d] per index."""
    return {m: probe_model(seed).fit(x_fit[:, m], np.asarray(emotions)) for m in layers}


def ablation_index(adapter: ModelAdapter, prompts: Prompts, clean: Edited, layer: int, bases: np.ndarray,
                   probes: dict[int, Any], boot: ItemBootstrap, averaging: np.ndarray, offsets: np.ndarray,
                   batch_size: int = 32) -> dict[str, Any]:
    """Project each basis [C, k, d] (row 0 the emotion subspace, then random ones) out at index ``layer``;
    readout accuracy and probe accuracy at every probed index m >= layer, clean and ablated."""
    later = [m for m in probes if m >= layer]
    run = run_edits(adapter, prompts, layer, basis=bases, capture=later, batch_size=batch_size)
    truth = prompts.truth
    acc_clean = float(calibrated_accuracy(clean.labels[0], truth))
    acc = calibrated_accuracy(run.labels, truth)  # [C]
    acc_fixed = calibrated_accuracy(run.labels, truth, offsets)
    hits_clean = ((clean.labels[0] - clean.labels[0].mean(0)).argmax(-1) == truth).astype(float)
    hits = ((run.labels[0] - run.labels[0].mean(0)).argmax(-1) == truth).astype(float)
    drop_low, drop_high = boot.ci(averaging @ (hits_clean - hits))  # per-item drops
    labels = prompts.labels
    probe = {m: np.array([(probes[m].predict(run.acts[m][c]) == labels).mean() for c in range(len(bases))])
             for m in later}

    def rand(values: np.ndarray, reduce: Callable = np.mean) -> float:  # over the random subspaces
        return float(reduce(values[1:])) if len(values) > 1 else float("nan")

    return {
        "readout_accuracy": float(acc[0]), "readout_drop": acc_clean - float(acc[0]),
        "readout_drop_ci_low": float(drop_low), "readout_drop_ci_high": float(drop_high),
        "readout_drop_random_mean": acc_clean - rand(acc), "readout_drop_random_max": acc_clean - rand(acc, np.min),
        "readout_accuracy_fixed_offsets": float(acc_fixed[0]),
        "readout_accuracy_fixed_offsets_random_mean": rand(acc_fixed),
        "probe_accuracy": {m: float(a[0]) for m, a in probe.items()},
        "probe_accuracy_random_mean": {m: rand(a) for m, a in probe.items()},
    }


def matched_null(adapter: ModelAdapter, prompts: Prompts, clean: Edited, layer: int, x_fit: np.ndarray,
                 emotions: Sequence[str], frames: Sequence[str], probes: dict[int, Any], n_null: int, seed: int,
                 batch_size: int = 32) -> dict[str, Any]:
    """At the chosen index: the emotion subspace's drops in calibrated readout and probe accuracy against
    label-permuted emotion subspaces and variance-matched random subspaces, with rank p-values."""
    rng = np.random.default_rng([seed, 8, layer])
    basis = emotion_basis(x_fit, emotions)
    order = emotion_order(emotions)
    codes = np.array([order.index(e) for e in emotions])
    perms = frame_label_permutations(codes, frames, max(n_null // len(order), 1), len(order), rng)
    permuted = [emotion_basis(x_fit, np.asarray(order)[p]) for p in perms]
    permuted = np.array([b for b in permuted if len(b) == len(basis)])
    target = removed_variance(x_fit, basis)
    matched = matched_bases(x_fit, len(basis), target, n_null, rng)
    bases = np.concatenate([basis[None], permuted.reshape(-1, *basis.shape), matched])
    later = [m for m in probes if m >= layer]
    run = run_edits(adapter, prompts, layer, basis=bases, capture=later, batch_size=batch_size)
    truth, labels = prompts.truth, prompts.labels
    drop = float(calibrated_accuracy(clean.labels[0], truth)) - calibrated_accuracy(run.labels, truth)  # [C]
    probe_clean = {m: float((probes[m].predict(clean.acts[m][0]) == labels).mean()) for m in later}
    probe_drop = {m: probe_clean[m] - np.array([(probes[m].predict(run.acts[m][c]) == labels).mean()
                                                for c in range(len(bases))]) for m in later}
    split = {"permuted": slice(1, 1 + len(permuted)), "matched": slice(1 + len(permuted), len(bases))}
    out: dict[str, Any] = {"removed_variance": target, "n_permuted": len(permuted), "n_matched": len(matched),
                           "matched_removed_variance": [removed_variance(x_fit, b) for b in matched],
                           "readout_drop": float(drop[0]), "probe_layers": later,
                           "probe_drop": [float(probe_drop[m][0]) for m in later]}
    for name, part in split.items():
        out[f"readout_drop_{name}_mean"] = float(drop[part].mean()) if len(drop[part]) else float("nan")
        out[f"readout_drop_p_{name}"] = perm_pvalue(drop[0], drop[part]) if len(drop[part]) else float("nan")
        out[f"probe_drop_p_{name}"] = [perm_pvalue(probe_drop[m][0], probe_drop[m][part]) if len(drop[part])
                                       else float("nan") for m in later]
    return out
