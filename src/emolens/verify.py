"""Verification: every output of every phase, for every model, checked against its contract.

Each check is one entry in ``verification.json`` ({check, model, passed, detail}); the command exits
non-zero when any fails. Beyond presence, schema, shapes, counts and finiteness, the checks hold
the science to its identities: patching the last block's output at the last position gives effect 1
for every pair; patching layer 0 at the last position gives 0 for pairs of equal token length (their
last tokens, the suffix's, embed alike in every family); attribution patching agrees with exact
patching; a model's representation aligns with itself perfectly (CKA = 1).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from emolens import EMOTIONS
from emolens.alignment import linear_cka
from emolens.io import ResultFileError, load_pickle, save_json

log = logging.getLogger(__name__)
IDENTITY_TOL = 1e-3


class Checks:
    """Collects named checks; an exception inside a check is a failure with its message."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, check: str, model: str | None, fn: Callable[[], tuple[bool, str]]) -> None:
        try:
            passed, detail = fn()
        except (ResultFileError, OSError, KeyError, ValueError, IndexError, TypeError, AssertionError) as e:
            passed, detail = False, f"{type(e).__name__}: {e}"
        self.entries.append({"check": check, "model": model, "passed": bool(passed), "detail": detail})
        if not passed:
            log.error("FAILED %s [%s]: %s", check, model, detail)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if not e["passed"]]


@lru_cache(maxsize=2)  # one model's activations and sweep, each read by several checks in a row
def _load(path: Path, schema: str | None = None) -> dict[str, Any]:
    return load_pickle(path, schema=schema)


def _finite(*arrays: Any) -> bool:
    return all(np.isfinite(np.asarray(a, dtype=float)).all() for a in arrays)


def check_activations(path: Path, n_prompts: int) -> tuple[bool, str]:
    act = _load(path, schema="emolens.activations/1")
    last, mean = act["resid"]["last"], act["resid"]["mean"]
    shape = (n_prompts, act["n_layers"] + 1, act["d_model"])
    counts = Counter(act["emotions"])
    ok = (last.shape == shape and mean.shape == shape and _finite(last, mean)
          and len(set(counts.values())) == 1 and set(counts) == set(EMOTIONS))
    return ok, f"resid {last.shape} (expected {shape}), classes {dict(counts)}"


def check_vectors(vec_path: Path, sub_path: Path) -> tuple[bool, str]:
    vec = load_pickle(vec_path, schema="emolens.vectors/1")
    sub = load_pickle(sub_path, schema="emolens.subspaces/1")
    sites = vec["n_layers"] + 1
    basis = sub["basis"].astype(np.float64)  # [L+1, k, d]
    gram_error = float(np.abs(basis @ basis.transpose(0, 2, 1) - np.eye(basis.shape[1])).max())
    acc = vec["probe_accuracy"]
    ok = (vec["vectors"].shape[:2] == (4, sites) and basis.shape[0] == sites and gram_error < 1e-4
          and _finite(vec["vectors"], acc) and ((acc >= 0) & (acc <= 1)).all())
    return ok, f"vectors {vec['vectors'].shape}, basis {basis.shape}, orthonormality error {gram_error:.1e}, " \
               f"best probe accuracy {acc.max():.3f}"


def check_sweep(path: Path, n_layers: int) -> tuple[bool, str]:
    sweep = _load(path, schema="emolens.residual_sweep/1")
    effect = sweep["effect"]  # [P, layers, positions]
    ok = list(sweep["layers"]) == list(range(n_layers + 1)) and effect.shape[1] == n_layers + 1
    last = list(sweep["positions"]).index(-1)
    ok &= _finite(effect[:, :, last])
    mean_at_l = np.nanmean(effect[:, -1, last])
    return ok, f"effect {effect.shape}, layers 0..{max(sweep['layers'])}, mean at L {mean_at_l:.3f}"


def check_chunks(chunk_dir: Path, n_layers: int) -> tuple[bool, str]:
    """The phase-5 chunk files cover residual indices 0..L exactly once, each a readable chunk."""
    covered: list[int] = []
    for path in sorted(chunk_dir.glob("layers_*.pkl")):
        covered += list(load_pickle(path, schema="emolens.residual_chunk/1")["layers"])
    expected = list(range(n_layers + 1))
    missing = sorted(set(expected) - set(covered))
    ok = sorted(covered) == expected
    return ok, f"{len(covered)} residual indices in {chunk_dir}" + (f"; missing {missing}" if missing else "")


def check_identities(path: Path) -> tuple[bool, str]:
    sweep = _load(path, schema="emolens.residual_sweep/1")
    effect, layers, positions = sweep["effect"], list(sweep["layers"]), list(sweep["positions"])
    last = positions.index(-1)
    at_l = effect[:, layers.index(max(layers)), last]
    # pairs of equal token length are exactly those with values at the earlier offsets
    equal_length = np.isfinite(effect[:, 0, :]).all(axis=1)
    at_0 = effect[equal_length, layers.index(0), last]
    err_l, err_0 = float(np.abs(at_l - 1).max()), float(np.abs(at_0).max()) if at_0.size else 0.0
    ok = err_l < IDENTITY_TOL and err_0 < IDENTITY_TOL and at_0.size > 0
    return ok, f"max |effect(L) - 1| = {err_l:.1e} over {at_l.size} pairs; " \
               f"max |effect(0)| = {err_0:.1e} over {at_0.size} equal-length pairs"


def check_screening(path: Path, n_layers: int, min_spearman: float) -> tuple[bool, str]:
    scores = json.loads(path.read_text())
    exact, attribution = np.array(scores["exact_last_position"], float), np.array(scores["attribution"], float)
    rho = scores["spearman"]
    ok = (exact.shape[0] == n_layers and exact.shape == attribution.shape and _finite(exact, attribution)
          and rho is not None and rho >= min_spearman and len(scores["top_heads"]) > 0)
    return ok, f"{exact.shape[0]}x{exact.shape[1]} heads, attribution vs exact Spearman {rho} (min {min_spearman})"


def check_head_patching(path: Path) -> tuple[bool, str]:
    hp = load_pickle(path, schema="emolens.head_patching/1")
    single, joint = hp["effect_single"], hp["effect_joint"]
    ok = single.shape == (len(hp["pairs"]), len(hp["heads"])) and joint.shape == (len(hp["pairs"]),)
    ok &= _finite(single, joint)
    return ok, f"{len(hp['heads'])} heads x {len(hp['pairs'])} pairs, mean joint effect {np.mean(joint):.3f}"


def check_self_alignment(act_path: Path) -> tuple[bool, str]:
    act = _load(act_path, schema="emolens.activations/1")
    x = act["resid"]["last"][:, act["n_layers"]].astype(np.float64)  # the last block's output varies by prompt
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(x.shape[1], x.shape[1])))
    cka = linear_cka(x, 3.0 * x @ rotation)
    return abs(cka - 1) < 1e-6, f"CKA(x, rotated and scaled x) = {cka:.8f}"


def check_alignment(pair_files: list[Path], summary: Path, n_models: int) -> tuple[bool, str]:
    pairs = [load_pickle(p, schema="emolens.alignment/1") for p in pair_files]
    ok = len(pairs) == n_models * (n_models - 1) // 2
    ok &= all(p["matched"] and _finite([m["linear_cka"] for m in p["matched"]]) for p in pairs)
    ok &= len(json.loads(summary.read_text())["pairs"]) == len(pairs)
    return ok, f"{len(pairs)} model pairs"


def check_statistics(stats_dir: Path) -> tuple[bool, str]:
    found = {mode: json.loads((stats_dir / f"{mode}.json").read_text()) for mode in ("effect", "power", "k")}
    return all("provenance" in v for v in found.values()), f"modes {sorted(found)}"


def verify(results: str | Path, models: list[str], n_prompts: int,
           min_spearman: float = 0.0) -> Checks:
    """Run every check over a profile's results directory."""
    r = Path(results)
    _load.cache_clear()  # files may have changed since an earlier call in this process
    checks = Checks()
    n_layers: dict[str, int] = {}
    for m in models:
        act = r / "activations" / f"{m}.pkl"
        checks("activations", m, lambda act=act: check_activations(act, n_prompts))
        try:
            n_layers[m] = _load(act, schema="emolens.activations/1")["n_layers"]
        except ResultFileError:
            continue  # reported by the activations check; nothing downstream can be checked
        checks("vectors", m, lambda m=m: check_vectors(r / "emotion_vectors" / f"{m}_vectors.pkl",
                                                       r / "emotion_subspaces" / f"{m}_subspaces.pkl"))
        sweep = r / "patching" / "residual" / f"{m}_residual_sweep.pkl"
        checks("residual_sweep", m, lambda m=m, sweep=sweep: check_sweep(sweep, n_layers[m]))
        checks("identities", m, lambda sweep=sweep: check_identities(sweep))
        checks("residual_chunks", m, lambda m=m: check_chunks(r / "patching" / "residual" / "chunks" / m, n_layers[m]))
        checks("head_screening", m, lambda m=m: check_screening(
            r / "screening" / f"head_scores_{m}.json", n_layers[m], min_spearman))
        checks("head_patching", m, lambda m=m: check_head_patching(r / "patching" / "head" / f"{m}_head_patching.pkl"))
        checks("self_alignment", m, lambda act=act: check_self_alignment(act))
    pair_files = sorted((r / "alignment").glob("*__*.pkl"))
    checks("alignment", None, lambda: check_alignment(pair_files, r / "alignment" / "summary.json", len(models)))
    checks("statistics", None, lambda: check_statistics(r / "statistics"))
    return checks


def run(results: str | Path, models: list[str], n_prompts: int, out: str | Path,
        min_spearman: float = 0.0) -> int:
    """Verify a profile, write ``verification.json``, return the number of failed checks."""
    checks = verify(results, models, n_prompts, min_spearman)
    save_json({"passed": not checks.failed, "n_checks": len(checks.entries), "n_failed": len(checks.failed),
               "checks": checks.entries}, out)
    log.info("%d checks, %d failed", len(checks.entries), len(checks.failed))
    return len(checks.failed)
