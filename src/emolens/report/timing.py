"""Timing: one record per job, from Snakemake's ``benchmark:`` files and the job's own GPU figure.

Snakemake measures wall time and peak RSS of every job; the job itself records its peak CUDA
memory (``torch.cuda.max_memory_allocated``) in its output's provenance. This joins the two into
``timing/phase_timings.jsonl`` so a run's cost per rule, model and chunk is one file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from emolens.io import atomic_path, load_pickle, to_plain


def read_benchmark(path: str | Path) -> dict[str, float]:
    """The last row of a Snakemake benchmark TSV: wall seconds and peak RSS in MB."""
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: empty benchmark file")
    row = rows[-1]
    return {"wall_seconds": float(row["s"]), "peak_rss_mb": _number(row.get("max_rss"))}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "NA", "-") else None
    except ValueError:
        return None


def job_provenance(output: str | Path) -> dict[str, Any]:
    """The provenance a job wrote into its output (pickle or JSON), or {} if it has none."""
    output = Path(output)
    if output.suffix == ".pkl":
        return load_pickle(output).get("provenance", {})
    if output.suffix == ".json":
        return json.loads(output.read_text()).get("provenance", {})
    return {}


def timing_record(job: dict[str, Any]) -> dict[str, Any]:
    """One job's record: rule, model, chunk, wall seconds, peak RSS, peak GPU memory."""
    bench = read_benchmark(job["benchmark"])
    gpu = job_provenance(job["output"]).get("peak_gpu_bytes")
    return {"rule": job["rule"], "model": job.get("model"), "chunk": job.get("chunk"), **bench,
            "peak_gpu_mb": None if gpu is None else round(gpu / 2**20, 1)}


def run(jobs: list[dict[str, Any]], out: str | Path) -> None:
    """Write one JSONL record per job ({rule, model, chunk, benchmark, output})."""
    with atomic_path(out) as tmp:
        tmp.write_text("".join(json.dumps(to_plain(timing_record(j))) + "\n" for j in jobs))
