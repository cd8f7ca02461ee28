"""The mini profile end to end: every phase to a passing verification, timing, figures and the HTML
report; ``snakemake -R <one chunk>`` reruns that chunk and the merge, no other chunk; and
``snakemake --summary`` flags a deleted chunk as missing."""

from __future__ import annotations

import json
import re

import numpy as np

from emolens.io import load_pickle

RESULTS = "results/mini"
CHUNKS = f"{RESULTS}/patching/residual/chunks/pythia"
SWEEP = f"{RESULTS}/patching/residual/pythia_residual_sweep.pkl"
# What depends on one model's residual sweep: rerunning one of its chunks may rerun these, nothing else.
SWEEP_AND_DOWNSTREAM = {"residual_chunk", "residual_merge", "stats_effect", "stats_power", "verify", "timing",
                        "figures", "findings", "all"}


def test_every_phase_runs_to_a_passing_verification(mini_workdir, wf):
    results = mini_workdir / RESULTS
    verification = json.loads((results / "verification.json").read_text())
    assert verification["passed"] and verification["n_failed"] == 0, verification
    checked = {c["check"] for c in verification["checks"]}
    assert {"residual_sweep", "identities", "head_screening", "head_patching", "alignment", "statistics"} <= checked

    timings = [json.loads(line) for line in (results / "timing/phase_timings.jsonl").read_text().splitlines()]
    assert {"organism", "activations", "vectors", "residual_chunk", "residual_merge", "screen_heads",
            "patch_heads", "align_pair", "stats_effect", "stats_power", "stats_k"} <= {t["rule"] for t in timings}
    assert sorted(t["chunk"] for t in timings if t["rule"] == "residual_chunk" and t["model"] == "pythia") == [
        "layers_00-01", "layers_02-02"]

    assert len(list((results / "figures").glob("*.png"))) >= 4
    for m in ("pythia", "gemma"):  # every phase of both models, the int8 one included
        for path in (f"activations/{m}.pkl", f"emotion_vectors/{m}_vectors.pkl",
                     f"patching/residual/{m}_residual_sweep.pkl", f"screening/head_scores_{m}.json",
                     f"patching/head/{m}_head_patching.pkl"):
            assert (results / path).is_file(), path
    assert load_pickle(results / "activations/gemma.pkl")["quantization"] == "int8"

    # Run from another directory, the workflow profile still comes from the Snakefile's; nothing is left to do.
    out = wf.run(mini_workdir, "-n", "--cores", "2")
    assert out.returncode == 0, out.stdout[-4000:]
    assert f"Using workflow specific profile {wf.root / 'profiles/default'}" in out.stdout
    assert "Nothing to be done" in out.stdout, out.stdout[-4000:]


def test_conda_env_paths_resolve_from_another_directory(wf, tmp_path):
    """Rules name their env as ../../envs/emolens.yaml, relative to the rule file, not the working directory."""
    out = wf.run(tmp_path, "--containerize")  # hashes every env file; fails later where conda is missing
    hashed = re.findall(r"Hashing conda environment (\S+?)\.?$", out.stdout, flags=re.M)
    assert hashed, out.stdout[-3000:]
    assert {(tmp_path / p).resolve() for p in hashed} == {(wf.root / "envs/emolens.yaml").resolve()}


def test_report_is_written(mini_workdir, wf, tmp_path):
    report = tmp_path / "report.html"
    out = wf.run(mini_workdir, "--report", str(report))
    assert out.returncode == 0, out.stdout[-4000:]
    html = report.read_text(errors="replace")
    assert html.lstrip().lower().startswith("<!doctype html")
    figures = sorted(p.name for p in (mini_workdir / RESULTS / "figures").glob("*.png"))
    assert figures and all(name in html for name in figures), figures


def test_rerun_one_chunk_reruns_that_chunk_and_the_merge_only(mini_workdir, wf, tmp_path):
    work = wf.clone(mini_workdir, tmp_path / "work")
    chunk = f"{CHUNKS}/layers_00-01.pkl"

    plan = wf.run(work, "-n", "--cores", "2", "-R", chunk)
    assert plan.returncode == 0, plan.stdout[-4000:]
    jobs = wf.job_counts(plan.stdout)
    assert jobs["residual_chunk"] == 1 and jobs["residual_merge"] == 1 and set(jobs) <= SWEEP_AND_DOWNSTREAM, jobs
    assert re.findall(r"output: (\S*/chunks/\S+)", plan.stdout) == [chunk]

    others = {p: p.stat().st_mtime_ns for p in (work / CHUNKS).glob("*.pkl") if p.name != "layers_00-01.pkl"}
    before = (work / chunk).stat().st_mtime_ns
    rerun = wf.run(work, "--cores", "2", "-R", chunk, "--", SWEEP)
    assert rerun.returncode == 0, rerun.stdout[-4000:]
    assert wf.job_counts(rerun.stdout) == {"residual_chunk": 1, "residual_merge": 1}, rerun.stdout[-4000:]
    assert (work / chunk).stat().st_mtime_ns > before
    assert {p: p.stat().st_mtime_ns for p in others} == others
    np.testing.assert_allclose(load_pickle(work / SWEEP)["effect"], load_pickle(mini_workdir / SWEEP)["effect"],
                               atol=1e-6)


def test_summary_flags_a_deleted_chunk_as_missing(mini_workdir, wf, tmp_path):
    work = wf.clone(mini_workdir, tmp_path / "work")
    chunk = f"{CHUNKS}/layers_02-02.pkl"
    (work / chunk).unlink()
    out = wf.run(work, "--summary")
    assert out.returncode == 0, out.stdout[-4000:]
    rows = {line.split("\t")[0]: line.split("\t") for line in out.stdout.splitlines() if "\t" in line}
    # status, plan: the chunk is missing; while the merged sweep is up to date nothing is rerun for it
    # (Snakemake keeps finished work), so the docs say to rebuild it with `snakemake -R <chunk>`.
    assert rows[chunk][4:6] == ["missing", "no update"], rows[chunk]
    assert rows[SWEEP][4:6] == ["ok", "no update"], rows[SWEEP]
    assert rows[f"{CHUNKS}/layers_00-01.pkl"][4:6] == ["ok", "no update"]
