"""The findings page's cross-model section: is it the same across models?

Per model pair: the headline measures and k; then the measures per register and with the words partialled out
(what survives the words), each model against the words reference, every measure between its floor (the
permutation null) and its ceiling (a model against its twin), and the RDM over emotion x frame cells per depth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emolens.phases.alignment import WORDS_PARTIALLED
from emolens.report.markdown import number as _f
from emolens.report.markdown import table as _table
from emolens.report.results import Results, floats


def _pairs_of(summary: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [p for p in summary.get("pairs", []) if p.get("kind", "models") == kind]


def _k_of(res: Results) -> dict[tuple[str, ...], dict[str, Any]]:
    """k.json's pairs (model pairs and ceiling pairs) by their two models."""
    k = res.statistics.get("k", {})
    return {tuple(p["models"]): p for p in [*k.get("pairs", []), *k.get("ceilings", [])]}


def _k_cell(pair: dict[str, Any] | None) -> str:
    if pair is None:
        return "n/a"
    return f"{pair['k']} (degenerate)" if (pair.get("reason") or "").startswith("degenerate") else str(pair["k"])


def alignment_section(res: Results) -> list[str]:
    summary = res.alignment_summary
    if not summary:
        return ["## Is it the same across models?", "", "Skipped: the profile has one model, nothing to pair.", ""]
    lines = ["## Is it the same across models?", ""]
    for family, f in summary["families"].items():
        if f.get("section", "all") == "all" and f.get("kind", "models") == "models":
            lines.append(f"- {f['question']} ({family}): {f['n_significant']} of {f['n_tests']} tests significant "
                         f"after Benjamini-Hochberg.")
    k = _k_of(res)
    rows = []
    for p in _pairs_of(summary, "models"):
        meas = p["measures"]
        rows.append([" / ".join(p["models"]), _f(meas["linear_cka"]["mean"]),
                     _f(meas["linear_cka_item_centred"]["mean"]), _f(meas["transfer_cosine_mean"]["mean"]),
                     f"{meas['transfer_cosine_mean']['n_significant']}/{meas['transfer_cosine_mean']['n_tests']}",
                     _measure_cell(meas.get("rdm_rho")), _k_cell(k.get(tuple(p["models"])))])
    rule = res.statistics.get("k", {}).get("rule", "")
    lines += [""] + _table(["pair", "CKA (texts)", "CKA (item-centred)", "vector transfer cosine",
                            "transfer significant (depths)", "RDM rho over cells (significant depths)", "k"], rows)
    lines += ["", f"k: {rule}", "", *words_section(res), *reference_section(summary), *ceiling_section(res),
              *rdm_section(summary)]
    if len(_pairs_of(summary, "models")) <= MAX_DEPTH_TABLES:
        for p in _pairs_of(summary, "models"):
            lines += depth_table(p)
    return lines


CONTROL_COLUMNS = {"linear_cka": "CKA (texts)", "linear_cka_item_centred": "CKA (item-centred)",
                   "transfer_cosine_mean": "vector transfer", "subspace_mean_cos": "subspace cosine", "rsa": "RSA",
                   "rdm_rho": "RDM rho"}


def _measure_cell(m: dict[str, Any] | None) -> str:
    """'mean (significant/tests)' of one measure over matched depths."""
    return "n/a" if m is None else f"{_f(m['mean'])} ({m.get('n_significant', 0)}/{m.get('n_tests', 0)})"


def _section_rows(res: Results) -> dict[str, list[tuple[dict[str, Any], str]]]:
    """Section -> (measures, k cell) of every model pair that has it."""
    k, out = _k_of(res), {}
    for p in _pairs_of(res.alignment_summary, "models"):
        k_pair = k.get(tuple(p["models"])) or {}
        for section, meas in {"all": p["measures"], **p.get("controls", {})}.items():
            k_cell = _k_cell(k_pair if section == "all" else (k_pair.get("controls") or {}).get(section))
            out.setdefault(section, []).append((" / ".join(p["models"]), meas, k_cell))
    return out


def _pooled_cell(cells: list[dict[str, Any]]) -> str:
    """'mean of the pairs' means (significant/tests over all pairs)'."""
    cells = [c for c in cells if c is not None]
    means = [c["mean"] for c in cells if c.get("mean") is not None and np.isfinite(c["mean"])]
    return (f"{_f(float(np.mean(means)) if means else None)} ({sum(c.get('n_significant', 0) for c in cells)}/"
            f"{sum(c.get('n_tests', 0) for c in cells)})") if cells else "n/a"


def words_section(res: Results) -> list[str]:
    """Every model pair's measures overall, per register and with the words partialled out, with k of each (pooled
    over pairs where the profile has more than :data:`MAX_DEPTH_TABLES`)."""
    by_section, rows = _section_rows(res), []
    pooled = len(_pairs_of(res.alignment_summary, "models")) > MAX_DEPTH_TABLES
    for section, entries in by_section.items():
        if pooled:
            ks = [k for _, _, k in entries]
            rows.append([f"all {len(entries)} pairs", section,
                         *(_pooled_cell([meas.get(m) for _, meas, _ in entries]) for m in CONTROL_COLUMNS),
                         ", ".join(f"{k}: {ks.count(k)}" for k in sorted(set(ks)))])
        else:
            rows += [[pair, section, *(_measure_cell(meas.get(m)) for m in CONTROL_COLUMNS), k]
                     for pair, meas, k in entries]
    if not rows:
        return []
    survive = []
    for pair, meas, _ in by_section.get(WORDS_PARTIALLED, []):
        kept = [f"{CONTROL_COLUMNS[m]} {v['n_significant']}/{v['n_tests']}" for m, v in meas.items()
                if m in CONTROL_COLUMNS and v.get("n_significant")]
        survive.append(f"{pair}: " + (", ".join(kept) if kept else "nothing") + ".")
    return ["### Beyond the words", "",
            "Each measure's mean over matched depths (significant depths / tests, Benjamini-Hochberg within the "
            "section's family) on every prompt, on each register alone (explicit prompts name the emotion, implicit "
            "ones do not) and with the words controlled (words_partialled: each model's activations minus what a "
            "ridge map from the prompts' TF-IDF word 1-2-grams, fit on the other half's frames, predicts of them). "
            "Nulls as overall; k per section from the same rule" + (" (k: value: pairs)" if pooled else "") + ".",
            "", *_table(["pair", "section", *CONTROL_COLUMNS.values(), "k"], rows), "",
            "What survives the words control (significant depths / tests): " + " ".join(survive), ""]


def reference_section(summary: dict[str, Any]) -> list[str]:
    """Each model against the words reference, and whether a pair aligns more with itself than with the words."""
    words = {p["models"][0]: p for p in _pairs_of(summary, "words")}
    if not words:
        return []
    rows = [[m, *(_measure_cell(p["measures"].get(c)) for c in CONTROL_COLUMNS)] for m, p in words.items()]
    above = []
    for p in _pairs_of(summary, "models"):
        a, b = p["models"]
        if a not in words or b not in words:
            continue
        cells = []
        for m in ("linear_cka_item_centred", "transfer_cosine_mean", "rdm_rho"):
            layers = [[la for la, _ in p["matched_layers"]], [lb for _, lb in p["matched_layers"]]]
            wa, wb = (_at_layers(words[x], m, 0, lay) for x, lay in zip((a, b), layers, strict=True))
            pair = floats(p["measures"][m]["value"])
            beats = pair > np.fmax(wa, wb)
            cells.append(f"{CONTROL_COLUMNS[m]} at {sum(beats)} of {len(beats)} depths")
        above.append(f"{a} / {b}: " + ", ".join(cells) + ".")
    return ["### Against the words reference", "",
            "Each model against the words alone (the prompts' TF-IDF word 1-2-grams as a one-layer model; its "
            "vocabulary learned on the fit half), every layer of the model; mean over layers (significant / tests):",
            "", *_table(["model", *CONTROL_COLUMNS.values()], rows), "",
            "Where two models align with each other more than either aligns with the words (the pair's value above "
            "both models' value against the words at the same depths): " + " ".join(above), ""]


CEILING_MEASURES = ("linear_cka", "linear_cka_item_centred", "transfer_cosine_mean", "rsa", "rdm_rho")


def _at_layers(pair: dict[str, Any], measure: str, side: int, layers: list[int]) -> np.ndarray:
    """A pair's measure at the given layers of one side (NaN where the pair has no such depth)."""
    by_layer = dict(zip([lay[side] for lay in pair["matched_layers"]], floats(pair["measures"][measure]["value"]),
                        strict=True))
    return np.array([by_layer.get(lay, np.nan) for lay in layers], float)


def ceiling_section(res: Results) -> list[str]:
    """Every model pair's measures placed between the floor (the null's mean) and the ceiling (a model against its
    twin at the same depths): 0 = the floor, 1 = the ceiling."""
    summary, k = res.alignment_summary, _k_of(res)
    ceilings = {p["models"][0]: p for p in _pairs_of(summary, "ceiling")}
    rows = []
    for p in _pairs_of(summary, "models"):
        for side, model in enumerate(p["models"]):
            twin = ceilings.get(model)
            if twin is None:
                continue
            layers = [lay[side] for lay in p["matched_layers"]]
            for m in CEILING_MEASURES:
                value, floor = (floats(p["measures"][m][key]) for key in ("value", "null_mean"))
                top = _at_layers(twin, m, 0, layers)
                ok = np.isfinite(value) & np.isfinite(floor) & np.isfinite(top)
                v, f, c = (float(x[ok].mean()) if ok.any() else np.nan for x in (value, floor, top))
                rows.append([" / ".join(p["models"]), f"{model} / {twin['models'][1]}", DEPTH_MEASURES[m], _f(v),
                             _f(f), _f(c), _f((v - f) / (c - f)) if np.isfinite(c - f) and c != f else "n/a"])
            kp, kc = k.get(tuple(p["models"])), k.get(tuple(twin["models"]))
            if kp is not None and kc is not None:
                rows.append([" / ".join(p["models"]), f"{model} / {twin['models'][1]}", "k", str(kp["k"]), "0",
                             str(kc["k"]), _f(kp["k"] / kc["k"]) if kc["k"] else "n/a"])
    if not rows:
        return []
    return ["### Between floor and ceiling", "",
            "Each measure's mean over the pair's matched depths beside its floor (the mean of its permutation null) "
            "and its ceiling (the same measure between a model and its twin, the same model in another numeric "
            "build or organism seed, at the same depths of that model); position = (value - floor) / (ceiling - "
            "floor): 0 at the floor, 1 at the ceiling.", "",
            *_table(["pair", "ceiling pair", "measure", "value", "floor", "ceiling", "position"], rows), ""]


def rdm_section(summary: dict[str, Any]) -> list[str]:
    """The cross-validated RDM over emotion x frame cells: rho per matched depth with its null and BH p."""
    rows = []
    for p in _pairs_of(summary, "models"):
        m, na = p["measures"].get("rdm_rho"), p["n_layers"][0]
        if m is None:
            continue
        cells = [f"{_f(la / na)}: {_f(v)} (null {_f(nm)}, p {_f(pb, 3)})" for (la, _), v, nm, pb in
                 zip(p["matched_layers"], m["value"], m["null_mean"], m["p_bh"], strict=True)]
        rows.append([" / ".join(p["models"]), "; ".join(cells)])
    if not rows:
        return []
    return ["### RDMs over emotion x frame cells", "",
            "Spearman rho between the two models' cross-validated RDMs (squared distances between the cells' mean "
            "item-centred activations, each from two independent halves of the frame's items) at each matched "
            "relative depth of the first model, with the mean of its null (b's cells relabelled by frame, one "
            "permutation of the emotions per frame) and its Benjamini-Hochberg p:", "",
            *_table(["pair", "relative depth: rho (null, BH p)"], rows), ""]


MAX_DEPTH_TABLES = 3  # a profile with a few pairs gets each pair's measures per matched depth
DEPTH_MEASURES = {"linear_cka": "CKA (texts)", "linear_cka_item_centred": "CKA (item-centred)",
                  "transfer_cosine_mean": "vector transfer cosine", "subspace_mean_cos": "subspace cosine",
                  "rsa": "RSA", "rdm_rho": "RDM rho"}


def depth_table(pair: dict[str, Any]) -> list[str]:
    """One pair's alignment per matched depth: each measure with its permutation null's mean and BH-adjusted p."""
    meas, (a, b) = pair["measures"], pair["models"]

    def cell(key: str, i: int) -> str:
        m = meas[key]
        return f"{_f(m['value'][i])} (null {_f(m['null_mean'][i])}, p {_f(m['p_bh'][i], 3)})"

    na, nb = pair["n_layers"]
    rows = [[f"{la} / {lb}", f"{_f(la / na)} / {_f(lb / nb)}", *(cell(k, i) for k in DEPTH_MEASURES),
             _f(meas["map_r2"]["value"][i])] for i, (la, lb) in enumerate(pair["matched_layers"])]
    return [f"{a} / {b} per matched depth (residual index and relative depth in {a} / in {b}; each measure with "
            "its permutation null's mean and Benjamini-Hochberg p; map R2 = held-out fit of the linear map from a to "
            "b):", "", *_table(["index", "depth", *DEPTH_MEASURES.values(), "map R2"], rows), ""]
