"""Steering transfer: does one model's emotion vector, carried into another model, steer it?

For an ordered pair a -> b, b is steered at the index l_b its steering chose on the fit half, at the
half-max dose there (the smallest dose at which b's own vectors reach half of their largest fit-half
shift: below saturation, where a good map and a bad one differ), and a at the matched relative depth
l_a = round(l_b * L_a / L_b). A ridge map from a's residual space to b's
(:func:`emolens.stats.similarity.fit_linear_map`) is fitted on the paired activations of one part of the
fit half's frames, and a's emotion vectors, from the other part, go through it and steer b (a map fit
on the prompts whose class means it carries reproduces b's class means whenever a decodes the
emotion linearly: its residuals are orthogonal to every linear function of a), each direction dosed
in b's projection-sd units
(:mod:`emolens.stats.steering_stats`). The measure is the fraction of b's own on-target logit-difference
shift that a's mapped vectors achieve (ratio of sums over emotions; CI by resampling frames, then
items), against two nulls carried through the same map: ``n_null`` isotropic directions of a's space
(sets of n standing in for the run's n emotions) and a's label-permuted emotion vectors (labels
permuted by frame, n per permutation), each scored as the fraction is. Inputs: all models'
phase-2 activations and b's steering file. Outputs: ``steering/transfer/into_<b>.json`` (every
source a into b, :data:`TRANSFER_SCHEMA`) and ``steering/transfer/summary.json`` (the model-pair
matrix, :data:`SUMMARY_SCHEMA`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens.data.readout import DEFAULT, Readout
from emolens.engine.steered import VANISH, Measured, dose_steps, measure, shifts_at, typical_norms
from emolens.io import load_pickle, provenance, save_json
from emolens.model.adapter import ModelAdapter
from emolens.phases.alignment import WORDS_PARTIALLED
from emolens.phases.steering import SCHEMA, split_records
from emolens.phases.words import words_of
from emolens.stats.geometry import emotion_vectors
from emolens.stats.resampling import frame_halves, perm_pvalue
from emolens.stats.steering_stats import (
    ItemBootstrap,
    item_bootstrap,
    on_target,
    permuted_vectors,
    random_directions,
    register_bootstraps,
    unit,
)
from emolens.stats.words import words_partialled

log = logging.getLogger(__name__)
TRANSFER_SCHEMA = "emolens.steering_transfer/2"
WORDS_TAG = " (words partialled)"  # a source's words-partialled variant while it is measured
SUMMARY_SCHEMA = "emolens.steering_transfer_summary/1"


def _fraction(m: np.ndarray) -> np.ndarray:
    """Item means [..., 2, n] of (own, mapped) on-target shifts -> the ratio of sums over emotions, mapped over own."""
    return m[..., 1, :].sum(-1) / m[..., 0, :].sum(-1)


def transfer_fraction(own: np.ndarray, mapped: np.ndarray, random: np.ndarray, boot: ItemBootstrap,
                      permuted: np.ndarray | None = None) -> dict[str, Any]:
    """Fraction of b's own on-target shift a's mapped vectors achieve, from item shifts: own and mapped
    [I, n] on-target (n emotions), random [R, I, n] (each random direction's shift on each readout), permuted
    [P, I, n] (each label permutation's n mapped vectors' on-target shifts).

    Per emotion: mapped / own. Overall: ratio of sums over emotions, with a frame-then-item bootstrap CI. Nulls: per
    emotion, each random mapped direction's shift on readout e over own[e]; overall, sets of n random
    mapped directions, one per emotion, scored as the mapped vectors are (a map can send any direction
    into b's emotion subspace; what the null asks is whether it lands on the right emotion).
    """
    k = own.shape[-1]
    own_on, mapped_on = own.mean(0), mapped.mean(0)  # [n]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_emotion = np.where(own_on > 0, mapped_on / own_on, np.nan)
        overall = mapped_on.sum() / own_on.sum() if own_on.sum() > 0 else np.nan
        null = np.where(own_on > 0, random.mean(1) / own_on, np.nan)  # [R, n]: per emotion, over own[e]
        low, high = boot.ci(np.stack([own, mapped], 1), _fraction) if np.isfinite(overall) else (np.nan, np.nan)
    ok = own_on > 0  # a column of the per-emotion null is defined where b's own effect is positive
    null_mean, null_q95 = np.full(k, np.nan), np.full(k, np.nan)
    if len(null):
        null_mean[ok], null_q95[ok] = null[:, ok].mean(0), np.quantile(null[:, ok], 0.95, axis=0)
    # the overall fraction's null: n random directions, one standing in for each emotion, scored as the
    # mapped vectors are (mean over emotions of its shift on that emotion's readout, over b's mean own effect);
    # every assignment of the R directions to the n emotions (R^n), or a seeded sample of them
    sets = np.empty(0)
    if own_on.mean() > 0 and len(random):
        n_r = len(random)
        picks = (np.stack(np.meshgrid(*[np.arange(n_r)] * k, indexing="ij"), -1).reshape(-1, k) if n_r ** k <= 20000
                 else np.random.default_rng(n_r).integers(n_r, size=(20000, k)))
        rand_on = random.mean(1)  # [R, n]
        sets = rand_on[picks, np.arange(k)].mean(1) / own_on.mean()
    q95 = float(np.quantile(sets, 0.95)) if len(sets) else np.nan
    perm = (permuted.mean(1).mean(-1) / own_on.mean() if permuted is not None and len(permuted) and own_on.mean() > 0
            else np.empty(0))  # [P]: each permutation's n vectors, scored as the mapped vectors are
    return {
        "on_target_own": own_on, "on_target_mapped": mapped_on, "fraction": per_emotion,
        "fraction_mean": float(overall), "fraction_ci_low": float(low), "fraction_ci_high": float(high),
        "null_fraction_mean": null_mean, "null_fraction_q95": null_q95,
        "null_fraction_sets_mean": float(sets.mean()) if len(sets) else np.nan,
        "null_fraction_sets_q95": q95,
        "null_p": perm_pvalue(overall, sets) if len(sets) and np.isfinite(overall)
        else np.nan,
        "beats_null": bool(np.isfinite(overall) and np.isfinite(q95) and overall > q95),
        "null_permuted_q95": float(np.quantile(perm, 0.95)) if len(perm) else np.nan,
        "null_p_permuted": perm_pvalue(overall, perm) if len(perm) else np.nan,
    }


def register_fractions(own: np.ndarray, mapped: np.ndarray, random: np.ndarray, permuted: np.ndarray,
                       held_records: Sequence[dict[str, Any]], items: Sequence[str], n_boot: int,
                       seed: int) -> dict[str, dict[str, Any]]:
    """:func:`transfer_fraction` on each register's held-out items alone (own, mapped [I, n]; random [R, I, n];
    permuted [P, I, n]), each with its own frame-then-item bootstrap."""
    return {register: transfer_fraction(own[rows], mapped[rows], random[:, rows], boot, permuted[:, rows])
            for register, (rows, boot) in register_bootstraps(held_records, items, n_boot, seed).items()}


def transfer_effect(adapter: ModelAdapter, held: Measured, xb_fit: np.ndarray, layer: int, alpha: float,
                    own: np.ndarray, carried: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], boot: ItemBootstrap,
                    batch_size: int = 32, held_records: Sequence[dict[str, Any]] = (),
                    seed: int = 0) -> dict[str, Any]:
    """Steer b at ``layer`` with its own vectors [n, d] (n emotions) and, per source, carried vectors [n, d],
    carried random directions [R, d] and carried label-permuted vectors [P * n, d], each dosed alpha projection
    sds of b's fit half ``xb_fit`` [N, d], in one batched run.

    Returns {"own": {on_target [n], CI, specificity [n, n]}, "sources": {name: transfer_fraction(...) +
    specificity_mapped [n, n] + by_register (from ``held_records``, the held-out records)}}.
    """
    k = len(own)
    blocks = [own] + [np.concatenate(dirs) for dirs in carried.values()]
    ld = shifts_at(adapter, held, layer, dose_steps(xb_fit, np.concatenate(blocks)), [alpha], batch_size)["ld"][0]
    own_diag = on_target(ld[:k])  # [I, n]
    low, high = boot.ci(own_diag)
    out: dict[str, Any] = {"own": {"on_target": own_diag.mean(0), "on_target_ci_low": low, "on_target_ci_high": high,
                                   "specificity": ld[:k].mean(1)}, "sources": {}}
    start = k
    for name, (_, random, permuted) in carried.items():
        block = ld[start:start + k + len(random) + len(permuted)]
        start += len(block)
        perm = on_target(block[k + len(random):].reshape(-1, k, *block.shape[1:]))  # [P, I, n]
        mapped_on, random_ld = on_target(block[:k]), block[k:k + len(random)]
        out["sources"][name] = transfer_fraction(own_diag, mapped_on, random_ld, boot, perm) | {
            "specificity_mapped": block[:k].mean(1),
            "by_register": register_fractions(own_diag, mapped_on, random_ld, perm, held_records, held.items,
                                              len(boot.weights), seed)}
    return out


def matched_index(layer_b: int, n_layers_b: int, n_layers_a: int) -> int:
    """a's residual index at the relative depth of b's index (halves round up)."""
    return int(math.floor(layer_b * n_layers_a / n_layers_b + 0.5))


def carry(xa_fit: np.ndarray, xb_fit: np.ndarray, parts: tuple[np.ndarray, np.ndarray], emotions: np.ndarray,
          frames: np.ndarray, n_null: int, n_perm: int, ridge: float,
          rng: np.random.Generator) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], Any]:
    """a's emotion vectors [n, d_a] from the fit half's vector part, a ridge map fit on its map part, and what it
    carries into b's space: the vectors, ``n_null`` random directions and a's label-permuted vectors."""
    from emolens.stats.similarity import fit_linear_map

    map_part, vec_part = parts
    va = emotion_vectors(xa_fit[vec_part, None], emotions)[:, 0]  # [n_emotions, d_a]
    lmap = fit_linear_map(xa_fit[map_part], xb_fit[map_part], ridge)
    rand = lmap.directions(random_directions(n_null, xa_fit.shape[1], rng))
    perm = permuted_vectors(xa_fit[vec_part], emotions, frames, n_perm, rng).reshape(-1, xa_fit.shape[1])
    perm = lmap.directions(perm)
    return (lmap.directions(va), rand, perm), lmap


def run_transfer(adapter: ModelAdapter, records: Sequence[dict[str, Any]], activations: Sequence[str | Path],
                 steering_json: str | Path, out_json: str | Path, *, n_null: int = 200,
                 max_prompts: int | None = None, n_boot: int = 1000, ridge: float = 0.1, seed: int = 0,
                 batch_size: int = 32, readout: Readout = DEFAULT, dataset: str | Path = "dataset",
                 settings: dict[str, Any] | None = None, words: str | Path | None = None) -> dict[str, Any]:
    """Steer model b (``adapter``) with every other model's emotion vectors carried through a ridge map, and with
    ``words`` (the words reference's file) also the vectors of both models with the words partialled out; save."""
    from emolens.stats.similarity import map_r2

    started = time.time()
    name = adapter.name
    paths = {Path(p).stem: Path(p) for p in activations}
    if name not in paths:
        raise ValueError(f"steer-transfer: no activations file named {name}.pkl among {sorted(map(str, paths))}")
    steer = json.loads(Path(steering_json).read_text())
    if steer.get("schema") != SCHEMA or steer.get("model") != name:
        raise ValueError(f"{steering_json}: not the steering file of {name}")
    layer_b, alpha = int(steer["best"]["layer"]), float(steer["best"]["half_max_alpha"])
    act_b = load_pickle(paths[name], schema="emolens.activations/2")
    split = split_records(records, act_b, paths[name], dataset, seed, max_prompts)
    items_b = sorted({str(r["item_id"]) for r in split.heldout})
    if items_b != sorted(steer["split"]["heldout_items"]):
        raise ValueError(f"{steering_json} was measured on other held-out items than this run would use; run "
                         f"steer-transfer with the steering job's seed and max-prompts")
    resid_b = act_b["resid"]["last"][:, layer_b].astype(np.float64)  # [N, d_b]
    ids = list(act_b["ids"])
    features, xb_fit = words_of(words, ids), resid_b[split.fit_rows]
    if features is not None:  # phase 4's halves cross-fit the words' map
        halves = frame_halves(act_b["frames"], act_b.get("registers"), seed)
        xb_words = words_partialled(resid_b, features, halves, ridge)[split.fit_rows]
    del act_b
    own = emotion_vectors(xb_fit[:, None], split.fit_emotions)[:, 0]  # [n_emotions, d_b]
    n_perm = max(n_null // len(own), 1)  # label permutations, n_emotions vectors each
    map_part, vec_part = frame_halves(split.fit_frames, [split.records[i].get("register") for i in split.fit_rows],
                                      seed + 1)  # the map never sees the frames whose class means it carries
    emotions, frames = np.asarray(split.fit_emotions)[vec_part], np.asarray(split.fit_frames)[vec_part]
    carried: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    meta: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for source, path in paths.items():
        if source == name:
            continue
        act_a = load_pickle(path, schema="emolens.activations/2")
        if list(act_a["ids"]) != ids:
            raise ValueError(f"{path} and {paths[name]} hold different prompts or orders; transfer needs the same")
        n_layers_a = int(act_a["n_layers"])
        layer_a = matched_index(layer_b, adapter.n_layers, n_layers_a)
        resid_a = act_a["resid"]["last"][:, layer_a].astype(np.float64)  # [N, d_a]
        del act_a
        xa_fit = resid_a[split.fit_rows]
        va = emotion_vectors(xa_fit[vec_part, None], emotions)[:, 0]  # [n_emotions, d_a]
        scale = float(typical_norms(xa_fit[:, None])[0])
        if scale == 0 or (np.linalg.norm(va, axis=-1) <= VANISH * scale).any():
            skipped[source] = f"emotion vectors vanish at {source}'s index {layer_a}"
            continue
        rng = np.random.default_rng([seed, 5, zlib.crc32(source.encode())])
        carried[source], lmap = carry(xa_fit, xb_fit, (map_part, vec_part), emotions, frames, n_null, n_perm, ridge,
                                      rng)
        mapped = carried[source][0]  # [n_emotions, d_b]
        if (np.linalg.norm(mapped, axis=-1) == 0).any():
            skipped[source] = f"the map from {source}'s index {layer_a} sends an emotion vector to 0"
            del carried[source]
            continue
        if features is not None:  # a's vectors and map with the words partialled out of both models
            xa_words = words_partialled(resid_a, features, halves, ridge)[split.fit_rows]
            carried[f"{source}{WORDS_TAG}"] = carry(xa_words, xb_words, (map_part, vec_part), emotions, frames,
                                                    n_null, n_perm, ridge, rng)[0]
        meta[source] = {"layer_a": layer_a, "relative_depth_a": layer_a / n_layers_a,
                        "map_r2_heldout": map_r2(lmap, resid_a[split.held_rows], resid_b[split.held_rows]),
                        "cosine_mapped_own": np.sum(unit(mapped) * unit(own), -1)}
    held = measure(adapter, split.heldout, readout, 0, batch_size=batch_size)
    boot = item_bootstrap(split.heldout, held.items, n_boot, np.random.default_rng([seed, 6]))
    log.info("%s: transfer at index %d, half-max dose %g sd, from %s (skipped %s), %d random directions and %d "
             "label permutations each, on %d prompts", name, layer_b, alpha, sorted(carried), skipped, n_null,
             n_perm, len(held.prompts))
    effect = transfer_effect(adapter, held, xb_fit, layer_b, alpha, own, carried, boot, batch_size, split.heldout,
                             seed)
    for s in list(effect["sources"]):  # the words-partialled variant of each source goes under that source
        if s.endswith(WORDS_TAG):
            effect["sources"][s.removesuffix(WORDS_TAG)][WORDS_PARTIALLED] = effect["sources"].pop(s)
    at = steer["layers"].index(layer_b), steer["alphas"].index(alpha)
    result = {
        "schema": TRANSFER_SCHEMA, "target": name, "layer_b": layer_b, "relative_depth_b": layer_b / adapter.n_layers,
        "alpha": alpha, "dose_unit": "projection sd (b's fit half), the half-max dose of b's steering", "ridge": ridge,
        "n_null": n_null, "n_permutations": n_perm, "n_prompts": len(held.prompts), "emotions": list(readout.emotions),
        "map_fit": f"the fit half's frames split in two: the map on one ({len(map_part)} prompts), a's vectors and "
                   f"their permuted null on the other ({len(vec_part)} prompts), so the map cannot reproduce them",
        "n_items": len(held.items),
        "own": effect["own"],
        "own_in_steering_file": steer["readout_shift"]["ld"]["on_target"][at[0]][at[1]],
        "sources": {s: meta[s] | effect["sources"][s] for s in meta if s in effect["sources"]},
        "skipped_sources": skipped,
        "measure": "fraction = a's mapped vector's on-target LD shift / b's own, ratio of sums over emotions; nulls: "
                   "random unit directions of a's space through the same map; per emotion, each one's shift on "
                   "readout e over b's own[e]; overall (null_fraction_sets_*, null_p), assignments of n of "
                   "them to the n emotions, scored as the fraction is; and (null_permuted_q95, "
                   "null_p_permuted) a's emotion vectors under labels permuted by frame, through the same map",
        "provenance": provenance(settings or {}, started, model=name),
    }
    save_json(result, out_json)
    for s in result["sources"]:
        r = result["sources"][s]
        log.info("%s -> %s: fraction %.3f [%.3f, %.3f] of own steering (random-set null q95 %.3f, p %.3g; "
                 "permuted p %.3g), map R^2 %.3f", s, name, r["fraction_mean"], r["fraction_ci_low"],
                 r["fraction_ci_high"], r["null_fraction_sets_q95"], r["null_p"], r["null_p_permuted"],
                 r["map_r2_heldout"])
    return result


def run_transfer_summary(files: Sequence[str | Path], out_json: str | Path) -> dict[str, Any]:
    """The model-pair matrices (rows: source a, columns: target b) of every ``into_<b>.json``; save the JSON."""
    started = time.time()
    found = [json.loads(Path(f).read_text()) for f in files]
    for f, t in zip(files, found, strict=True):
        if t.get("schema") != TRANSFER_SCHEMA:
            raise ValueError(f"{f}: schema {t.get('schema')!r}, expected {TRANSFER_SCHEMA!r}")
    models = list(dict.fromkeys([t["target"] for t in found] + [s for t in found for s in t["sources"]]
                                + [s for t in found for s in t["skipped_sources"]]))
    keys = ("fraction_mean", "fraction_ci_low", "fraction_ci_high", "null_fraction_sets_q95", "null_p",
            "null_permuted_q95", "null_p_permuted", "map_r2_heldout", "beats_null", "layer_a")

    by_target = {t["target"]: t for t in found}

    def matrix(key: str, section: str | None = None) -> list[list[Any]]:
        def cell(a: str, b: str) -> Any:
            source = by_target[b]["sources"].get(a, {}) if b in by_target else {}
            if section is not None:
                source = source.get(section) or source.get("by_register", {}).get(section) or {}
            return source.get(key)
        return [[cell(a, b) for b in models] for a in models]

    sections = sorted({g for t in found for s in t["sources"].values()
                       for g in [*s.get("by_register", {}), *([WORDS_PARTIALLED] if WORDS_PARTIALLED in s else [])]})

    result = {"schema": SUMMARY_SCHEMA, "models": models, "rows": "source a (whose vector is carried)",
              "columns": "target b (steered)", **{k: matrix(k) for k in keys},
              "sections": {g: {k: matrix(k, g) for k in ("fraction_mean", "null_p_permuted")} for g in sections},
              "layer_b": {t["target"]: t["layer_b"] for t in found}, "alpha": {t["target"]: t["alpha"] for t in found},
              "own_on_target": {t["target"]: t["own"]["on_target"] for t in found},
              "provenance": provenance({"files": [str(f) for f in files]}, started)}
    save_json(result, out_json)
    log.info("wrote %s: %d targets, %d models", out_json, len(found), len(models))
    return result
