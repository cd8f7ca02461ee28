"""Steering: do the emotion vectors cause anything? Dose-response, specificity and cost of adding them.

Method. The frames are split once, seeded and stratified by register (:func:`emolens.heads.frame_split`),
into a fit half and a held-out half. Everything that is estimated comes from the fit half's phase-2
activations (last token, every residual index): the emotion vectors (mean of one emotion minus the
mean of the others, :func:`emolens.vectors.emotion_vectors`), the typical residual norm at index l
(the median over fit-half prompts of the last token's ||resid_l||), the emotion subspace, probes and
cross-model maps. Everything that is measured runs on readout prompts (``readout.prompt(text)``) of
the held-out half, whole items, at most ``max_prompts`` of them (a seeded choice of items).

Steering. At residual index l (every index, or every ``layer_stride``-th and the last), the hook adds
alpha * unit(v_e,l) * norm_l at every position of the prompt, for alpha on a grid. Alpha 0 is the
clean run (:func:`emolens.edits.clean_run`), the reference of every shift, shared by all indices.
Readout, per emotion e' of the four labels: the calibrated probability (softmax of the label logits
minus the clean calibration offsets of :mod:`emolens.behaviour`, each label's mean clean logit over the
held-out prompts, held fixed under steering) and the logit difference of e' against the mean of the
other three. Shifts (steered minus clean) are averaged within items, then over items; the 4 x 4
specificity matrix at each (index, alpha) holds the shift of readout e' (columns) under the vector
of emotion e (rows); its diagonal is the on-target shift. Nulls: ``n_random`` random unit directions
(seeded per index) at the same scale, summarised per readout e' by their mean and 95th percentile
over directions, and the other emotions' vectors (the off-diagonal). 95% CIs resample frames, then
items within frames (percentile bootstrap) for the on-target shift and for the null's mean and 95th
percentile. Cost: the KL divergence KL(clean || steered) of the full next-token distribution at the
last position, on up to ``kl_prompts`` neutral held-out prompts; also over the vocabulary without the
four label tokens (renormalised), which steering the readout is not meant to move. The same run
ablates the emotion subspace at each steered index (:mod:`emolens.ablation`).

Inputs: a model, the dataset, its phase-2 activations. Output: ``results/<p>/steering/<m>.json``
(:data:`SCHEMA`), read by :mod:`emolens.transfer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from emolens import EMOTIONS
from emolens.ablation import ablation_index, calibrated_accuracy, emotion_basis, fit_probes, random_basis
from emolens.dataset import frame_groups
from emolens.edits import Edited, Prompts, clean_run, prepare_prompts, run_edits
from emolens.heads import frame_split
from emolens.io import load_pickle, provenance, save_json
from emolens.models import ModelAdapter
from emolens.readout import DEFAULT, Readout
from emolens.resampling import codes_of, two_stage_weights
from emolens.vectors import emotion_vectors, join_records

log = logging.getLogger(__name__)
SCHEMA = "emolens.steering/1"
ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
K = len(EMOTIONS)
VANISH = 1e-6  # a vector shorter than this times the typical norm is no direction (index 0 of rotary models)


# --- split and fit-half statistics -------------------------------------------------------------------
def select_items(records: Sequence[dict[str, Any]], max_prompts: int | None, seed: int) -> list[dict[str, Any]]:
    """Whole items, a seeded random choice, until at most ``max_prompts`` prompts (at least one item)."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_item.setdefault(r["item_id"], []).append(r)
    if max_prompts is None or len(records) <= max_prompts:
        return list(records)
    keep: set[str] = set()
    count = 0
    for item in np.random.default_rng([seed, 13]).permutation(sorted(by_item)):
        if keep and count + len(by_item[item]) > max_prompts:
            break
        keep.add(item)
        count += len(by_item[item])
    return [r for r in records if r["item_id"] in keep]


def typical_norms(x: np.ndarray) -> np.ndarray:
    """[N, S, d] fit-half last-token activations -> [S] median residual norm per index."""
    return np.median(np.linalg.norm(x, axis=-1), axis=0)


def unit(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v, dtype=np.float64), where=n > 0)


def random_directions(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """[n, d] random unit directions (isotropic)."""
    return unit(rng.standard_normal((n, d)))


def steer_layers(n_layers: int, stride: int) -> list[int]:
    """Residual indices steered: every ``stride``-th from 0, and always the last (L)."""
    return sorted(set(range(0, n_layers + 1, stride)) | {n_layers})


# --- readout measures and item-level statistics -----------------------------------------------------
def readout_measures(labels: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label logits [..., 4] -> (calibrated probability, LD of each label against the mean of the other three)."""
    z = labels - offsets
    prob = np.exp(z - z.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    ld = z - (z.sum(-1, keepdims=True) - z) / (K - 1)
    return prob, ld


def item_matrix(items: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[I, P] averaging matrix (row i: 1/n_i on item i's prompts) and the item names, in first-seen order."""
    names = list(dict.fromkeys(items.tolist()))
    onehot = (items[None, :] == np.array(names)[:, None]).astype(np.float64)
    return onehot / onehot.sum(1, keepdims=True), names


def bootstrap_weights(records: Sequence[dict[str, Any]], items: Sequence[str], n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """[B, I] weights of ``items`` in a two-stage resample (frames, then items within frames), each row
    summing to 1: the resampled item-mean of a per-item value v [I] is W @ v."""
    frame_of = dict(zip((r["item_id"] for r in records), frame_groups(list(records)), strict=True))
    weights = two_stage_weights(codes_of([frame_of[i] for i in items]), n_boot, rng)
    return weights / weights.sum(1, keepdims=True)


def percentile_ci(boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval over the first axis."""
    return np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)


def shift_summary(shift: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Summaries of item-mean shifts [A, 4 + R, I, 4] (alphas, emotion vectors then random directions, items,
    readouts): specificity [A, 4, 4], on-target [A, 4] with CI, the random null's mean and 95th percentile
    over directions [A, 4] with CIs, and the specificity index (diagonal minus mean off-diagonal) [A]."""
    point = shift.mean(2)  # [A, D, 4]
    spec = point[:, :K]  # [A, 4, 4]
    diag = np.stack([shift[:, e, :, e] for e in range(K)], axis=-1)  # [A, I, 4]
    boot_on = np.einsum("bi,aie->bae", weights, diag)
    out = {"specificity": spec, "on_target": np.einsum("aee->ae", spec)}
    out["on_target_ci_low"], out["on_target_ci_high"] = percentile_ci(boot_on)
    off = ~np.eye(K, dtype=bool)
    out["specificity_index"] = out["on_target"].mean(-1) - spec[:, off].mean(-1)
    if shift.shape[1] > K:
        rand = point[:, K:]  # [A, R, 4]
        boot_r = np.einsum("bi,arie->bare", weights, shift[:, K:])
        out["random_mean"], out["random_q95"] = rand.mean(1), np.quantile(rand, 0.95, axis=1)
        out["random_mean_ci_low"], out["random_mean_ci_high"] = percentile_ci(boot_r.mean(2))
        out["random_q95_ci_low"], out["random_q95_ci_high"] = percentile_ci(np.quantile(boot_r, 0.95, axis=2))
        out["beats_random"] = out["on_target_ci_low"] > out["random_q95"]
    return out


# --- steering at one index ------------------------------------------------------------------------
def steer_index(adapter: ModelAdapter, prompts: Prompts, clean: Edited, layer: int, directions: np.ndarray,
                alphas: Sequence[float], norm: float, batch_size: int = 32) -> Edited:
    """Steer along each unit direction [D, d] at every alpha > 0 (rows alpha-major); alpha 0 is ``clean``.

    Returns the run with C = len(alphas) * D conditions; alpha-0 conditions copy the clean run.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    moving = alphas != 0
    adds = (alphas[moving, None, None] * norm * directions[None]).reshape(-1, directions.shape[-1])
    n_dir = len(directions)
    labels = np.repeat(clean.labels, len(alphas) * n_dir, axis=0)
    zeros = np.where(prompts.kl_row >= 0, 0.0, np.nan)[None]  # [1, P]: the clean run's KL from itself
    kl, kl_nl = (np.repeat(zeros, len(alphas) * n_dir, axis=0) for _ in range(2))
    if len(adds):
        run = run_edits(adapter, prompts, layer, add=adds, clean=clean, batch_size=batch_size)
        rows = (np.flatnonzero(moving)[:, None] * n_dir + np.arange(n_dir)).ravel()
        labels[rows], kl[rows], kl_nl[rows] = run.labels, run.kl, run.kl_nonlabel
    return Edited(labels, kl, kl_nl, {})


def steering_shifts(edited: Edited, clean: Edited, prompts: Prompts, offsets: np.ndarray, averaging: np.ndarray,
                    n_alphas: int) -> dict[str, np.ndarray]:
    """Item-mean shifts {"ld", "prob"} [A, D, I, 4] and mean KLs over the KL prompts {"kl", "kl_nonlabel"} [A, D]."""
    prob0, ld0 = readout_measures(clean.labels[0], offsets)
    prob, ld = readout_measures(edited.labels, offsets)  # [C, P, 4]
    out = {}
    for name, value, ref in (("ld", ld, ld0), ("prob", prob, prob0)):
        items = np.einsum("ip,cpe->cie", averaging, value - ref)  # [C, I, 4]
        out[name] = items.reshape(n_alphas, -1, *items.shape[1:])
    kl_mask = prompts.kl_row >= 0
    for name, value in (("kl", edited.kl), ("kl_nonlabel", edited.kl_nonlabel)):
        mean = value[:, kl_mask].mean(1) if kl_mask.any() else np.full(len(value), np.nan)
        out[name] = mean.reshape(n_alphas, -1)
    return out



# --- run ----------------------------------------------------------------------------------------------
@dataclass
class Split:
    """A model's records in activation order, split by item; the fit half's last-token activations."""

    records: list[dict[str, Any]]
    fit_rows: np.ndarray  # [N_fit] rows of the activations
    held_rows: np.ndarray  # [N_held]
    heldout: list[dict[str, Any]]  # the measured held-out records (whole items, at most max_prompts)
    fit_emotions: list[str]


def split_records(records: Sequence[dict[str, Any]], act: dict[str, Any], activations: str | Path,
                  dataset: str | Path, seed: int, max_prompts: int | None) -> Split:
    """Join records to activations, split whole frames into halves (heads.frame_split), choose the measured items."""
    joined = join_records(records, act, activations, dataset)
    fit, held = frame_split(joined, seed)
    row = {r["id"]: i for i, r in enumerate(joined)}
    return Split(joined, np.array([row[r["id"]] for r in fit]), np.array([row[r["id"]] for r in held]),
                 select_items(held, max_prompts, seed), [r["emotion"] for r in fit])


def _best_layer(on_target: np.ndarray, layers: Sequence[int]) -> tuple[int, list[int]]:
    """Index (position in ``layers``) where the mean on-target shift [Lsel, 4] is largest, and the band of
    indices reaching half of it."""
    score = on_target.mean(-1)
    best = int(np.nanargmax(score))
    band = [layers[i] for i in range(len(layers)) if score[best] > 0 and score[i] >= 0.5 * score[best]]
    return best, band or [layers[best]]


def _nearest(alphas: Sequence[float], target: float) -> float:
    moving = [a for a in alphas if a != 0]
    return float(min(moving, key=lambda a: (abs(a - target), a))) if moving else 0.0


MEASURES = {
    "readout_shift.<ld|prob>.specificity": "[layer][alpha][4][4]: item-mean shift (steered - clean) of readout e' "
                                           "(columns) under the vector of emotion e (rows); ld = logit difference of "
                                           "e' against the mean of the other three labels, prob = calibrated "
                                           "probability",
    "readout_shift.<ld|prob>.on_target": "[layer][alpha][4]: the diagonal, with frame-then-item bootstrap 95% CIs",
    "readout_shift.<ld|prob>.random_mean / random_q95": "[layer][alpha][4]: mean and 95th percentile over random "
                                                        "unit directions (same scale) of their shift of readout e', "
                                                        "with frame-then-item bootstrap 95% CIs",
    "readout_shift.<ld|prob>.beats_random": "[layer][alpha][4]: on-target CI low > random_q95",
    "readout_shift.<ld|prob>.specificity_index": "[layer][alpha]: mean diagonal - mean off-diagonal",
    "kl": "[layer][alpha](...): mean KL(clean || steered) of the full next-token distribution at the last position "
          "over the neutral KL prompts; nonlabel: over tokens other than the four labels, renormalised",
    "ablation": "per ablated index: calibrated readout accuracy (the run's own offsets) and probe accuracy at each "
                "later probed index, emotion subspace vs random subspaces of the same dimension",
}


def run_steering(adapter: ModelAdapter, records: Sequence[dict[str, Any]], activations: str | Path,
                 out_json: str | Path, *, alphas: Sequence[float] = ALPHAS, layer_stride: int = 1, n_random: int = 20,
                 max_prompts: int | None = None, kl_prompts: int = 24, n_random_subspaces: int = 5,
                 n_boot: int = 1000, transfer_alpha: float = 2.0, seed: int = 0, batch_size: int = 32,
                 readout: Readout = DEFAULT, dataset: str | Path = "dataset",
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steering dose-response, specificity, KL cost and directional ablation of one model; save the JSON."""
    started = time.time()
    act = load_pickle(activations, schema="emolens.activations/2")
    if (act["n_layers"], act["d_model"]) != (adapter.n_layers, adapter.d_model):
        raise ValueError(f"{activations}: {act['n_layers']} layers x {act['d_model']} do not match {adapter.name} "
                         f"({adapter.n_layers} x {adapter.d_model}); extract the activations again")
    split = split_records(records, act, activations, dataset, seed, max_prompts)
    x_fit = act["resid"]["last"][split.fit_rows].astype(np.float64)  # [N_fit, L+1, d]
    del act
    vectors = emotion_vectors(x_fit, split.fit_emotions)  # [4, L+1, d]
    norms = typical_norms(x_fit)  # [L+1]
    vnorm = np.linalg.norm(vectors, axis=-1)  # [4, L+1]
    candidates = steer_layers(adapter.n_layers, layer_stride)
    layers = [m for m in candidates if norms[m] > 0 and (vnorm[:, m] > VANISH * norms[m]).all()]
    skipped = [m for m in candidates if m not in layers]
    if not layers:
        raise ValueError(f"{adapter.name}: the emotion vectors vanish at every steered index {candidates}")
    alphas = sorted({float(a) for a in alphas} | {0.0})
    alpha_ref = _nearest(alphas, transfer_alpha)
    prompts = prepare_prompts(adapter, split.heldout, readout, kl_prompts)
    averaging, items = item_matrix(prompts.items)
    weights = bootstrap_weights(split.heldout, items, n_boot, np.random.default_rng([seed, 2]))
    log.info("%s: steering at %d indices %s (skipped %s), alphas %s, %d emotion + %d random directions, on %d "
             "held-out prompts (%d items, %d KL prompts); fit half %d prompts", adapter.name, len(layers), layers,
             skipped, alphas, K, n_random, len(prompts), len(items), int((prompts.kl_row >= 0).sum()), len(x_fit))
    clean = clean_run(adapter, prompts, capture=layers, batch_size=batch_size)
    offsets = clean.labels[0].mean(0)  # [4]: behaviour.py's calibration, on the clean held-out run
    probes = fit_probes(x_fit, split.fit_emotions, layers, seed)
    truth_labels = np.asarray(EMOTIONS)[prompts.truth]
    probe_clean = {m: float((probes[m].predict(clean.acts[m][0]) == truth_labels).mean()) for m in layers}
    per_layer, ablation = [], []
    for m in tqdm(layers, desc=f"steering {adapter.name}"):
        dirs = np.concatenate([unit(vectors[:, m]),
                               random_directions(n_random, adapter.d_model, np.random.default_rng([seed, 3, m]))])
        run = steer_index(adapter, prompts, clean, m, dirs, alphas, float(norms[m]), batch_size)
        shifts = steering_shifts(run, clean, prompts, offsets, averaging, len(alphas))
        per_layer.append({"ld": shift_summary(shifts["ld"], weights), "prob": shift_summary(shifts["prob"], weights),
                          "kl": shifts["kl"], "kl_nonlabel": shifts["kl_nonlabel"]})
        basis = emotion_basis(x_fit[:, m], split.fit_emotions)
        rng = np.random.default_rng([seed, 4, m])
        bases = np.stack([basis] + [random_basis(len(basis), adapter.d_model, rng) for _ in range(n_random_subspaces)])
        ablation.append(ablation_index(adapter, prompts, clean, m, bases, probes, weights, averaging, offsets,
                                       batch_size) | {"k": len(basis)})
    shift = {metric: {key: np.stack([p[metric][key] for p in per_layer]) for key in per_layer[0][metric]}
             for metric in ("ld", "prob")}
    kl = {}
    for suffix, name in (("", "kl"), ("_nonlabel", "kl_nonlabel")):
        values = np.stack([p[name] for p in per_layer])  # [layer, alpha, 4 + R]
        kl[f"emotion{suffix}"] = values[..., :K]
        kl[f"random_mean{suffix}"] = values[..., K:].mean(-1)
        kl[f"random_q95{suffix}"] = np.quantile(values[..., K:], 0.95, axis=-1)
    a_ref = alphas.index(alpha_ref)
    best, band = _best_layer(shift["ld"]["on_target"][:, a_ref], layers)
    result = {
        "schema": SCHEMA, "model": adapter.name, "n_layers": adapter.n_layers, "d_model": adapter.d_model,
        "quantization": adapter.quantization, "emotions": list(EMOTIONS),
        "layers": layers, "relative_depth": [m / adapter.n_layers for m in layers], "skipped_layers": skipped,
        "alphas": alphas, "alpha_ref": alpha_ref,
        "split": {"method": "heads.frame_split (seeded, by frame, stratified by register): vectors, norms, subspaces "
                            "and probes fit on the fit half; measured on whole held-out frames",
                  "n_fit_prompts": len(split.fit_rows), "n_heldout_prompts_available": len(split.held_rows),
                  "n_prompts": len(prompts), "n_items": len(items), "heldout_items": items,
                  "n_kl_prompts": int((prompts.kl_row >= 0).sum())},
        "n_random": n_random, "n_boot": n_boot,
        "typical_norm": norms[layers], "vector_norm": vnorm[:, layers].T,
        "calibration_offsets": dict(zip(EMOTIONS, offsets.tolist(), strict=True)),
        "clean": {"accuracy_calibrated": float(calibrated_accuracy(clean.labels[0], prompts.truth)),
                  "accuracy_raw": float((clean.labels[0].argmax(-1) == prompts.truth).mean()),
                  "probe_accuracy": [probe_clean[m] for m in layers]},
        "readout_shift": shift,
        "kl": kl,
        "best": {
            "layer": layers[best], "relative_depth": layers[best] / adapter.n_layers, "alpha": alpha_ref,
            "effective_band": band, "effective_band_relative_depth": [min(band) / adapter.n_layers,
                                                                      max(band) / adapter.n_layers],
            "on_target_ld": shift["ld"]["on_target"][best, a_ref],
            "on_target_ld_ci_low": shift["ld"]["on_target_ci_low"][best, a_ref],
            "on_target_ld_ci_high": shift["ld"]["on_target_ci_high"][best, a_ref],
            "random_ld_q95": shift["ld"]["random_q95"][best, a_ref],
            "beats_random": shift["ld"]["beats_random"][best, a_ref],
            "specificity_ld": shift["ld"]["specificity"][best, a_ref],
            "specificity_prob": shift["prob"]["specificity"][best, a_ref],
            "specificity_index_ld": shift["ld"]["specificity_index"][best, a_ref],
            "kl": kl["emotion"][best, a_ref], "kl_random_mean": kl["random_mean"][best, a_ref],
            "kl_nonlabel": kl["emotion_nonlabel"][best, a_ref],
            "ablation_readout_drop": ablation[best]["readout_drop"],
            "ablation_readout_drop_random_mean": ablation[best]["readout_drop_random_mean"],
        },
        "ablation": {
            "basis": "span of the fit half's four emotion class means, centred (= the span of its emotion vectors), "
                     "at the ablated index; projected out at every position",
            "k": [a["k"] for a in ablation], "n_random_subspaces": n_random_subspaces,
            "readout_accuracy_clean": float(calibrated_accuracy(clean.labels[0], prompts.truth)),
            **{key: [a[key] for a in ablation] for key in ablation[0] if key.startswith("readout_")},
            "probe_layers": layers, "probe_accuracy_clean": [probe_clean[m] for m in layers],
            "probe_accuracy": [[a["probe_accuracy"].get(m) for m in layers] for a in ablation],
            "probe_accuracy_random_mean": [[a["probe_accuracy_random_mean"].get(m) for m in layers] for a in ablation],
        },
        "measures": MEASURES,
        "readout": readout.as_dict(), "label_token_ids": dict(zip(EMOTIONS, prompts.token_ids, strict=True)),
        "provenance": provenance(settings or {}, started, model=adapter.name),
    }
    save_json(result, out_json)
    b = result["best"]
    log.info("%s: steering strongest at index %d (depth %.2f, band %s) at alpha %g: on-target LD shift %s "
             "(random q95 %s), specificity index %.3f, KL %s; ablation there: readout drop %.3f (random %.3f)",
             adapter.name, b["layer"], b["relative_depth"], band, alpha_ref, np.round(b["on_target_ld"], 3),
             np.round(b["random_ld_q95"], 3), b["specificity_index_ld"], np.round(b["kl"], 4),
             b["ablation_readout_drop"], b["ablation_readout_drop_random_mean"])
    log.info("wrote %s in %.1f s", out_json, time.time() - started)
    return result

