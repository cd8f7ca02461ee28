"""Where a workflow run's time goes: a table per rule from its jobs' benchmark files and profile lines.

Every job's wall time comes from Snakemake's ``benchmark:`` file (``results/<p>/benchmarks/<rule>/<name>.tsv``);
its split from the ``emolens profile`` line the command logs when it ends (:mod:`emolens.stopwatch`):
start-up (interpreter and imports before the command runs), model loading, tokenisation, model forwards
(hooks included), statistics (resampling, nulls, probes), other (Python between those, phase imports, file I/O)
and launch (the benchmark's wall time less the process's own: Snakemake's job set-up and the shell).

Run: ``python benchmarks/profile_phases.py results/demo`` (after ``make demo``); ``--markdown`` prints the table
docs/development.md holds.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from emolens import stopwatch

COLUMNS = ("startup", "load", "tokenise", "forward", "statistics", "other", "launch", "unsplit")


def job_wall(tsv: Path) -> float:
    """Wall seconds of a job from its Snakemake benchmark file (the last row)."""
    with open(tsv) as f:
        return float(list(csv.DictReader(f, delimiter="\t"))[-1]["s"])


def job_log(results: Path, tsv: Path) -> Path:
    """The log beside a benchmark file: ``logs/<rule>/<name>.log``, or ``logs/<rule>.log`` for the name ``all``."""
    rule, name = tsv.parent.name, tsv.stem
    nested = results / "logs" / rule / f"{name}.log"
    return nested if nested.exists() or name != "all" else results / "logs" / f"{rule}.log"


def profile(results: Path) -> dict[str, dict[str, float]]:
    """Per rule: jobs, wall seconds summed over its jobs, and seconds per :data:`COLUMNS`."""
    rules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for tsv in sorted((results / "benchmarks").glob("*/*.tsv")):
        wall = job_wall(tsv)
        log = job_log(results, tsv)
        split = stopwatch.parse(log.read_text()) if log.exists() else None
        row = rules[tsv.parent.name]
        row["jobs"] += 1
        row["wall"] += wall
        if split is None:  # a job that logs no profile (not an emolens command): all of it unsplit
            row["unsplit"] += wall
            continue
        for kind in stopwatch.KINDS:
            row[kind] += split[kind]
        row["launch"] += max(wall - split["total"], 0.0)
    return rules


def render(rules: dict[str, dict[str, float]], markdown: bool) -> str:
    """The table, rules by wall time, and a total row; shares of each rule's wall time in percent."""
    order = sorted(rules, key=lambda r: -rules[r]["wall"])
    total: dict[str, float] = defaultdict(float)
    for r in order:
        for key, value in rules[r].items():
            total[key] += value
    head = ["rule", "jobs", "job-s", *(f"{c} %" for c in COLUMNS)]
    lines = []
    for name, row in [*((r, rules[r]) for r in order), ("all jobs", total)]:
        shares = [f"{100 * row[c] / row['wall']:.0f}" if row["wall"] else "-" for c in COLUMNS]
        lines.append([name, f"{row['jobs']:.0f}", f"{row['wall']:.1f}", *shares])
    if markdown:
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *lines])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=True)]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in [head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a profile's results directory, e.g. results/demo")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args()
    rules = profile(args.results)
    if not rules:
        raise SystemExit(f"{args.results}/benchmarks: no benchmark files; run the workflow first")
    print(render(rules, args.markdown))


if __name__ == "__main__":
    main()
