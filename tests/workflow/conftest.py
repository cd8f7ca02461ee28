"""The mini profile run end to end once per test run, and a small driver for Snakemake on it.

Fixtures:

- ``wf`` (session): a :class:`MiniWorkflow`: ``wf.run(workdir, *args)`` runs Snakemake on a working
  directory with the mini profile and the repo's Snakefile (so the workflow profile is the repo's
  ``profiles/default``); ``wf.clone(src, dst)`` copies a working directory keeping modification
  times (Snakemake sees the copy as up to date); ``wf.job_counts(log)`` reads the "Job stats" table.
- ``mini_organisms`` (session): a tmp working directory in which the mini profile's dataset and
  organisms were built (``--until organism``).
- ``mini_workdir`` (session): a copy of it in which ``snakemake --cores 2 --configfile mini.yaml`` ran
  the whole DAG (every phase, verification, timing, figures).
  Tests only read it; a test that changes or deletes outputs works on a ``wf.clone`` of it. Under
  pytest-xdist the workers share one run (a file lock; the first worker to ask builds it).
- ``one_model_workdir`` (session): the same with pythia alone (``wf.one_model_config``): a one-model
  profile, whose cross-model phases are skipped; built from ``mini_workdir``'s dataset and organism.

Every job runs with one torch thread (two jobs on two cores), which is also what makes a rerun
comparable to the first run to 1e-6.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from emolens import layout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every workflow test runs Snakemake: all are slow."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)

ROOT = Path(__file__).resolve().parents[2]


class MiniWorkflow:
    """Snakemake on a working directory with the mini profile (``tests/workflow/mini.yaml``)."""

    root = ROOT
    config = Path(__file__).with_name("mini.yaml")
    results = "results/mini"
    dataset = f"{results}/data/emotion_dataset.jsonl"  # built by the workflow: the profile sets no dataset
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),  # emolens
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }

    def command(self, workdir: Path, *args: str, config: Path | None = None) -> list[str]:
        """The Snakemake command line for ``workdir`` (with the mini profile unless ``config`` names another)."""
        return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                str(workdir), "--configfile", str(config or self.config), *args]

    def run(self, workdir: Path, *args: str, timeout: float = 600, config: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run Snakemake; stdout and stderr together in ``.stdout``."""
        return subprocess.run(self.command(workdir, *args, config=config), cwd=workdir, env={**self.env, **(env or {})},
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)

    def one_model_config(self, path: Path, model: str = "pythia") -> Path:
        """The mini profile with ``model`` alone, written to ``path``."""
        config = yaml.safe_load(self.config.read_text())
        config["models"] = {model: config["models"][model]}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

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


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A working directory ``build`` fills once per test run; under pytest-xdist the workers share it (a file
    lock: the first worker to ask builds it)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the base temp of the whole run, shared by every xdist worker
    work, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            build(work)
            done.touch()
    return work


@pytest.fixture(scope="session")
def mini_organisms(wf, tmp_path_factory) -> Path:
    """A working directory where the mini profile's dataset and organisms were built (``--until organism``):
    what the null run needs, ready before the whole mini DAG is, so two workers do not wait on one."""

    def build(work: Path) -> None:
        out = wf.run(work, "--cores", "2", "--until", "organism")
        assert out.returncode == 0, out.stdout[-4000:]

    return _built_once(tmp_path_factory, "mini_organisms", build)


@pytest.fixture(scope="session")
def mini_workdir(wf, mini_organisms, tmp_path_factory) -> Path:
    """A working directory where the whole mini DAG ran to completion (built once per test run), from a
    copy of ``mini_organisms``."""

    def build(work: Path) -> None:
        work.rmdir()
        wf.clone(mini_organisms, work)
        out = wf.run(work, "--cores", "2")
        assert out.returncode == 0, out.stdout[-4000:]

    return _built_once(tmp_path_factory, "mini_workdir", build)


@pytest.fixture(scope="session")
def one_model_workdir(wf, mini_workdir, tmp_path_factory) -> Path:
    """A working directory where the mini profile with pythia alone (``one_model.yaml`` in it) ran to completion;
    ``log.txt`` holds Snakemake's output. The dataset, the trained organism and pythia's per-model results
    (activations to steering, with their benchmarks) are copied from ``mini_workdir`` (modification times kept):
    they are the same jobs with the same settings, so what runs is what a one-model profile changes, the
    statistics, verification, findings, figures and timing."""

    def build(work: Path) -> None:
        src, dst = mini_workdir / wf.results, work / wf.results
        per_model = (layout.model_dir, layout.equivalence, layout.activations, layout.readout, layout.vectors,
                     layout.subspaces, layout.residual_chunks, layout.residual_sweep, layout.head_scores,
                     layout.head_patching, layout.steering)
        benchmarks = [p for p in (src / "benchmarks").glob("*/pythia*") if "gemma" not in p.name]  # not the pair's
        copies = [layout.dataset(src), layout.dataset_card(src), *(kind(src, "pythia") for kind in per_model)]
        for path in copies + benchmarks:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                shutil.copy2(path, target)
        config = wf.one_model_config(work / "one_model.yaml")
        out = wf.run(work, "--cores", "2", config=config)
        (work / "log.txt").write_text(out.stdout)
        assert out.returncode == 0, out.stdout[-4000:]

    return _built_once(tmp_path_factory, "one_model_workdir", build)
