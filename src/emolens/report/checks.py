"""The verification checks: one function per output contract, each returning (passed, detail).

Beyond presence, schema, shapes, counts and finiteness, the checks hold the science to its
identities: patching the last block's output at the last position gives effect 1 for every pair;
patching layer 0 at the last position gives 0 for pairs of equal token length (their last tokens, the
suffix's, embed alike in every family); the top heads are the largest exact effects; a model's
representation aligns with itself perfectly (CKA = 1). :mod:`emolens.report.verify` runs them over a profile.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from statsmodels.stats.multitest import multipletests

from emolens import emotion_order, layout
from emolens.data.dataset import cue_hits, emotion_cues
from emolens.io import load_pickle
from emolens.phases.alignment import MEASURES as ALIGNMENT_TESTS
from emolens.phases.alignment import SELF_TOL
from emolens.phases.alignment_summary import family_tests, section_depths, section_tests
from emolens.phases.heads import top_heads
from emolens.stats.effects import contrasts
from emolens.stats.resampling import frame_groups, perm_pvalue

IDENTITY_TOL = 1e-3
ONE_MODEL = "skipped: one model, nothing to pair (cross-model phases need two models or more)"


@lru_cache(maxsize=2)  # one model's activations and sweep, each read by several checks in a row
def load_result(path: Path, schema: str | None = None) -> dict[str, Any]:
    return load_pickle(path, schema=schema)


def _finite(*arrays: Any) -> bool:
    return all(np.isfinite(np.asarray(a, dtype=float)).all() for a in arrays)


def check_activations(path: Path, n_prompts: int, emotions: Sequence[str]) -> tuple[bool, str]:
    """Every prompt at every index, finite, balanced over the run's ``emotions``."""
    act = load_result(path, schema="emolens.activations/2")
    last, mean = act["resid"]["last"], act["resid"]["mean"]
    shape = (n_prompts, act["n_layers"] + 1, act["d_model"])
    counts = Counter(act["emotions"])
    ok = (last.shape == shape and mean.shape == shape and _finite(last, mean)
          and len(set(counts.values())) == 1 and set(counts) == set(emotions))
    return ok, f"resid {last.shape} (expected {shape}), classes {dict(counts)}"


def check_readout(path: Path, counts: dict[str, int]) -> tuple[bool, str]:
    """The readout baseline of the run's emotions (``counts``: prompts per emotion, in order): accuracies in [0, 1],
    n x n confusions whose rows count each emotion's prompts."""
    rb = json.loads(Path(path).read_text())
    acc, cal = rb["accuracy"], rb["accuracy_calibrated"]
    rows = list(counts.values())
    ok = rb.get("emotions") == list(counts)
    for report in [rb] + ([rb["chat"]] if rb.get("chat") else []):  # the chat-template readout the same way
        ok &= all(isinstance(a, (int, float)) and 0 <= a <= 1
                  for a in (report["accuracy"], report["accuracy_calibrated"]))
        for key in ("confusion", "confusion_calibrated"):
            matrix = np.asarray(report[key])
            ok &= matrix.shape == (len(rows), len(rows)) and matrix.sum(axis=1).tolist() == rows
    chat = f"; chat template {rb['chat']['accuracy']} raw, {rb['chat']['accuracy_calibrated']} calibrated" \
        if rb.get("chat") else ""
    return ok, f"accuracy {acc} raw, {cal} calibrated (chance {rb.get('chance')}), n {rb.get('n')}, " \
               f"confusion rows {np.asarray(rb['confusion']).sum(axis=1).tolist()} (expected {rows}){chat}"


def _in_unit(*arrays: Any) -> bool:
    """Every value finite and in [0, 1] (accuracies)."""
    values = [np.asarray(a, dtype=float) for a in arrays]
    return _finite(*values) and all(((v >= 0) & (v <= 1)).all() for v in values)


def check_vectors(vec_path: Path, sub_path: Path, n_prompts: int | None = None,
                  emotions: Sequence[str] | None = None) -> tuple[bool, str]:
    """One vector per emotion (the run's ``emotions`` if given) and index, orthonormal bases, probes on
    frame-grouped folds, accuracies in [0, 1]."""
    vec = load_pickle(vec_path, schema="emolens.vectors/1")
    sub = load_pickle(sub_path, schema="emolens.subspaces/1")
    sites = vec["n_layers"] + 1
    basis = sub["basis"].astype(np.float64)  # [L+1, k, d]
    gram_error = float(np.abs(basis @ basis.transpose(0, 2, 1) - np.eye(basis.shape[1])).max())
    acc = vec["probe_accuracy"]
    ok = emotions is None or list(vec["emotions"]) == list(emotions)
    ok &= (vec["vectors"].shape[:2] == (len(vec["emotions"]), sites) and basis.shape[0] == sites
           and gram_error < 1e-4 and _finite(vec["vectors"], acc) and ((acc >= 0) & (acc <= 1)).all())
    # frame-grouped folds: one fold per prompt, and every group held out in exactly one fold
    fold, groups = np.asarray(vec["fold"]), list(vec["groups"])
    folds_of: dict[str, set[int]] = {}
    for g, k in zip(groups, fold.tolist(), strict=True):
        folds_of.setdefault(g, set()).add(k)
    split_groups = sorted(g for g, ks in folds_of.items() if len(ks) > 1)
    ok &= not split_groups and fold.shape == (len(groups),) and (n_prompts is None or len(groups) == n_prompts)
    ok &= _in_unit(vec["lexical_accuracy"], *(vec["probe_accuracy_by_register"] or {}).values())
    transfers = {k: vec[k] for k in ("transfer_explicit_to_implicit", "transfer_implicit_to_explicit",
                                     "lexical_transfer_explicit_to_implicit",
                                     "lexical_transfer_implicit_to_explicit") if vec[k] is not None}
    ok &= all(_in_unit(t) for t in transfers.values())
    ok &= all(np.shape(vec[k]) == (sites,) for k in transfers if not k.startswith("lexical"))
    length = vec["length"]  # the length control: erased probes per index, baselines in [0, 1]
    erased = np.asarray(length["erased_probe_accuracy"])
    ok &= erased.shape == (sites,) and _in_unit(erased, *length["surface_accuracy"].values())
    split = f" ({len(split_groups)} split across folds, e.g. {split_groups[:3]})" if split_groups else ""
    return ok, (f"vectors {vec['vectors'].shape} of {list(vec['emotions'])}, basis {basis.shape}, "
                f"orthonormality error {gram_error:.1e}, "
                f"best probe accuracy {acc.max():.3f}; {len(folds_of)} groups in {len(set(fold.tolist()))} "
                f"folds{split}; lexical baseline {vec['lexical_accuracy']:.3f}; surface baseline "
                f"{length['surface_accuracy']['all']:.3f}; best probe after length erasure {erased.max():.3f}; "
                f"transfer arrays {sorted(transfers) or 'none (registers unknown)'}")


def _contrasts_present(result: dict[str, Any]) -> tuple[bool, str]:
    """Every emotion contrast of the run (its label tokens' emotions) has pairs, and the counts add up to the
    file's pairs."""
    counts = result["contrast_counts"]
    absent = [c for c in contrasts(result["label_token_ids"]) if counts.get(c, {}).get("pairs", 0) == 0]
    total = sum(c["pairs"] for c in counts.values())
    ok = not absent and total == len(result["pairs"])
    kept = {c: f"{v['included']}/{v['pairs']}" for c, v in counts.items()}
    return ok, f"pairs kept per contrast {kept}" + (f"; no pairs for {absent}" if absent else "")


def check_sweep(path: Path, n_layers: int) -> tuple[bool, str]:
    sweep = load_result(path, schema="emolens.residual_sweep/1")
    effect = sweep["effect"]  # [P, layers, positions]
    ok = list(sweep["layers"]) == list(range(n_layers + 1)) and effect.shape[1] == n_layers + 1
    ok &= _finite(sweep["ld_patched"]) and effect.shape[2] == len(sweep["position_roles"])
    ok &= any(r.startswith("message") for r in sweep["position_roles"])  # the sweep reaches the message
    contrasts_ok, contrasts = _contrasts_present(sweep)
    last = list(sweep["positions"]).index(-1)
    return ok and contrasts_ok, f"effect {effect.shape}, layers 0..{max(sweep['layers'])}, positions " \
        f"{sweep['position_roles']}, summary at L {sweep['summary'][-1, last]:.3f}; {contrasts}"


def check_chunks(chunk_dir: Path, n_layers: int) -> tuple[bool, str]:
    """The phase-5 chunk files cover residual indices 0..L exactly once, each a readable chunk."""
    covered: list[int] = []
    for path in sorted(chunk_dir.glob("layers_*.pkl")):
        covered += list(load_pickle(path, schema="emolens.residual_chunk/1")["layers"])
    expected = list(range(n_layers + 1))
    missing = sorted(set(expected) - set(covered))
    ok = sorted(covered) == expected
    return ok, f"{len(covered)} residual indices in {chunk_dir}" + (f"; missing {missing}" if missing else "")


def check_identities(path: Path) -> tuple[bool, str]:
    """Index L at the last position gives 1 for every kept pair; layer 0 gives 0 for pairs of equal length."""
    sweep = load_result(path, schema="emolens.residual_sweep/1")
    effect, layers, positions = sweep["effect"], list(sweep["layers"]), list(sweep["positions"])
    last = positions.index(-1)
    kept = np.asarray(sweep["included"], bool)
    at_l = effect[kept, layers.index(max(layers)), last]
    # last tokens embed alike in every family when the two prompts have the same length
    at_0 = effect[kept & np.asarray(sweep["same_length"], bool), layers.index(0), last]
    err_l, err_0 = (float(np.abs(x).max()) if x.size else 0.0 for x in (at_l - 1, at_0))
    ok = err_l < IDENTITY_TOL and err_0 < IDENTITY_TOL and at_l.size > 0
    zero = (f"max |effect(0)| = {err_0:.1e} over {at_0.size} kept equal-length pairs" if at_0.size else
            "index 0 not checked: no kept pair of equal token length in the subsample")
    return ok, f"max |effect(L) - 1| = {err_l:.1e} over {at_l.size} kept pairs; {zero}"


def check_equivalence(path: Path, n_layers: int) -> tuple[bool, str]:
    """The model's check before its long jobs: capture, readout and fast patching within tolerance of their
    references on its own weights (a hybrid patches by full recompute, so it has no fast-path number)."""
    eq = json.loads(path.read_text())
    found = {k: v for k, v in eq["max_difference"].items() if v is not None}
    headless = sorted(set(range(n_layers)) - set(eq["head_layers"]))
    ok = eq["n_layers"] == n_layers and all(v <= eq["tolerance"] for v in found.values())
    return ok, (", ".join(f"{k} {v:.1e}" for k, v in found.items()) + f" (tolerance {eq['tolerance']:g}); "
                f"longest prompt {eq['longest_prompt']} of {eq['context']} tokens; sites {eq['sites']}"
                + (f"; blocks without heads {headless}" if headless else ""))


def check_screening(path: Path, n_layers: int) -> tuple[bool, str]:
    """Every head screened exactly and the top heads are the largest exact effects.

    Attribution patching's agreement is reported, not required: it is a first-order estimate (equal to the
    derivative of the exact patch, a test) and can be far from a nonlinear effect; no head is chosen by it.
    """
    scores = json.loads(path.read_text())
    exact, attribution = np.array(scores["exact_last_position"], float), np.array(scores["attribution"], float)
    k, heads = len(scores["top_heads"]), sorted(set(range(n_layers)) - set(scores.get("layers_without_heads", [])))
    ok = (exact.shape[0] == n_layers and exact.shape == attribution.shape and _finite(exact[heads], attribution[heads])
          and k > 0 and scores["top_heads"] == top_heads(exact, k))
    return ok, (f"{exact.shape[0]}x{exact.shape[1]} heads, top {k} by exact effect; attribution vs exact "
                f"Spearman {scores['spearman']} (reported, not required)")


def check_head_patching(path: Path) -> tuple[bool, str]:
    hp = load_pickle(path, schema="emolens.head_patching/1")
    single, joint = hp["effect_single"], hp["effect_joint"]
    ok = single.shape == (len(hp["pairs"]), len(hp["heads"])) and joint.shape == (len(hp["pairs"]),)
    ok &= _finite(hp["ld_patched"]) and any(r.startswith("message") for r in hp["position_roles"])
    contrasts_ok, contrasts = _contrasts_present(hp)
    return ok and contrasts_ok, f"{len(hp['heads'])} heads x {len(hp['pairs'])} pairs, joint effect " \
        f"{hp['summary_joint']:.3f} [{hp['ci_joint'][0]:.3f}, {hp['ci_joint'][1]:.3f}]; {contrasts}"


def check_self_alignment(model: str, pair_files: list[Path]) -> tuple[bool, str]:
    """Every alignment file that holds ``model`` stores its self cell (the model against itself at its
    last block, through the same measures), and every similarity there is 1."""
    records = {path.name: load_pickle(path, schema="emolens.alignment/1") for path in pair_files}
    cells = {name: r["self_cells"][model] for name, r in records.items() if model in r["models"]}
    values = np.array([v for cell in cells.values() for key, v in cell.items() if key != "layer"], float)
    error = float(np.max(np.abs(values - 1))) if values.size else float("nan")
    ok = bool(cells) and bool(np.all(np.abs(values - 1) < SELF_TOL))
    return ok, f"{len(cells)} alignment files hold {model}'s self cell; max |similarity - 1| = {error:.1e}"


def _alignment_problems(path: Path, record: dict[str, Any]) -> list[str]:
    """A pair file's tests, every section: finite values, one null draw per permutation, p-values that match."""
    problems = [] if record["matched"] else [f"{path.name}: no matched depths"]
    n_perm = record["settings"]["n_perm"]
    for section, m in section_tests(record):
        for depth in section_depths(record, section):
            null, value, p = np.asarray(depth["null"][m], float), depth[m], depth[f"{m}_p"]
            expected = perm_pvalue(value, null)
            undefined = not np.isfinite(value) and np.isnan(p)  # no variance to compare (e.g. equal-length index 0)
            if len(null) != n_perm or not (undefined or abs(p - expected) <= 1e-12):
                problems.append(f"{path.name} {section} layer {depth['layer_a']}: {m} = {value}, p {p} but its "
                                f"{len(null)} null draws give {expected}")
    return problems


def _summary_problems(summary: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """summary.json declares every measure and counts significance after BH within each declared family."""
    table = summary["measures"]
    problems = [f"summary.json: measure {m} lacks its question or null" for m in ALIGNMENT_TESTS
                if not (table.get(m, {}).get("question") and table[m].get("null") and table[m].get("family"))]
    if problems:
        return problems
    by_models = {tuple(p["models"]): p for p in summary["pairs"]}
    problems += [f"summary.json has no entry for {r['models']}" for r in records if tuple(r["models"]) not in by_models]
    for family, entry in family_tests(records).items():
        keys = entry["tests"]
        pvals = [np.array([d[f"{m}_p"] for d in section_depths(records[i], sec)], float) for i, sec, m in keys]
        reject = multipletests(np.concatenate(pvals), alpha=summary["alpha"], method="fdr_bh")[0]
        counts = np.split(reject, np.cumsum([len(p) for p in pvals])[:-1])
        for (i, sec, m), c in zip(keys, counts, strict=True):
            pair = by_models.get(tuple(records[i]["models"]), {})
            stored = (pair.get("measures", {}) if sec == "all" else pair.get("controls", {}).get(sec, {})).get(m, {})
            if stored.get("n_significant") != int(c.sum()):
                problems.append(f"summary.json: {records[i]['models']} {sec} {m} counts {stored.get('n_significant')} "
                                f"significant; BH over family {family} gives {int(c.sum())}")
        total = summary["families"].get(family, {}).get("n_significant")
        if total != int(np.concatenate(counts).sum()):
            problems.append(f"summary.json: family {family} counts {total} significant")
    return problems


def check_alignment(pair_files: list[Path], summary: Path, n_models: int) -> tuple[bool, str]:
    """One file per model pair and per model against the words reference; every file's p-values match its stored
    null draws, and summary.json's BH counts recompute."""
    records = [load_pickle(p, schema="emolens.alignment/1") for p in pair_files]
    kinds, expected = Counter(r.get("kind", "models") for r in records), {"models": n_models * (n_models - 1) // 2}
    problems = [f"{kinds[k]} alignment files of kind {k} for {n_models} models, {n} expected"
                for k, n in (expected | {"words": n_models}).items() if kinds[k] != n]
    for path, record in zip(pair_files, records, strict=True):
        problems += _alignment_problems(path, record)
    problems += _summary_problems(json.loads(summary.read_text()), records)
    detail = (f"{len(records)} alignment files ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); stored "
              "p-values match their nulls in every section, BH counts recompute")
    return not problems, "; ".join(problems[:5]) if problems else detail


def k_problems(k: dict[str, Any], n_models: int) -> list[str]:
    """k.json states its rule, and each pair's k follows from its stored curve and threshold."""
    problems = [f"k.json: no {key!r} in words" for key in ("rule", "score", "null")
                if not (isinstance(k.get(key), str) and k[key].strip())]
    reachable = k["alpha"] * (k["n_perm"] + 1) >= 1  # enough permutations for a p-value <= alpha
    if len(k["pairs"]) != n_models * (n_models - 1) // 2:
        problems.append(f"k.json: {len(k['pairs'])} pairs for {n_models} models")
    for pair in k["pairs"]:
        name, k_max = "__".join(pair["models"]), pair["k_max"]
        threshold = float("inf") if pair["threshold"] is None else pair["threshold"]
        if not 0 <= pair["k"] <= k_max <= len(k["emotions"]) - 1:
            problems.append(f"k.json {name}: k {pair['k']} outside 0..k_max {k_max}")
        if reachable and not np.isfinite(threshold):
            problems.append(f"k.json {name}: threshold {pair['threshold']} is not finite")
        depth_k = []
        for depth in pair["depths"]:
            z = np.array(depth["z"], float)
            expected = int(np.cumprod(z > threshold).sum())
            if len(depth["score"]) != k_max or len(z) != k_max or not _finite(z, depth["score"]) \
                    or depth["k"] != expected or depth["threshold"] != pair["threshold"]:
                problems.append(f"k.json {name} layer {depth['layer_a']}: k {depth['k']} but the curve and "
                                f"threshold give {expected}")
            depth_k.append(depth["k"])
        if pair["k"] != max(depth_k, default=0):
            problems.append(f"k.json {name}: k {pair['k']} is not the largest depth k {max(depth_k, default=0)}")
    return problems


def check_statistics(results: Path, n_models: int) -> tuple[bool, str]:
    """effect.json and power.json carry provenance; k.json (two models or more: k is cross-model) states its rule
    and each pair's k follows from its curve."""
    modes = ("effect", "power", "k") if n_models > 1 else ("effect", "power")
    found = {mode: json.loads(layout.statistics(results, mode).read_text()) for mode in modes}
    problems = [f"{mode}.json has no provenance" for mode, v in found.items() if "provenance" not in v]
    if n_models < 2:
        return not problems, "; ".join(problems) if problems else f"modes {sorted(found)}; k {ONE_MODEL}"
    problems += k_problems(found["k"], n_models)
    ks = {"__".join(p["models"]): p["k"] for p in found["k"]["pairs"]}
    return not problems, "; ".join(problems[:5]) if problems else f"modes {sorted(found)}; k per pair {ks}"


def check_steering(path: Path, transfer: Path | None = None,
                   emotions: Sequence[str] | None = None) -> tuple[bool, str]:
    """Steering of the file's emotions (the run's ``emotions`` if given): alpha 0 shifts exactly 0, n x n
    specificity per (index, alpha), finite values, accuracies in [0, 1]; at the chosen dose, finite tests and
    p-values and fractions in [0, 1], the dose within its KL budget on the fit half when one was; the transfer
    file into this model (when there is one): finite fractions, its own-vector effect as the steering file
    measured it."""
    st = json.loads(Path(path).read_text())
    assert st["schema"] == "emolens.steering/2", st["schema"]
    n_l, n_a, n_e = len(st["layers"]), len(st["alphas"]), len(st["emotions"])
    problems = []
    if emotions is not None and list(st["emotions"]) != list(emotions):
        problems.append(f"emotions {st['emotions']}, not the run's {list(emotions)}")
    if 0 not in st["alphas"]:
        problems.append("alpha 0 (the clean reference) is not in the grid")
    a0 = st["alphas"].index(0) if 0 in st["alphas"] else None
    for metric, shift in st["readout_shift"].items():
        for key, want in (("specificity", (n_l, n_a, n_e, n_e)), ("on_target", (n_l, n_a, n_e)),
                          ("on_target_ci_low", (n_l, n_a, n_e)), ("random_mean", (n_l, n_a, n_e)),
                          ("random_q95", (n_l, n_a, n_e))):
            value = np.asarray(shift[key], dtype=float)
            if value.shape != want or not _finite(value):
                problems.append(f"{metric}.{key}: shape {value.shape} (expected {want}) or non-finite values")
            elif a0 is not None and np.any(value[:, a0] != 0):
                problems.append(f"{metric}.{key}: alpha 0 shift is not exactly 0 ({np.abs(value[:, a0]).max():.3g})")
    best = st["best"]
    for key in ("on_target_ld", "specificity_row", "specificity_column", "on_target_p_permuted",
                "on_target_p_gaussian", "specificity_row_p", "specificity_column_p"):
        value = np.asarray(best[key], dtype=float)
        if value.shape != (n_e,) or not _finite(value):
            problems.append(f"best.{key}: shape {value.shape} (expected ({n_e},)) or non-finite values")
    if not _in_unit(best["steerable"]["fraction"], *(best[k] for k in best if k.endswith("_p") or "_p_" in k)):
        problems.append("best: a steerable fraction or p-value outside [0, 1]")
    null = best["ablation_null"]
    if not _in_unit(null["readout_drop_p_permuted"], null["readout_drop_p_matched"]) or not null["n_matched"]:
        problems.append(f"best.ablation_null: p outside [0, 1] or no matched subspace ({null['n_matched']})")
    sel = st["selection"]
    if sel["within_budget"] and not sel["fit_kl_nonlabel"] <= sel["kl_budget"]:
        problems.append(f"selection: off-label KL {sel['fit_kl_nonlabel']} over the budget {sel['kl_budget']}")
    kl = np.asarray(st["kl"]["emotion"], dtype=float)
    if st["split"]["n_kl_prompts"] and (kl.shape != (n_l, n_a, n_e) or not _finite(kl) or (kl < -1e-6).any()):
        problems.append(f"kl: shape {kl.shape} (expected {(n_l, n_a, n_e)}), non-finite or negative")
    ab = st["ablation"]
    if not _in_unit(ab["readout_accuracy"], ab["readout_accuracy_clean"], ab["probe_accuracy_clean"]) \
            or np.asarray(ab["probe_accuracy"], dtype=float).shape != (n_l, n_l):
        problems.append("ablation: accuracies outside [0, 1] or probe matrix not [index x probed index]")
    detail = (f"{n_l} indices x {n_a} doses; chosen on the fit half: index {best['layer']} at {best['alpha']} sd "
              f"(within the KL budget: {sel['within_budget']}); held-out on-target LD "
              f"{np.round(best['on_target_ld'], 3).tolist()}")
    if transfer is not None and Path(transfer).exists():
        tr = json.loads(Path(transfer).read_text())
        own = np.asarray(tr["own"]["on_target"], dtype=float)
        if not np.allclose(own, tr["own_in_steering_file"], rtol=0.05, atol=0.05):
            problems.append(f"transfer: own on-target {own} differs from the steering file's "
                            f"{tr['own_in_steering_file']}")
        for source, s in tr["sources"].items():
            if not _finite(s["on_target_mapped"], s["cosine_mapped_own"]) or (
                    s["fraction_mean"] is None and own.sum() > 0):
                problems.append(f"transfer {source} -> {tr['target']}: non-finite values")
        detail += "; transfer fractions " + ", ".join(f"{a} {s['fraction_mean']}" for a, s in tr["sources"].items())
    return not problems, "; ".join(problems[:5]) if problems else detail


def check_dataset(records: list[dict[str, Any]]) -> tuple[bool, str]:
    """No implicit text holds a cue of the dataset's emotions (:func:`emolens.data.dataset.emotion_cues`); two emotions
    or more, balanced."""
    counts = Counter(r["emotion"] for r in records)
    cues = emotion_cues(emotion_order(counts))
    implicit = [r for r in records if r.get("register") == "implicit"]
    hits = [(r["id"], cue_hits(r["text"], cues)) for r in implicit if cue_hits(r["text"], cues)]
    ok = not hits and len(counts) >= 2 and len(set(counts.values())) == 1
    return ok, f"{len(records)} prompts, {len(implicit)} implicit, {len(set(frame_groups(records)))} frames" + (
        f"; stems or formulae in implicit texts: {hits[:5]}" if hits else "")


def check_head_split(screening: Path, head_patching: Path) -> tuple[bool, str]:
    """Heads are confirmed (6b) on frames, and so items, the screening (6a) never saw."""
    selection = json.loads(screening.read_text())
    confirmation = load_pickle(head_patching, schema="emolens.head_patching/1")
    found = []
    for unit in ("frames", "items"):
        selected, confirmed = set(selection.get(unit, [])), set(confirmation.get(unit, []))
        shared = sorted(selected & confirmed)
        found.append((bool(selected and confirmed and not shared),
                      f"{len(selected)} selection {unit}, {len(confirmed)} confirmation {unit}, shared {shared[:5]}"))
    return all(ok for ok, _ in found), "; ".join(detail for _, detail in found)
