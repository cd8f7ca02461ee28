"""Retries: every model rule has ``retries: 1`` for resource errors, but an input error (exit status 2) is the
same on every attempt, so it costs one attempt. Run through Snakemake on the equivalence rule (every model's first
job, which reads the dataset before it loads the model), in a fresh working
directory, with a counting wrapper in front of the real ``emolens`` command: how often the command's body ran
is the number of attempts that did work."""

import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from emolens.data.dataset import build_dataset, write_dataset

WRAPPER = """#!{python}
import os, sys
from emolens import cli

real = cli._cmd_equivalence


def counted(a):
    with open(os.environ["EMOLENS_CALLS"], "a") as calls:
        calls.write("ran\\n")
    if os.environ.get("FAKE_OUT_OF_MEMORY"):
        raise MemoryError("simulated: the host ran out of memory")
    return real(a)


cli._cmd_equivalence = counted
sys.exit(cli.main())
"""


@pytest.fixture
def retry_workdir(tmp_path) -> Path:
    """A working directory with a one-model profile whose model job is equivalence; ``bin/emolens`` counts runs."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump({
        "profile": "retry", "dataset": "prompts.jsonl", "device": "cpu",
        "models": {"m": {"path": "models/m", "n_layers": 2}}}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "emolens"
    wrapper.write_text(WRAPPER.format(python=sys.executable))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return work


def _run(wf, work: Path, **env: str):
    calls = work.parent / "calls.txt"
    path = os.pathsep.join([str(work.parent / "bin"), wf.env["PATH"]])
    out = wf.run(work, "--cores", "1", "results/retry/equivalence/m.json", config=work / "config.yaml",
                 env={"PATH": path, "EMOLENS_CALLS": str(calls), **env})
    return out, len(calls.read_text().splitlines()) if calls.exists() else 0


def test_input_error_costs_one_attempt(wf, retry_workdir):
    (retry_workdir / "prompts.jsonl").write_text('{"id": "a", "emotion": "anger", "text": "unterminated\n')
    out, runs = _run(wf, retry_workdir)
    assert out.returncode != 0
    assert runs == 1, out.stdout[-4000:]  # Snakemake retried, but the retry refused to run again
    log = (retry_workdir / "results/retry/logs/equivalence/m.log").read_text().splitlines()
    assert log[0].startswith("emolens: attempt 2 not run: attempt 1 ended in an input error (exit 2)")
    assert log[-1].startswith("emolens equivalence: error: prompts.jsonl:1: not valid JSON")


def test_resource_error_is_still_retried(wf, retry_workdir):
    write_dataset(build_dataset(), retry_workdir / "prompts.jsonl")
    out, runs = _run(wf, retry_workdir, FAKE_OUT_OF_MEMORY="1")
    assert out.returncode != 0 and runs == 2, out.stdout[-4000:]
    assert "Trying to restart job" in out.stdout
    log = (retry_workdir / "results/retry/logs/equivalence/m.log").read_text()
    assert "emolens equivalence: error: out of host memory (MemoryError('simulated" in log
    assert not (retry_workdir / "results/retry/logs/equivalence/m.log.input_error").exists()
