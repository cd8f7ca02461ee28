"""Kill and resume, and determinism.

Kill and resume: a sweep is started in its own process group, killed with SIGKILL while a chunk job
runs, unlocked and resumed with ``--rerun-incomplete``: the finished chunks are not recomputed (their
modification times hold), the killed chunk is, and the merged sweep equals the uninterrupted run's.
Determinism: the dataset is byte-identical across builds, and a chunk computed twice is equal to 1e-6.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from emolens.cli import main
from emolens.config import load_config
from emolens.io import load_pickle

RESULTS = "results/mini"
MODEL = "pythia"  # the mini model whose sweep runs as two chunk jobs
CHUNKS = f"{RESULTS}/patching/residual/chunks/{MODEL}"
LOGS = f"{RESULTS}/logs/residual_chunk"
SWEEP = f"{RESULTS}/patching/residual/{MODEL}_residual_sweep.pkl"
ARRAYS = ("effect", "ld_patched", "summary", "ci_low", "ci_high", "ld_clean_run", "ld_clean_donor")


def _assert_same_sweep(a: dict, b: dict) -> None:
    assert a["layers"] == b["layers"] and a["positions"] == b["positions"] and a["pairs"] == b["pairs"]
    for key in ARRAYS:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6, rtol=0, equal_nan=True, err_msg=key)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _chunk_state(work: Path) -> tuple[set[str], set[str]]:
    """Finished chunk files, and chunks whose job has started (its log exists) but not finished."""
    done = {p.stem for p in (work / CHUNKS).glob("layers_*.pkl")}
    started = {p.stem.split("__", 1)[1] for p in (work / LOGS).glob(f"{MODEL}__layers_*.log")}
    return done, started - done


def _wait_for_a_running_chunk(work: Path, run: subprocess.Popen, log: Path) -> tuple[set[str], set[str]]:
    """Poll until one chunk file is finished and another chunk job has started."""
    deadline = time.monotonic() + 600
    while True:
        done, running = _chunk_state(work)
        if done and running:
            return done, running
        assert run.poll() is None, f"the sweep ended before a chunk job was seen running: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no chunk job seen running"
        time.sleep(0.05)


def test_kill_during_a_chunk_then_resume_recomputes_only_that_chunk(mini_workdir, wf, tmp_path):
    # The dataset and the trained organism of the uninterrupted run; the sweep starts from nothing.
    work = tmp_path / "work"
    shutil.copytree(mini_workdir / RESULTS / "data", work / RESULTS / "data")
    shutil.copytree(mini_workdir / RESULTS / "models" / MODEL, work / RESULTS / "models" / MODEL)

    with open(tmp_path / "killed_run.log", "w") as log:
        run = subprocess.Popen(wf.command(work, "--cores", "1", SWEEP), cwd=work, env=wf.env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        try:
            done, running = _wait_for_a_running_chunk(work, run, tmp_path / "killed_run.log")
            finished = {name: (work / CHUNKS / f"{name}.pkl").stat().st_mtime_ns for name in done}
            os.killpg(run.pid, signal.SIGKILL)  # Snakemake and the chunk job it runs: one process group
            run.wait(timeout=30)
            for _ in range(100):
                if not _group_alive(run.pid):
                    break
                time.sleep(0.1)
            assert not _group_alive(run.pid), "a job of the killed run survived"
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(timeout=30)

    # Nothing that looks finished was left by the killed job.
    (killed,) = running
    assert not (work / CHUNKS / f"{killed}.pkl").exists()
    assert not (work / SWEEP).exists()

    unlock = wf.run(work, "--unlock")
    assert unlock.returncode == 0, unlock.stdout[-3000:]
    resume = wf.run(work, "--cores", "2", "--rerun-incomplete", SWEEP)
    assert resume.returncode == 0, resume.stdout[-4000:]

    rerun = {Path(p).stem for p in re.findall(r"output: (\S*/chunks/\S+\.pkl)", resume.stdout)}
    assert rerun == {killed}, (killed, rerun, finished)
    assert {name: (work / CHUNKS / f"{name}.pkl").stat().st_mtime_ns for name in finished} == finished
    assert len(list((work / CHUNKS).glob("layers_*.pkl"))) == 2
    _assert_same_sweep(load_pickle(work / SWEEP), load_pickle(mini_workdir / SWEEP))


def test_dataset_is_byte_identical_across_builds(mini_workdir, wf, tmp_path):
    assert main(["dataset", "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main(["dataset", "--out", str(tmp_path / "b.jsonl")]) == 0
    built = (tmp_path / "a.jsonl").read_bytes()
    assert built == (tmp_path / "b.jsonl").read_bytes()
    assert built == (mini_workdir / wf.dataset).read_bytes()  # built by the workflow


def test_chunk_computed_twice_is_equal(mini_workdir, wf, tmp_path):
    """The same chunk, same settings, in two fresh processes (and in the workflow run): equal to 1e-6."""
    config = load_config(wf.config)
    p = config["patching"]
    command = ["emolens", "residual-chunk", "--name", MODEL, "--settings",
               json.dumps(config["models"][MODEL], sort_keys=True), "--dataset", wf.dataset,
               "--layers", "02-02", "--message-positions", str(p["message_positions"]), "--direction", p["direction"],
               "--seed", str(config["seed"]), "--max-pairs", str(p["max_pairs"]), "--device", config["device"]]
    runs = [subprocess.Popen([*command, "--out", str(tmp_path / f"{k}.pkl")], cwd=mini_workdir, env=wf.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in "ab"]
    for r in runs:
        output, _ = r.communicate(timeout=300)
        assert r.returncode == 0, output[-3000:]
    a, b, workflow = (load_pickle(path) for path in (tmp_path / "a.pkl", tmp_path / "b.pkl",
                                                      mini_workdir / CHUNKS / "layers_02-02.pkl"))
    for other in (b, workflow):
        assert a["pairs"] == other["pairs"] and a["label_token_ids"] == other["label_token_ids"]
        for key in ("effect", "ld_patched", "ld_clean_run", "ld_clean_donor"):
            np.testing.assert_allclose(a[key], other[key], atol=1e-6, rtol=0, equal_nan=True, err_msg=key)
