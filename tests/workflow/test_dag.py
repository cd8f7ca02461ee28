"""The workflow as a whole: both profiles lint clean and dry-run with every rule; bad configs fail fast."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--directory", str(ROOT), "--snakefile", str(ROOT / "Snakefile")]
BASELINE_RULES = {"dataset", "activations", "vectors", "all"}


def _snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, *args], capture_output=True, text=True, cwd=ROOT)


def _jobs(dry_run_stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, rule -> count."""
    table = dry_run_stdout.split("Job stats:")[1].split("total")[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {rule: int(n) for rule, n in rows}


def test_baseline_dry_run_lists_every_rule():
    out = _snakemake("-n", "--cores", "1", "--forceall")
    assert out.returncode == 0, out.stderr
    jobs = _jobs(out.stdout)
    assert BASELINE_RULES <= set(jobs)
    assert jobs["activations"] == 6 and "organism" not in jobs


def test_demo_dry_run_builds_organisms_and_a_ceiling_twin():
    out = _snakemake("-n", "--cores", "2", "--configfile", "config/demo.yaml", "--forceall")
    assert out.returncode == 0, out.stderr
    jobs = _jobs(out.stdout)
    assert jobs["organism"] == 7 and jobs["activations"] == 7 and jobs["steer"] == 6  # the twin: activations only
    assert jobs["align_pair"] == 15 + 6 + 1 and jobs["words"] == 1  # model pairs, each against the words, the twin


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/demo.yaml"])
def test_lint_clean(configfile):
    out = _snakemake("--lint", "--configfile", configfile)
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout + out.stderr


def test_config_typo_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/demo.yaml").read_text().replace("message_positions: 4", "message_positionz: 4"))
    out = _snakemake("-n", "--cores", "1", "--configfile", str(bad))
    assert out.returncode != 0
    assert "message_positionz" in out.stderr + out.stdout


def test_command_line_config_typo_is_named_as_the_command_lines():
    out = _snakemake("-n", "--cores", "1", "--configfile", "config/demo.yaml", "--config", "seeed=1")
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert "--config: (top level): Additional properties are not allowed ('seeed' was unexpected)" in log, log
    assert "config/demo.yaml: (top level)" not in log


def test_nested_numeric_command_line_override_works():
    out = _snakemake("-n", "--cores", "2", "--configfile", "config/demo.yaml", "--forceall",
                     "--config", "patching={message_positions: 2, max_pairs: 12}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "--message-positions 2 --max-pairs 12" in out.stdout


def test_preflight_runs_first_for_hub_models_only():
    baseline = _snakemake("-n", "--cores", "1", "--forceall")
    assert baseline.returncode == 0, baseline.stderr
    assert _jobs(baseline.stdout)["preflight"] == 1
    checks = [block for block in baseline.stdout.split("\n\n") if "rule equivalence:" in block]
    assert checks and all("results/baseline/preflight.json" in block.split("output:")[0] for block in checks)
    for rule in ("activations", "residual_chunk", "screen_heads", "patch_heads", "steer"):
        jobs = [block for block in baseline.stdout.split("\n\n") if f"rule {rule}:" in block]
        assert jobs and all("results/baseline/equivalence/" in block.split("output:")[0] for block in jobs), rule
    demo = _snakemake("-n", "--cores", "2", "--configfile", "config/demo.yaml", "--forceall")
    assert "preflight" not in _jobs(demo.stdout) and "preflight.json" not in demo.stdout
