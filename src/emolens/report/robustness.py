"""Robustness of the findings: the probes on masked explicit texts, the chosen steering vector under other readout
templates, and the steering choice inside the network; the check of their contract and the findings page's section.

Kept apart from :mod:`emolens.report.checks` and :mod:`emolens.report.findings` (each adds one call): the measures
come from :mod:`emolens.phases.masked_probe` (the vectors file's ``masked``) and
:mod:`emolens.phases.steering_robust` (the steering file's ``template_shift`` and ``best_within_depth``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from emolens.report.checks import _finite, _in_unit, load_result
from emolens.report.results import Results


def _f(x: Any, digits: int = 2) -> str:
    """A number for the page; n/a for missing or NaN."""
    return "n/a" if x is None or not np.isfinite(float(x)) else f"{float(x):.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _per_emotion(values: Any, ps: Any) -> str:
    """Values per emotion with their p-values: "0.12 -0.30 (p 0.020 0.510)"."""
    return " ".join(_f(v) for v in values) + " (p " + " ".join(_f(p, 3) for p in ps) + ")"


def check_robustness(vec_path: Path, steering_path: Path) -> tuple[bool, str]:
    """The robustness measures: the masked probe test (accuracies and p in [0, 1], the drop their difference, one value
    per index); the inner steering choice at relative depth max_depth or less; each template shift finite, with p in
    [0, 1], and a template equal to the run's suffix giving the chosen point's numbers."""
    vec = load_result(vec_path, schema="emolens.vectors/1")
    st = json.loads(Path(steering_path).read_text())
    problems, detail = [], []
    masked = vec["masked"]  # a KeyError (vectors from before the masked test) fails the check
    if masked is not None:
        n_sites = len(vec["probe_accuracy"])
        acc_u, acc_m = (np.asarray(masked[k], dtype=float) for k in ("accuracy_unmasked", "accuracy_masked"))
        if acc_m.shape != (n_sites,) or not _in_unit(acc_u, acc_m, masked["p_fwer"], masked["p_perm"]):
            problems.append(f"masked: accuracies or p of shape {acc_m.shape} (expected ({n_sites},)) or outside [0, 1]")
        elif not np.allclose(np.asarray(masked["drop"], dtype=float), acc_u - acc_m, atol=1e-9):
            problems.append("masked: the drop is not unmasked minus masked accuracy")
        else:
            detail.append(f"masked probe best {acc_m.max():.2f} (unmasked {acc_u.max():.2f}, "
                          f"chance {masked['chance']:.2f})")
    inner, best, n_e = st["best_within_depth"], st["best"], len(st["emotions"])
    if inner["layer"] is not None:
        if inner["layer"] not in st["layers"] or inner["layer"] > inner["max_depth"] * st["n_layers"] + 1e-9:
            problems.append(f"best_within_depth: index {inner['layer']} deeper than {inner['max_depth']} of "
                            f"{st['n_layers']} or not steered")
        elif np.asarray(inner["on_target_p_permuted"], dtype=float).shape != (n_e,):
            problems.append("best_within_depth: no held-out tests")
        else:
            detail.append(f"inner choice index {inner['layer']} at {inner['alpha']} sd")
    for t in st["template_shift"]:
        ps = [t[k] for k in t if k.endswith("_p") or "_p_" in k]
        if not _finite(t["on_target_ld"], t["specificity_row"]) or not _in_unit(*ps, t["accuracy_calibrated"]):
            problems.append(f"template {t['suffix']!r}: non-finite shifts or p / accuracy outside [0, 1]")
        elif t["same_as_run"] and not np.allclose(t["on_target_ld"], best["on_target_ld"], rtol=1e-6, atol=1e-9):
            problems.append(f"template {t['suffix']!r} is the run's suffix but moves the chosen point's shift")
    detail.append(f"{len(st['template_shift'])} template(s)")
    return not problems, "; ".join(problems[:5]) if problems else "; ".join(detail)


def masked_rows(res: Results) -> list[list[Any]]:
    """Per model with a masked test: at the index of the best unmasked accuracy, unmasked and masked accuracy and
    the drop with its band; the best masked accuracy over indices with its family-wise p."""
    rows = []
    for m, vec in res.vectors.items():
        mk = vec.get("masked")
        if not mk:
            continue
        acc_u, acc_m = np.asarray(mk["accuracy_unmasked"]), np.asarray(mk["accuracy_masked"])
        s, best = int(acc_u.argmax()), int(acc_m.argmax())
        depth = np.linspace(0, 1, len(acc_u))
        changed = (f"{_f(mk['accuracy_unmasked_changed'][s])} -> {_f(mk['accuracy_masked_changed'][s])}"
                   if "accuracy_masked_changed" in mk else "n/a")
        rows.append([m, f"{s} ({_f(depth[s])})", _f(acc_u[s]), _f(acc_m[s]), changed,
                     f"{_f(mk['drop'][s])} [{_f(mk['drop_band_low'][s])}, {_f(mk['drop_band_high'][s])}]",
                     f"{_f(acc_m[best])} at {best} (p_fwer {_f(mk['p_fwer'][best], 3)})",
                     f"{_f(mk['chance'])} (null mean {_f(np.max(mk['null_mean']))})"])
    return rows


def _head(lines: list[str]) -> list[str]:
    """The section's title, before its first paragraph only."""
    return [] if lines else ["## Robustness", ""]


def robustness_section(res: Results) -> list[str]:
    """The findings page's robustness section: masked probes, template shift, the inner steering choice."""
    lines: list[str] = []
    rows = masked_rows(res)
    if rows:
        lines += ["## Robustness", "", "**Masked emotion words.** The decoding test's ridge probe, fit on ordinary "
                  "prompts of the training folds, tested on the held-out explicit prompts as written and with every "
                  "emotion word replaced by a placeholder (neutral explicit texts name no emotion and stay as they "
                  "are); the drop is paired on the same prompts, with a 95% band over indices (frames, then items):",
                  "", *_table(["model", "index (depth)", "explicit, unmasked", "explicit, masked",
                               "texts that named it: unmasked -> masked",
                               "drop [band]", "best masked (p_fwer, labels permuted by frame)", "chance"], rows), ""]
    shifted = {m: s for m, s in res.steering.items() if s.get("template_shift")}
    if shifted:
        lines += [*_head(lines), "**Another readout template.** The vector and dose chosen on the "
                  "run's suffix, on the same held-out prompts read through other suffixes (the same label words, "
                  "label-permuted vectors and bootstrap); per emotion, p against the label-permuted vectors:", ""]
        rows = []
        for m, s in shifted.items():
            b = s["best"]
            rows.append([m, repr(s["readout"]["suffix"]) + " (chosen on)", _f(s["clean"]["accuracy_calibrated"]),
                         _per_emotion(b["on_target_ld"], b["on_target_p_permuted"]),
                         _per_emotion(b["specificity_row"], b["specificity_row_p"]),
                         _per_emotion(b["specificity_column"], b["specificity_column_p"])])
            rows += [[m, repr(t["suffix"]), _f(t["accuracy_calibrated"]),
                      _per_emotion(t["on_target_ld"], t["on_target_p_permuted"]),
                      _per_emotion(t["specificity_row"], t["specificity_row_p"]),
                      _per_emotion(t["specificity_column"], t["specificity_column_p"])]
                     for t in s["template_shift"] if not t["same_as_run"]]
        lines += _table(["model", "readout suffix", "clean calibrated accuracy", "on-target LD shift (p)",
                         "specificity, row (p)", "specificity, column (p)"], rows) + [""]
    inner = {m: s for m, s in res.steering.items() if s.get("best_within_depth", {}).get("layer") is not None}
    if inner:
        lines += [*_head(lines), "**Steering inside the network.** At the last index a class-mean "
                  "difference edits the readout's own input; the same choice rule among indices at relative depth "
                  f"{_f(next(iter(inner.values()))['best_within_depth']['max_depth'])} or less, tested on the same "
                  "held-out items (p floor 1/(permutations + 1)):", ""]
        rows = []
        for m, s in inner.items():
            b, i = s["best"], s["best_within_depth"]
            floor = 1 / (1 + b.get("n_permutations", 0))
            for name, c in (("overall", b), ("inner", i)):
                rows.append([m, name, f"{c['layer']} ({_f(c['relative_depth'])}) at {_f(c['alpha'], 1)} sd",
                             _per_emotion(c["on_target_ld"], c["on_target_p_permuted"]),
                             _per_emotion(c["specificity_row"], c["specificity_row_p"]),
                             _per_emotion(c["specificity_column"], c["specificity_column_p"]),
                             f"{s['split']['n_items']} items, floor {_f(floor, 3)}"])
        lines += _table(["model", "choice", "index (depth), dose", "on-target LD shift (p)", "specificity, row (p)",
                         "specificity, column (p)", "held out"], rows) + [""]
    return lines
