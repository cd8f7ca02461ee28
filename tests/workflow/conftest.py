"""The mini profile run end to end once per test run, and a small driver for Snakemake on it.

Fixtures:

- ``wf`` (session): a :class:`MiniWorkflow`: ``wf.run(workdir, *args)`` runs Snakemake on a working
  directory with the mini profile and the repo's Snakefile (so the workflow profile is the repo's
  ``profiles/default``); ``wf.clone(src, dst)`` copies a working directory keeping modification
  times (Snakemake sees the copy as up to date); ``wf.job_counts(log)`` reads the "Job stats" table.
- ``mini_workdir`` (session): a tmp working directory in which ``snakemake --cores 2 --configfile
  mini.yaml`` ran the whole DAG (dataset, organisms, every phase, verification, timing, figures).
  Tests only read it; a test that changes or deletes outputs works on a ``wf.clone`` of it. Under
  pytest-xdist the workers share one run (a file lock; the first worker to ask builds it).

Every job runs with one torch thread (two jobs on two cores), which is also what makes a rerun
comparable to the first run to 1e-6.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class MiniWorkflow:
    """Snakemake on a working directory with the mini profile (``tests/workflow/mini.yaml``)."""

    root = ROOT
    config = Path(__file__).with_name("mini.yaml")
    results = "results/mini"
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),  # emolens
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }

    def command(self, workdir: Path, *args: str) -> list[str]:
        """The Snakemake command line for ``workdir``."""
        return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                str(workdir), "--configfile", str(self.config), *args]

    def run(self, workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run Snakemake; stdout and stderr together in ``.stdout``."""
        return subprocess.run(self.command(workdir, *args), cwd=workdir, env=self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)

    @staticmethod
    def clone(src: Path, dst: Path) -> Path:
        """Copy a working directory, Snakemake's metadata included, keeping modification times."""
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("locks", "log"))
        return dst

    @staticmethod
    def job_counts(log: str) -> dict[str, int]:
        """The 'Job stats' table of a Snakemake log, rule -> count (empty when nothing is to be done)."""
        if "Job stats:" not in log:
            return {}
        table = log.split("Job stats:", 1)[1].split("total", 1)[0]
        rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
        return {rule: int(n) for rule, n in rows}


@pytest.fixture(scope="session")
def wf() -> MiniWorkflow:
    return MiniWorkflow()


@pytest.fixture(scope="session")
def mini_workdir(wf, tmp_path_factory) -> Path:
    """A working directory where the whole mini DAG ran to completion (built once per test run)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the base temp of the whole run, shared by every xdist worker
    work, done = shared / "mini_workdir", shared / "mini_workdir.done"
    with open(shared / "mini_workdir.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            out = wf.run(work, "--cores", "2")
            assert out.returncode == 0, out.stdout[-4000:]
            done.touch()
    return work
