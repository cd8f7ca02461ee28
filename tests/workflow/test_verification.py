"""Verification fails, naming the check, when an output is wrong: a planted NaN, a missing chunk."""

import json
import pickle

import numpy as np

from emolens.data.dataset import load_dataset
from emolens.io import load_pickle
from emolens.phases.alignment import WORDS
from emolens.report.checks import check_dataset, check_head_split
from emolens.report.verify import run as verify


def _verify(workdir, wf):
    results = workdir / wf.results
    models = sorted(p.stem for p in (results / "activations").glob("*.pkl") if p.stem != WORDS)  # no reference
    failed = verify(results, models, load_dataset(workdir / wf.dataset), results / "check.json")
    checks = json.loads((results / "check.json").read_text())["checks"]
    return failed, {(c["check"], c["model"]) for c in checks if not c["passed"]}


def test_mini_results_verify(mini_workdir, wf, tmp_path):
    failed, which = _verify(wf.clone(mini_workdir, tmp_path / "w"), wf)
    assert failed == 0, which


def test_planted_nan_fails_activations(mini_workdir, wf, tmp_path):
    work = wf.clone(mini_workdir, tmp_path / "w")
    path = next((work / wf.results / "activations").glob("*.pkl"))
    act = load_pickle(path)
    act["resid"]["last"][3, 1, 0] = np.nan
    path.write_bytes(pickle.dumps(act))
    failed, which = _verify(work, wf)
    assert failed >= 1 and ("activations", path.stem) in which


def test_missing_chunk_fails(mini_workdir, wf, tmp_path):
    work = wf.clone(mini_workdir, tmp_path / "w")
    chunk = sorted((work / wf.results / "patching/residual/chunks").glob("*/layers_*.pkl"))[0]
    chunk.unlink()
    failed, which = _verify(work, wf)
    assert which == {("residual_chunks", chunk.parent.name)}


def test_planted_stem_and_shared_head_items_fail(mini_workdir, wf, tmp_path):
    records = load_dataset(mini_workdir / wf.dataset)
    assert check_dataset(records)[0]
    implicit = next(i for i, r in enumerate(records) if r["register"] == "implicit")
    records[implicit] = {**records[implicit], "text": records[implicit]["text"] + " Sorry."}
    assert not check_dataset(records)[0]
    work = wf.clone(mini_workdir, tmp_path / "w")
    screening = next((work / wf.results / "screening").glob("head_scores_*.json"))
    head = work / wf.results / "patching/head" / f"{screening.stem.removeprefix('head_scores_')}_head_patching.pkl"
    assert check_head_split(screening, head)[0]
    scores = json.loads(screening.read_text())
    scores["items"].append(load_pickle(head)["items"][0])  # 6a saw an item 6b confirms on
    screening.write_text(json.dumps(scores))
    assert not check_head_split(screening, head)[0]
