"""Cluster profiles: they parse, dry-run from the repo root without submitting anything, give GPU rules
a GPU, and the generic profile's submit command resolves for a real job (through a fake qsub)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = {"slurm": "snakemake_executor_plugin_slurm", "cluster-generic": "snakemake_executor_plugin_cluster_generic"}
SCHEDULER_COMMANDS = ["sbatch", "sinfo", "squeue", "sacct", "sacctmgr", "scontrol", "scancel", "qsub", "qstat", "qdel"]
# Commands that would submit or cancel work. Read-only queries are allowed: the slurm plugin, loaded to
# build Snakemake's command line, runs `scontrol show config` when scontrol is on PATH, in any mode.
SUBMIT_OR_CANCEL = {"sbatch", "scancel", "qsub", "qdel"}
GPU_RULES = {"activations", "residual_chunk", "screen_heads", "patch_heads", "sublayers"}


def _profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())


def _trap_schedulers(bin_dir: Path, marker: Path) -> dict[str, str]:
    """PATH where every scheduler command records that it was called, and fails."""
    bin_dir.mkdir()
    for cmd in SCHEDULER_COMMANDS:
        script = bin_dir / cmd
        script.write_text(f'#!/bin/sh\necho "{cmd} $*" >> {marker}\nexit 1\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _job_resources(dry_run_stdout: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run lists."""
    jobs, rule = [], None
    for line in dry_run_stdout.splitlines():
        if line.startswith("rule ") and line.rstrip().endswith(":"):
            rule = line[5:].rstrip(":").strip()
        elif line.strip().startswith("resources:") and rule:
            pairs = line.split("resources:", 1)[1].split(", ")
            jobs.append((rule, dict(p.strip().split("=", 1) for p in pairs)))
            rule = None
    return jobs


@pytest.mark.parametrize("name", PROFILES)
def test_profile_parses_and_uses_its_executor(name):
    profile = _profile(name)
    assert profile["executor"] == name
    assert profile["retries"] >= 1 and profile["rerun-incomplete"] is True and profile["latency-wait"] > 0
    for rule in GPU_RULES:
        assert profile["set-resources"][rule]["gpu"] == 1
    # The only profile file: with both, Snakemake would pick one arbitrarily.
    assert sorted(p.name for p in (ROOT / "profiles" / name).iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("configfile", [None, "config/demo.yaml"])  # None: the profile's baseline
@pytest.mark.parametrize("name", PROFILES)
def test_dry_run_from_repo_root_submits_nothing(name, configfile, tmp_path):
    pytest.importorskip(PROFILES[name])
    marker = tmp_path / "called"
    env = _trap_schedulers(tmp_path / "bin", marker)
    extra = ["--configfile", configfile] if configfile else []
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile", f"profiles/{name}", "-n", "--forceall",
         "--directory", str(ROOT), *extra],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert f"Using workflow specific profile profiles/{name}" in log
    assert f"config/{'demo' if configfile else 'config'}.yaml" in log.split("Config file(s):")[1].splitlines()[0]
    called = marker.read_text().splitlines() if marker.exists() else []
    assert not [c for c in called if c.split()[0] in SUBMIT_OR_CANCEL], called
    jobs = _job_resources(out.stdout)
    gpu_rules = {rule for rule, res in jobs if res.get("gpu", "0") != "0"}
    assert GPU_RULES <= gpu_rules and "vectors" in {rule for rule, _ in jobs}
    assert gpu_rules <= set(_profile(name)["set-resources"]), "every GPU rule needs a set-resources entry"
    partition = "slurm_partition" if name == "slurm" else "queue"
    for rule, res in jobs:
        if rule in gpu_rules:
            assert res["gpu"] == "1" and res[partition] == "gpu" and int(res["mem_mb"]) >= 32000, rule
        else:
            assert res[partition] in ("cpu", "workq") and "runtime" in res, rule


@pytest.mark.slow
def test_generic_submit_command_resolves_for_a_real_job(tmp_path):
    """Run the dataset rule through the cluster-generic profile with a fake qsub that runs the job here."""
    pytest.importorskip(PROFILES["cluster-generic"])
    work, bin_dir, calls = tmp_path / "work", tmp_path / "bin", tmp_path / "qsub.log"
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_text((ROOT / "config/demo.yaml").read_text())
    bin_dir.mkdir()
    qsub = bin_dir / "qsub"
    qsub.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$FAKE_QSUB_LOG"\nfor last; do :; done\n'
                    'sh "$last" > /dev/null 2>&1\necho 1234.fake\n')
    qsub.chmod(qsub.stat().st_mode | stat.S_IEXEC)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])  # + emolens
    env = {**os.environ, "PATH": path, "FAKE_QSUB_LOG": str(calls)}
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
         "--workflow-profile", str(ROOT / "profiles/cluster-generic"), "--latency-wait", "5",
         "--seconds-between-status-checks", "1", "results/demo/data/emotion_dataset.jsonl"],
        capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (line,) = calls.read_text().splitlines()
    assert "-N emolens.dataset -q workq" in line
    assert "select=1:ncpus=1:mem=4000mb:ngpus=0" in line and "walltime=60:00" in line
    assert len((work / "results/demo/data/emotion_dataset.jsonl").read_text().splitlines()) == 900
