"""Verification: every output of every phase, for every model, checked against its contract.

Each check (:mod:`emolens.report.checks`) is one entry in ``verification.json`` ({check, model, passed,
detail}); the command exits non-zero when any fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emolens import emotion_order, layout
from emolens.io import ResultFileError, save_json
from emolens.report import attention_mlp
from emolens.report.checks import (
    ONE_MODEL,
    check_activations,
    check_alignment,
    check_chunks,
    check_dataset,
    check_equivalence,
    check_head_patching,
    check_head_split,
    check_identities,
    check_readout,
    check_screening,
    check_self_alignment,
    check_statistics,
    check_steering,
    check_sweep,
    check_vectors,
    load_result,
)
from emolens.report.robustness import check_robustness

log = logging.getLogger(__name__)


class Checks:
    """Collects named checks; an exception inside a check is a failure with its message."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, check: str, model: str | None, fn: Callable[[], tuple[bool, str]]) -> None:
        try:
            passed, detail = fn()
        except (ResultFileError, OSError, KeyError, ValueError, IndexError, TypeError, AssertionError) as e:
            passed, detail = False, f"{type(e).__name__}: {e}"
        self.entries.append({"check": check, "model": model, "passed": bool(passed), "detail": detail})
        if not passed:
            log.error("FAILED %s [%s]: %s", check, model, detail)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if not e["passed"]]


def verify(results: str | Path, models: list[str], records: list[dict[str, Any]]) -> Checks:
    """Run every check over a profile's results directory, against the emotions of the dataset ``records``."""
    r = Path(results)
    load_result.cache_clear()  # files may have changed since an earlier call in this process
    checks = Checks()
    n_prompts = len(records)
    checks("dataset", None, lambda: check_dataset(records))
    pair_files = list(layout.each(layout.alignment_pair, r).values())
    emotions = emotion_order(r["emotion"] for r in records)  # the run's: readout.labels holds exactly these
    per_emotion = {e: n_prompts // len(emotions) for e in emotions}  # load_dataset refuses unbalanced classes
    n_layers: dict[str, int] = {}
    for m in models:
        act = layout.activations(r, m)
        checks("activations", m, lambda act=act: check_activations(act, n_prompts, emotions))
        checks("readout", m, lambda m=m: check_readout(layout.readout(r, m), per_emotion))
        try:
            n_layers[m] = load_result(act, schema="emolens.activations/2")["n_layers"]
        except ResultFileError:
            continue  # reported by the activations check; nothing downstream can be checked
        checks("equivalence", m, lambda m=m: check_equivalence(layout.equivalence(r, m), n_layers[m]))
        checks("vectors", m, lambda m=m: check_vectors(layout.vectors(r, m), layout.subspaces(r, m), n_prompts,
                                                       emotions))
        sweep = layout.residual_sweep(r, m)
        checks("residual_sweep", m, lambda m=m, sweep=sweep: check_sweep(sweep, n_layers[m]))
        checks("identities", m, lambda sweep=sweep: check_identities(sweep))
        checks("residual_chunks", m, lambda m=m: check_chunks(layout.residual_chunks(r, m), n_layers[m]))
        checks("head_screening", m, lambda m=m: check_screening(layout.head_scores(r, m), n_layers[m]))
        checks("head_patching", m, lambda m=m: check_head_patching(layout.head_patching(r, m)))
        checks("sublayers", m, lambda m=m: attention_mlp.check(layout.sublayers(r, m), n_layers[m]))
        checks("head_split", m, lambda m=m: check_head_split(layout.head_scores(r, m), layout.head_patching(r, m)))
        checks("steering", m, lambda m=m: check_steering(layout.steering(r, m), layout.steering_transfer(r, m),
                                                         emotions))
        checks("robustness", m, lambda m=m: check_robustness(layout.vectors(r, m), layout.steering(r, m)))
        if len(models) > 1:
            checks("self_alignment", m, lambda m=m: check_self_alignment(m, pair_files))
    if len(models) > 1:
        checks("alignment", None, lambda: check_alignment(pair_files, layout.alignment_summary(r), len(models)))
    else:
        log.info("alignment: %s", ONE_MODEL)
        checks("alignment", None, lambda: (True, ONE_MODEL))
    checks("statistics", None, lambda: check_statistics(r, len(models)))
    return checks


def run(results: str | Path, models: list[str], records: list[dict[str, Any]], out: str | Path) -> int:
    """Verify a profile against its dataset records, write ``verification.json``, return the number of failed checks."""
    checks = verify(results, models, records)
    save_json({"passed": not checks.failed, "n_checks": len(checks.entries), "n_failed": len(checks.failed),
               "checks": checks.entries}, out)
    log.info("%d checks, %d failed", len(checks.entries), len(checks.failed))
    return len(checks.failed)
