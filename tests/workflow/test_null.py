"""A null dataset through the workflow as a user gives one: the mini organisms read a copy of the dataset whose
labels were permuted by frame (``emolens dataset --permute-by frame``), given as ``dataset:``. The run must
finish, verify and find no aligned emotion dimension (k = 0 for every pair, with its reason). The labels profile's
null (``make null-labels``: three emotions, the user's own JSONL permuted by frame) is checked here as a dry run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def null_workdir(wf, mini_organisms, tmp_path_factory):
    work = tmp_path_factory.mktemp("null")
    config = yaml.safe_load(wf.config.read_text())
    for name, settings in config["models"].items():  # the trained organisms, read as a user's local checkpoints
        shutil.copytree(mini_organisms / settings["path"], work / "organisms" / name)
        settings |= {"path": f"organisms/{name}", "n_layers": settings.pop("organism")["n_layers"]}
    out = subprocess.run([sys.executable, "-m", "emolens.cli", "dataset", "--permute-by", "frame", "--source",
                          str(mini_organisms / wf.dataset), "--out", str(work / "null.jsonl")],
                         capture_output=True, text=True, env=wf.env)
    assert out.returncode == 0, out.stderr
    config |= {"profile": "null", "dataset": "null.jsonl"}
    (work / "null.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = wf.run(work, "--cores", "2", config=work / "null.yaml")
    assert run.returncode == 0, run.stdout[-4000:]
    return work / "results" / "null"


def test_a_dataset_permuted_by_frame_runs_to_a_passing_verification_and_finds_no_aligned_dimension(null_workdir):
    checks = json.loads((null_workdir / "verification.json").read_text())
    assert checks["passed"], [c for c in checks["checks"] if not c["passed"]]
    k = json.loads((null_workdir / "statistics" / "k.json").read_text())
    assert [p["k"] for p in k["pairs"]] == [0] and k["pairs"][0]["reason"]


def test_the_labels_profile_null_runs_on_its_own_jsonl_permuted_by_frame(wf, tmp_path):
    """``make null-labels``' steps, dry: the user's three-label JSONL permuted by frame (same texts, labels moved),
    then config/null_labels.yaml's DAG on it, reading the labels profile's organisms (no organism is built)."""
    source = ROOT / "config/data/joy_sadness_fear.jsonl"
    readout = json.dumps({"labels": {"joy": " joy", "sadness": " sadness", "fear": " fear"}})
    out = subprocess.run([sys.executable, "-m", "emolens.cli", "dataset", "--permute-by", "frame", "--source",
                          str(source), "--readout", readout, "--out", str(tmp_path / "null.jsonl")],
                         capture_output=True, text=True, env=wf.env)
    assert out.returncode == 0, out.stderr
    before, after = ([json.loads(line) for line in f.read_text().splitlines()]
                     for f in (source, tmp_path / "null.jsonl"))
    assert [r["text"] for r in before] == [r["text"] for r in after]
    assert sum(a["emotion"] != b["emotion"] for a, b in zip(before, after, strict=True)) > len(before) / 3
    dry = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                          str(tmp_path), "-n", "--cores", "2", "--configfile", str(ROOT / "config/null_labels.yaml"),
                          "--config", "dataset=null.jsonl"], capture_output=True, text=True, env=wf.env)
    assert dry.returncode == 0, dry.stderr[-4000:]
    assert wf.job_counts(dry.stdout)["activations"] == 3 and "organism" not in wf.job_counts(dry.stdout)
