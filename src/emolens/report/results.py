"""Reading a profile's results in a notebook: plain arrays and one tidy table, no path strings.

>>> from emolens.report.results import load
>>> res = load("results/demo")
>>> res.table.query("measure == 'probe_accuracy'")
>>> res.sweeps["gpt2_small"]["effect"]        # [pairs, layers, positions]

Every pickle goes through the allow-list unpickler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emolens import layout
from emolens.io import load_pickle


@dataclass
class Results:
    """One profile's outputs, by model (and by model pair for alignment)."""

    root: Path
    vectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    subspaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)
    head_scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    head_patching: dict[str, dict[str, Any]] = field(default_factory=dict)
    alignment: dict[str, dict[str, Any]] = field(default_factory=dict)
    alignment_summary: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, dict[str, Any]] = field(default_factory=dict)
    readout: dict[str, dict[str, Any]] = field(default_factory=dict)
    steering: dict[str, dict[str, Any]] = field(default_factory=dict)
    equivalence: dict[str, dict[str, Any]] = field(default_factory=dict)
    steering_transfer: dict[str, Any] = field(default_factory=dict)
    dataset_card: dict[str, Any] = field(default_factory=dict)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def floats(values: list[Any]) -> np.ndarray:
    """A JSON list of numbers (null where a number was NaN) as floats."""
    return np.array([np.nan if v is None else v for v in values], float)


def _rows(res: Results) -> list[dict[str, Any]]:
    """Long-format rows: model, measure, layer (relative depth), position/head, value."""
    rows = []
    for m, vec in res.vectors.items():
        acc = vec["probe_accuracy"]
        rows += [{"model": m, "measure": "probe_accuracy", "layer": i, "depth": i / (len(acc) - 1),
                  "position": None, "head": None, "value": float(a)} for i, a in enumerate(acc)]
    for m, sweep in res.sweeps.items():
        n = max(sweep["layers"])
        for li, layer in enumerate(sweep["layers"]):
            for pi, pos in enumerate(sweep["positions"]):
                rows.append({"model": m, "measure": "residual_effect", "layer": layer, "depth": layer / n,
                             "position": pos, "head": None, "value": float(sweep["summary"][li][pi])})
    for m, scores in res.head_scores.items():
        for layer, row in enumerate(scores["exact_last_position"]):
            rows += [{"model": m, "measure": "head_effect_last_position", "layer": layer,
                      "depth": layer / len(scores["exact_last_position"]), "position": -1, "head": h,
                      "value": float(v)} for h, v in enumerate(row)]
    for pair, al in res.alignment.items():
        for entry in al["matched"]:
            rows.append({"model": pair, "measure": "linear_cka", "layer": entry["layer_a"],
                         "depth": entry["relative_depth"], "position": None, "head": None,
                         "value": float(entry["linear_cka"])})
    return rows


def load(root: str | Path) -> Results:
    """Load everything a profile's results directory holds (missing phases are simply absent)."""
    root = Path(root)
    res = Results(root)
    pickles = ((res.vectors, layout.vectors, "emolens.vectors/1"),
               (res.subspaces, layout.subspaces, "emolens.subspaces/1"),
               (res.sweeps, layout.residual_sweep, "emolens.residual_sweep/1"),
               (res.head_patching, layout.head_patching, "emolens.head_patching/1"),
               (res.alignment, layout.alignment_pair, "emolens.alignment/1"))
    for found, kind, schema in pickles:
        found |= {name: load_pickle(path, schema=schema) for name, path in layout.each(kind, root).items()}
    for found, kind in ((res.head_scores, layout.head_scores), (res.statistics, layout.statistics),
                        (res.readout, layout.readout), (res.steering, layout.steering),
                        (res.equivalence, layout.equivalence)):
        found |= {name: json.loads(path.read_text()) for name, path in layout.each(kind, root).items()}
    for attr, path in (("alignment_summary", layout.alignment_summary(root)),
                       ("steering_transfer", layout.steering_transfer_summary(root)),
                       ("dataset_card", layout.dataset_card(root))):
        if path.exists():
            setattr(res, attr, json.loads(path.read_text()))
    res.table = pd.DataFrame(_rows(res), columns=["model", "measure", "layer", "depth", "position", "head", "value"])
    return res
