"""A null dataset through the workflow as a user gives one: the mini organisms read a copy of the dataset whose
labels were permuted by frame (``emolens dataset --permute-by frame``), given as ``dataset:``. The run must
finish, verify and find no aligned emotion dimension (k = 0 for every pair, with its reason)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml


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
