"""Phase 4's summary: every alignment file's tests, Benjamini-Hochberg within each declared family.

A family is one question (texts alike, emotion alike, emotion-specific) asked of one section of the pair
files (every prompt, one register, the words partialled out) for one kind of pair (two models, a model
against the words reference, a model against its ceiling twin), over its measures x matched depths x pairs.
``summary.json`` declares the families and counts significance only after correction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens.io import load_pickle, provenance, save_json
from emolens.phases.alignment import (
    CONTROL_MEASURES,
    DESCRIPTIVE,
    FAMILIES,
    KINDS,
    MEASURE_TABLE,
    MEASURES,
    SCHEMA,
    SECTIONS,
)
from emolens.stats import families


def section_depths(record: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """A pair record's matched depths of one section ("all" or a control)."""
    return record["matched"] if section == "all" else record["controls"][section]


def section_tests(record: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(section, measure) of every test a pair record holds: all measures overall, the control ones per control."""
    for section in ["all", *record.get("controls", {})]:
        for m in MEASURES if section == "all" else CONTROL_MEASURES:
            yield section, m


def family_key(kind: str, section: str, family: str) -> str:
    """One Benjamini-Hochberg family: a question (family) asked of one section of one kind of pair."""
    return " / ".join([family, *([section] if section != "all" else []), *([kind] if kind != "models" else [])])


def family_tests(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every family of the pair records -> its question and its (record index, section, measure) tests."""
    out: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(records):
        kind = r.get("kind", "models")
        for section, m in section_tests(r):
            family = MEASURE_TABLE[m]["family"]
            entry = out.setdefault(family_key(kind, section, family), {
                "family": family, "section": section, "kind": kind, "tests": [],
                "question": f"{FAMILIES[family]} On {SECTIONS.get(section, section)}; pairs: {KINDS[kind]}."})
            entry["tests"].append((i, section, m))
    return out


def bh_families(records: Sequence[dict[str, Any]], alpha: float) -> dict[tuple[int, str, str], dict[str, np.ndarray]]:
    """Benjamini-Hochberg within each family (its measures x matched depths x pairs) of the pair records.

    Returns (record index, section, measure) -> {"p", "p_bh", "significant"} over that section's matched depths.
    """
    out: dict[tuple[int, str, str], dict[str, np.ndarray]] = {}
    for entry in family_tests(records).values():
        keys = entry["tests"]
        pvals = [np.array([d[f"{m}_p"] for d in section_depths(records[i], sec)], float) for i, sec, m in keys]
        adjusted, reject = families.bh(np.concatenate(pvals) if pvals else np.empty(0), alpha)
        start = 0
        for key, p in zip(keys, pvals, strict=True):
            out[key] = {"p": p, "p_bh": adjusted[start:start + len(p)], "significant": reject[start:start + len(p)]}
            start += len(p)
    return out


def _mean(values: np.ndarray) -> float:
    """Mean over the finite values; NaN where there is none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _section_summary(depths: list[dict[str, Any]], tests: Sequence[str],
                     corrected: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Each test of one section: values, null means and 95th percentiles, p, BH p, significance, mean; then the
    descriptive numbers the section holds."""
    measures: dict[str, Any] = {}
    for m in tests:
        c = corrected[m]
        values = np.array([d[m] for d in depths], float)
        measures[m] = {"family": MEASURE_TABLE[m]["family"], "value": values,
                       "null_mean": [d[f"{m}_null_mean"] for d in depths],
                       "null_q95": [d[f"{m}_null_q95"] for d in depths], "p": c["p"], "p_bh": c["p_bh"],
                       "significant": c["significant"], "mean": _mean(values),
                       "n_tests": len(values), "n_significant": int(c["significant"].sum())}
    for m in DESCRIPTIVE:
        values = np.array([d.get(m, np.nan) for d in depths], float)
        if np.isfinite(values).any():
            measures[m] = {"family": None, "value": values, "mean": _mean(values)}
    return measures


def run_summary(pair_files: Sequence[str | Path], out_json: str | Path, alpha: float = 0.05) -> None:
    """Headline numbers per model pair at matched depths, overall and per control, BH-corrected per family, into
    ``summary.json``."""
    started = time.time()
    records = [load_pickle(path, SCHEMA) for path in pair_files]
    corrected = bh_families(records, alpha)
    pairs = []
    for i, (path, r) in enumerate(zip(pair_files, records, strict=True)):
        def summary_of(section: str, tests: Sequence[str], i: int = i, r: dict = r) -> dict[str, Any]:
            return _section_summary(section_depths(r, section), tests,
                                    {m: corrected[i, section, m] for m in tests})

        flags = (["int8_involved"] if r["int8_involved"] else []) + (
            ["different_widths"] if r["d_model"][0] != r["d_model"][1] else [])
        pairs.append({"models": r["models"], "kind": r.get("kind", "models"), "file": str(path),
                      "quantization": r["quantization"], "int8_involved": r["int8_involved"],
                      "flags": flags, "d_model": r["d_model"], "n_layers": r["n_layers"], "n_prompts": r["n_prompts"],
                      "n_items": r.get("n_items"), "n_frames": r.get("n_frames"),
                      "matched_layers": [[d["layer_a"], d["layer_b"]] for d in r["matched"]],
                      "map_r2": [d["map_r2"] for d in r["matched"]], "self_cells": r.get("self_cells"),
                      "measures": summary_of("all", MEASURES),
                      "controls": {sec: summary_of(sec, CONTROL_MEASURES) for sec in r.get("controls", {})}})
    by_family = {}
    floor = 1 / (1 + min(r["settings"]["n_perm"] for r in records))  # the smallest permutation p any test can have
    for key, entry in family_tests(records).items():
        n_tests = sum(len(corrected[t]["p"]) for t in entry["tests"])
        by_family[key] = {
            "question": entry["question"], "family": entry["family"], "section": entry["section"],
            "kind": entry["kind"], "measures": list(dict.fromkeys(m for _, _, m in entry["tests"])),
            "correction": f"{families.CORRECTION}, over these measures x matched depths x pairs",
            "n_tests": n_tests,
            "n_significant": int(sum(corrected[t]["significant"].sum() for t in entry["tests"])),
            # BH calls i tests significant only if i of them have p <= i * alpha / n_tests: with every p >= floor,
            # no test can be significant unless at least this many share the floor
            "p_floor": floor, "min_tests_at_floor": math.ceil(n_tests * floor / alpha - 1e-9)}
    prov = provenance({"alpha": alpha}, started, inputs=[str(p) for p in pair_files])
    save_json({"alpha": alpha, "measures": MEASURE_TABLE, "sections": SECTIONS, "kinds": KINDS,
               "families": by_family,
               "significance": "every n_significant counts tests with BH-adjusted p <= alpha within its family",
               "identity_cells": "self_cells (each model against itself at its last block: CKA, mutual k-NN = 1) "
                                 "are verification checks, not tests, and belong to no family",
               "pairs": pairs, "provenance": prov}, out_json)
