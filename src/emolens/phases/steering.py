"""Steering: do the emotion vectors cause anything? Dose-response, specificity and cost of adding them.

Method. The frames are split once, seeded and stratified by register (:func:`emolens.stats.resampling.frame_split`),
into a fit half and a held-out half. Everything estimated comes from the fit half's phase-2 activations
(last token, every residual index): the emotion vectors (mean of one emotion minus the mean of the
others, :func:`emolens.stats.geometry.emotion_vectors`), the dose unit along each direction (the standard
deviation of the residual projected on it, :mod:`emolens.stats.steering_stats`), the nulls, the emotion
subspace and probes. Readout prompts (``readout.prompt(text)``, whole items, at most ``max_prompts``
per half) are measured in both halves.

Steering. At residual index l (every ``layer_stride``-th and the last), the hook adds alpha * sd(u) * u
at every position for each unit direction u, alpha on a grid in projection-sd units. Alpha 0 is the
clean run, the reference of every shift. Readout, per label e': the calibrated probability (label
logits minus each label's mean clean logit over the measured prompts, as :mod:`emolens.phases.behaviour`
calibrates) and the logit difference of e' against the mean of the other labels; shifts are averaged
within items, then over items. Cost: KL(clean || steered) of the next-token distribution at the last
position on up to ``kl_prompts`` neutral prompts (of any emotion where the run has no neutral), also over
the vocabulary without the label tokens
(off-label KL). The (index, dose) every summary uses is chosen on the fit half's prompts: the largest
on-target shift whose off-label KL stays within ``kl_budget`` (:func:`emolens.stats.steering_stats.choose_dose`),
with the half-max dose there for transfer; the held-out half then gives the dose-response at every
index (with ``n_random`` isotropic directions for comparison) and, at the chosen point, the on-target
shift, both specificity forms, the steerable fraction of items and ``n_null`` directions of each
matched null. 95% CIs resample frames, then items within frames. The same run ablates the emotion
subspace at each steered index (:mod:`emolens.phases.ablation`), and measures the chosen vector under other readout
templates and a second choice at relative depth ``max_depth`` or less (:mod:`emolens.phases.steering_robust`).

Inputs: a model, the dataset, its phase-2 activations. Output: ``results/<p>/steering/<m>.json``
(:data:`SCHEMA`), read by :mod:`emolens.phases.transfer`.
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

from emolens.data.readout import DEFAULT, Readout
from emolens.engine.steered import VANISH, Measured, dose_steps, measure, shifts_at, typical_norms
from emolens.io import load_pickle, provenance, save_json
from emolens.model.adapter import ModelAdapter
from emolens.phases.ablation import (
    ablation_index,
    calibrated_accuracy,
    emotion_basis,
    fit_probes,
    matched_null,
    random_basis,
)
from emolens.phases.steering_robust import template_shift, within_depth
from emolens.phases.vectors import join_records
from emolens.stats.geometry import emotion_vectors
from emolens.stats.resampling import frame_groups, frame_split
from emolens.stats.steering_stats import (
    ItemBootstrap,
    choose_dose,
    chosen_dose_tests,
    gaussian_directions,
    item_bootstrap,
    on_target,
    permuted_vectors,
    projection_sd,
    random_directions,
    register_bootstraps,
    shift_summary,
)

log = logging.getLogger(__name__)
SCHEMA = "emolens.steering/2"
ALPHAS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)  # projection-sd units


# --- the measured items and the steered indices ----------------------------------------------------
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


def steer_layers(n_layers: int, stride: int) -> list[int]:
    """Residual indices steered: every ``stride``-th from 0, and always the last (L)."""
    return sorted(set(range(0, n_layers + 1, stride)) | {n_layers})


# --- run ----------------------------------------------------------------------------------------------
@dataclass
class Split:
    """A model's records in activation order, split by frame; the measured items of each half."""

    records: list[dict[str, Any]]
    fit_rows: np.ndarray  # [N_fit] rows of the activations
    held_rows: np.ndarray  # [N_held]
    fit_measured: list[dict[str, Any]]  # fit-half records the dose is chosen on (whole items, at most max_prompts)
    heldout: list[dict[str, Any]]  # the measured held-out records (whole items, at most max_prompts)
    fit_emotions: list[str]
    fit_frames: list[str]


def split_records(records: Sequence[dict[str, Any]], act: dict[str, Any], activations: str | Path,
                  dataset: str | Path, seed: int, max_prompts: int | None) -> Split:
    """Join records to activations, split whole frames into halves (:func:`frame_split`), choose the measured items."""
    joined = join_records(records, act, activations, dataset)
    fit, held = frame_split(joined, seed)
    row = {r["id"]: i for i, r in enumerate(joined)}
    return Split(joined, np.array([row[r["id"]] for r in fit]), np.array([row[r["id"]] for r in held]),
                 select_items(fit, max_prompts, seed), select_items(held, max_prompts, seed),
                 [r["emotion"] for r in fit], frame_groups(fit))


def _band(score: np.ndarray, layers: Sequence[int]) -> list[int]:
    """Indices whose fit-half mean on-target shift [S] reaches half of the largest (descriptive)."""
    top = float(np.max(score))
    return [m for m, v in zip(layers, score, strict=True) if top > 0 and v >= 0.5 * top]


LD_NAMES = {"on_target": "on_target_ld", "on_target_ci_low": "on_target_ld_ci_low",
            "on_target_ci_high": "on_target_ld_ci_high", "specificity": "specificity_ld"}  # best: LD readouts
MEASURES = {
    "alphas": "doses in projection-sd units: alpha x the standard deviation of the fit half's residual projected on "
              "the direction, at the steered index (norm_ratio: the added vector's length over the typical norm)",
    "readout_shift.<ld|prob>.specificity": "[layer][alpha][n][n] (n emotions, in 'emotions' order), held-out half: "
                                           "item-mean shift (steered - clean) of readout e' (columns) under the vector "
                                           "of emotion e (rows); ld = logit difference of e' against the mean of the "
                                           "other labels, prob = calibrated probability",
    "readout_shift.<ld|prob>.on_target": "[layer][alpha][n]: the diagonal, with frame-then-item bootstrap 95% CIs",
    "readout_shift.<ld|prob>.random_mean / random_q95": "[layer][alpha][n]: mean and 95th percentile over isotropic "
                                                        "directions (each at its own projection sd) of their shift "
                                                        "of readout e': a comparison, not the test",
    "selection": "the (index, dose) chosen on the fit half: largest mean on-target LD shift with off-label KL (largest "
                 "over the emotion vectors) within kl_budget; half_max_alpha: the smallest dose reaching half of the "
                 "index's largest fit-half shift (transfer runs there)",
    "best": "the held-out half at the chosen (index, dose): on-target LD shift with CI and rank p per readout under "
            "each null (permuted: label-permuted mean differences by frame; gaussian: N(0, fit covariance); "
            "isotropic); specificity_row = M[e,e] - max other readout under v_e, specificity_column = M[e,e] - max "
            "over other vectors on readout e, with CIs and p under the permuted null; steerable: fraction of items "
            "whose on-target shift is positive, with CI",
    "kl": "[layer][alpha](...): mean KL(clean || steered) of the full next-token distribution at the last position "
          "over the KL prompts (neutral ones where the run has neutral); nonlabel: over tokens other than the labels, "
          "renormalised",
    "best_within_depth": "the same choice rule among the steered indices at relative depth max_depth or less (the "
                         "last index edits the readout's own input), with best's held-out tests against the "
                         "label-permuted null (all of best's where it is the same point); layer null where no steered "
                         "index is that shallow",
    "template_shift": "per readout template (steering.templates: another suffix, the same label words), at the chosen "
                      "(index, dose): the clean calibrated and raw readout accuracy under it, and the held-out tests "
                      "of best against its label-permuted null (the same directions and bootstrap) read through it",
    "ablation": "per ablated index: calibrated readout accuracy (the run's own offsets) and probe accuracy at each "
                "later probed index, emotion subspace vs random subspaces of the same dimension; at the chosen "
                "index (best.ablation_null), against label-permuted emotion subspaces and random subspaces matched "
                "in removed variance, with rank p-values",
}


def choose_on_fit_half(adapter: ModelAdapter, fit: Measured, x_fit: np.ndarray, vectors: np.ndarray,
                       layers: Sequence[int], alphas: Sequence[float], kl_budget: float,
                       batch_size: int) -> dict[str, Any]:
    """The fit half's dose-response of the emotion vectors at every index, and the (index, dose) chosen on it."""
    on, kl = [], []
    for m in tqdm(layers, desc=f"choosing the dose, {adapter.name}"):
        shift = shifts_at(adapter, fit, m, dose_steps(x_fit[:, m], vectors[:, m]), alphas, batch_size)
        on.append(on_target(shift["ld"]).mean(-2))  # [A, n_emotions]
        kl.append(shift["kl_nonlabel"])  # [A, n_emotions]
    on_fit, kl_fit = np.stack(on), np.stack(kl)  # [S, A, n_emotions]
    choice = choose_dose(on_fit, kl_fit, alphas, kl_budget)
    layer = layers[choice["position"]]
    return {"kl_budget": kl_budget, "layer": layer, "alpha": alphas[choice["alpha_position"]],
            "half_max_alpha": alphas[choice["half_max_position"]], **choice,
            "n_prompts": len(fit.prompts), "n_items": len(fit.items),
            "n_kl_prompts": int((fit.prompts.kl_row >= 0).sum()),
            "effective_band": _band(on_fit[:, choice["alpha_position"]].mean(-1), layers),
            "on_target_ld": on_fit.mean(-1), "kl_nonlabel_max": kl_fit.max(-1)}


def null_tests(adapter: ModelAdapter, held: Measured, split: Split, x: np.ndarray, vectors: np.ndarray, layer: int,
               alpha: float, n_null: int, boot: ItemBootstrap, seed: int, batch_size: int,
               n_perm: int | None = None, which: Sequence[str] = ("permuted", "gaussian", "isotropic")
               ) -> dict[str, Any]:
    """At the chosen (index, dose), on the held-out half: the emotion vectors and ``n_null`` directions of each
    matched null in one batched run (``n_perm`` label permutations, default n_null // n_emotions), and every test on
    them (:func:`chosen_dose_tests`); ``which`` nulls only (the permuted one is drawn first, so it is the same
    whichever others run)."""
    rng = np.random.default_rng([seed, 7, layer])
    k = len(vectors)  # the run's emotions
    n_perm = n_perm or max(n_null // k, 1)
    nulls = {"permuted": permuted_vectors(x, split.fit_emotions, split.fit_frames, n_perm, rng).reshape(-1, x.shape[1]),
             "gaussian": gaussian_directions(x, n_null, rng),
             "isotropic": random_directions(n_null, x.shape[1], rng)}
    nulls = {name: dirs for name, dirs in nulls.items() if name in which}
    directions = np.concatenate([vectors, *nulls.values()])
    shift = shifts_at(adapter, held, layer, dose_steps(x, directions), [alpha], batch_size)["ld"][0]  # [D, I, n]
    blocks, start = {}, k
    for name, dirs in nulls.items():
        blocks[name], start = shift[start:start + len(dirs)], start + len(dirs)
    return chosen_dose_tests(shift[:k], blocks, boot) | {
        "n_null": n_null, "n_permutations": n_perm,
        "by_register": register_tests(shift[:k], blocks, split.heldout, held.items, len(boot.weights), seed)}


def register_tests(emotion: np.ndarray, nulls: dict[str, np.ndarray], heldout: Sequence[dict[str, Any]],
                   items: Sequence[str], n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """:func:`chosen_dose_tests` on each register's held-out items alone (item shifts [D, I, n]), each with its own
    frame-then-item bootstrap: the same directions, no new forward."""
    return {register: chosen_dose_tests(emotion[:, rows], {n: b[:, rows] for n, b in nulls.items()}, boot)
            for register, (rows, boot) in register_bootstraps(heldout, items, n_boot, seed).items()}


def run_steering(adapter: ModelAdapter, records: Sequence[dict[str, Any]], activations: str | Path,
                 out_json: str | Path, *, alphas: Sequence[float] = ALPHAS, layer_stride: int = 1, n_random: int = 20,
                 n_null: int = 200, max_prompts: int | None = None, kl_prompts: int = 24, kl_budget: float = 0.5,
                 n_random_subspaces: int = 5, n_boot: int = 1000, seed: int = 0, batch_size: int = 32,
                 readout: Readout = DEFAULT, dataset: str | Path = "dataset", templates: Sequence[str] = (),
                 max_depth: float = 0.75, n_perm: int | None = None,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steering dose-response, the chosen dose's tests, KL cost and directional ablation of one model; save the JSON."""
    started = time.time()
    act = load_pickle(activations, schema="emolens.activations/2")
    if (act["n_layers"], act["d_model"]) != (adapter.n_layers, adapter.d_model):
        raise ValueError(f"{activations}: {act['n_layers']} layers x {act['d_model']} do not match {adapter.name} "
                         f"({adapter.n_layers} x {adapter.d_model}); extract the activations again")
    split = split_records(records, act, activations, dataset, seed, max_prompts)
    x_fit = act["resid"]["last"][split.fit_rows].astype(np.float64)  # [N_fit, L+1, d]
    del act
    emotions = readout.emotions
    vectors = emotion_vectors(x_fit, split.fit_emotions)  # [n_emotions, L+1, d]
    if len(vectors) != len(emotions):
        raise ValueError(f"the fit half holds the emotions {sorted(set(split.fit_emotions))}, not readout.labels' "
                         f"{sorted(emotions)}")
    norms = typical_norms(x_fit)  # [L+1]
    vnorm = np.linalg.norm(vectors, axis=-1)  # [n_emotions, L+1]
    candidates = steer_layers(adapter.n_layers, layer_stride)
    layers = [m for m in candidates if norms[m] > 0 and (vnorm[:, m] > VANISH * norms[m]).all()]
    skipped = [m for m in candidates if m not in layers]
    if not layers:
        raise ValueError(f"{adapter.name}: the emotion vectors vanish at every steered index {candidates}")
    alphas = sorted({float(a) for a in alphas} | {0.0})
    sd = np.stack([projection_sd(x_fit[:, m], vectors[:, m]) for m in layers])  # [S, n_emotions]
    log.info("%s: steering at %d indices %s (skipped %s), alphas %s (projection sd), fit half %d prompts",
             adapter.name, len(layers), layers, skipped, alphas, len(x_fit))
    fit = measure(adapter, split.fit_measured, readout, kl_prompts, batch_size=batch_size)
    selection = choose_on_fit_half(adapter, fit, x_fit, vectors, layers, alphas, kl_budget, batch_size)
    held = measure(adapter, split.heldout, readout, kl_prompts, capture=layers, batch_size=batch_size)
    boot = item_bootstrap(split.heldout, held.items, n_boot, np.random.default_rng([seed, 2]))
    probes = fit_probes(x_fit, split.fit_emotions, layers, seed)
    probe_clean = {m: float((probes[m].predict(held.clean.acts[m][0]) == held.prompts.labels).mean()) for m in layers}
    per_layer, ablation = [], []
    for m in tqdm(layers, desc=f"steering {adapter.name}"):
        dirs = np.concatenate([vectors[:, m],
                               random_directions(n_random, adapter.d_model, np.random.default_rng([seed, 3, m]))])
        shifts = shifts_at(adapter, held, m, dose_steps(x_fit[:, m], dirs), alphas, batch_size)
        per_layer.append({"ld": shift_summary(shifts["ld"], boot), "prob": shift_summary(shifts["prob"], boot),
                          "kl": shifts["kl"], "kl_nonlabel": shifts["kl_nonlabel"]})
        basis = emotion_basis(x_fit[:, m], split.fit_emotions)
        rng = np.random.default_rng([seed, 4, m])
        bases = np.stack([basis] + [random_basis(len(basis), adapter.d_model, rng) for _ in range(n_random_subspaces)])
        ablation.append(ablation_index(adapter, held.prompts, held.clean, m, bases, probes, boot, held.averaging,
                                       held.offsets, batch_size) | {"k": len(basis)})
    shift = {metric: {key: np.stack([p[metric][key] for p in per_layer]) for key in per_layer[0][metric]}
             for metric in ("ld", "prob")}
    kl = {}
    for suffix, name in (("", "kl"), ("_nonlabel", "kl_nonlabel")):
        values = np.stack([p[name] for p in per_layer])  # [layer, alpha, n_emotions + R]
        kl[f"emotion{suffix}"] = values[..., :len(emotions)]
        kl[f"random_mean{suffix}"] = values[..., len(emotions):].mean(-1)
    s, a = selection["position"], selection["alpha_position"]
    layer, alpha = layers[s], alphas[a]

    def tests_at(half: Measured, m: int, a: float, *which: str) -> dict[str, Any]:  # the tests at (index m, dose a)
        return null_tests(adapter, half, split, x_fit[:, m], vectors[:, m], m, a, n_null, boot, seed, batch_size,
                          n_perm, which or ("permuted", "gaussian", "isotropic"))

    def ld(tests: dict[str, Any]) -> dict[str, Any]:
        return {LD_NAMES.get(k, k): {g: ld(t) for g, t in v.items()} if k == "by_register" else v
                for k, v in tests.items()}

    tests = tests_at(held, layer, alpha)
    inner = within_depth(selection, layers, alphas, adapter.n_layers, max_depth, tests, held, tests_at)
    shifted = template_shift(adapter, split.heldout, readout, templates, kl_prompts, layer, alpha, tests_at,
                             held.items, batch_size)
    ablation_null = matched_null(adapter, held.prompts, held.clean, layer, x_fit[:, layer], split.fit_emotions,
                                 split.fit_frames, probes, n_null, seed, batch_size)
    clean_accuracy = float(calibrated_accuracy(held.clean.labels[0], held.prompts.truth))
    result = {
        "schema": SCHEMA, "model": adapter.name, "n_layers": adapter.n_layers, "d_model": adapter.d_model,
        "quantization": adapter.quantization, "emotions": list(emotions),
        "layers": layers, "relative_depth": [m / adapter.n_layers for m in layers], "skipped_layers": skipped,
        "alphas": alphas, "dose_unit": "projection sd", "projection_sd": sd,
        "norm_ratio": sd / norms[layers][:, None],  # [S, n_emotions]: one dose unit's length over the typical norm
        "selection": selection,
        "split": {"method": "resampling.frame_split (seeded, by frame, stratified by register): vectors, doses, nulls, "
                            "subspaces and probes fit on the fit half; the dose chosen on fit-half prompts; measured "
                            "on whole held-out frames",
                  "n_fit_prompts": len(split.fit_rows), "n_heldout_prompts_available": len(split.held_rows),
                  "n_prompts": len(held.prompts), "n_items": len(held.items), "heldout_items": held.items,
                  "n_kl_prompts": int((held.prompts.kl_row >= 0).sum())},
        "n_random": n_random, "n_boot": n_boot,
        "typical_norm": norms[layers], "vector_norm": vnorm[:, layers].T,
        "calibration_offsets": dict(zip(emotions, held.offsets.tolist(), strict=True)),
        "clean": {"accuracy_calibrated": clean_accuracy,
                  "accuracy_raw": float((held.clean.labels[0].argmax(-1) == held.prompts.truth).mean()),
                  "probe_accuracy": [probe_clean[m] for m in layers]},
        "readout_shift": shift,
        "kl": kl,
        "best": {
            "layer": layer, "relative_depth": layer / adapter.n_layers, "alpha": alpha,
            "half_max_alpha": selection["half_max_alpha"], "within_budget": selection["within_budget"],
            "effective_band": selection["effective_band"],
            "norm_ratio": alpha * sd[s] / norms[layer],
            **ld(tests),
            "specificity_prob": shift["prob"]["specificity"][s, a],
            "kl": kl["emotion"][s, a], "kl_nonlabel": kl["emotion_nonlabel"][s, a],
            "ablation_readout_drop": ablation[s]["readout_drop"],
            "ablation_readout_drop_random_mean": ablation[s]["readout_drop_random_mean"],
            "ablation_null": ablation_null,
        },
        "ablation": {
            "basis": "span of the fit half's emotion class means, centred (= the span of its emotion vectors), "
                     "at the ablated index; projected out at every position",
            "k": [ab["k"] for ab in ablation], "n_random_subspaces": n_random_subspaces,
            "readout_accuracy_clean": clean_accuracy,
            **{key: [ab[key] for ab in ablation] for key in ablation[0] if key.startswith("readout_")},
            "probe_layers": layers, "probe_accuracy_clean": [probe_clean[m] for m in layers],
            "probe_accuracy": [[ab["probe_accuracy"].get(m) for m in layers] for ab in ablation],
            "probe_accuracy_random_mean": [[ab["probe_accuracy_random_mean"].get(m) for m in layers]
                                           for ab in ablation],
        },
        "best_within_depth": ld(inner),
        "template_shift": [ld(t) for t in shifted],
        "measures": MEASURES,
        "readout": readout.as_dict(), "label_token_ids": dict(zip(emotions, held.prompts.token_ids, strict=True)),
        "provenance": provenance(settings or {}, started, model=adapter.name),
    }
    save_json(result, out_json)
    b = result["best"]
    log.info("%s: chosen on the fit half: index %d (depth %.2f) at %g sd (KL off-label %.3f, budget %g, within %s); "
             "held out: on-target LD %s [p permuted %s], specificity row %s column %s, steerable %s",
             adapter.name, layer, b["relative_depth"], alpha, selection["fit_kl_nonlabel"], kl_budget,
             b["within_budget"], np.round(b["on_target_ld"], 3), np.round(b["on_target_p_permuted"], 3),
             np.round(b["specificity_row"], 3), np.round(b["specificity_column"], 3),
             np.round(b["steerable"]["fraction"], 2))
    log.info("wrote %s in %.1f s", out_json, time.time() - started)
    return result
