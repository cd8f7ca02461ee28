"""Where every result lives: one function per output kind, under a profile's results directory.

The rule files (through ``workflow/rules/common.smk``) and every module that reads results (findings,
verification, figures, :func:`emolens.report.results.load`) take their paths from here, so a file's name is
written once. ``root`` is ``results/<profile>``; a model or pair name may be a Snakemake wildcard
(``"{model}"``), which these functions pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Root = str | Path


def root(profile: str) -> Path:
    """A profile's results directory."""
    return Path("results") / profile


def dataset(r: Root) -> Path:
    """The workflow's own dataset (a user's JSONL is read where it is)."""
    return Path(r) / "data" / "emotion_dataset.jsonl"


def dataset_card(r: Root) -> Path:
    """The dataset card (:mod:`emolens.data.card`) of the dataset the profile runs on."""
    return Path(r) / "data" / "dataset_card.json"


def preflight(r: Root) -> Path:
    return Path(r) / "preflight.json"


def model_dir(r: Root, model: str) -> Path:
    """A demo organism's checkpoint directory."""
    return Path(r) / "models" / model


def organism_readout(r: Root, model: str) -> Path:
    """The organism's held-out readout accuracy, written last: the organism is complete when it exists."""
    return model_dir(r, model) / "readout_accuracy.json"


def equivalence(r: Root, model: str) -> Path:
    return Path(r) / "equivalence" / f"{model}.json"


def activations(r: Root, model: str) -> Path:
    return Path(r) / "activations" / f"{model}.pkl"


def readout(r: Root, model: str) -> Path:
    return Path(r) / "readout" / f"{model}.json"


def vectors(r: Root, model: str) -> Path:
    return Path(r) / "emotion_vectors" / f"{model}_vectors.pkl"


def subspaces(r: Root, model: str) -> Path:
    return Path(r) / "emotion_subspaces" / f"{model}_subspaces.pkl"


def residual_chunks(r: Root, model: str) -> Path:
    """The directory of a model's residual chunk files (``layers_<a>-<b>.pkl``, :mod:`emolens.engine.chunks`)."""
    return Path(r) / "patching" / "residual" / "chunks" / model


def residual_sweep(r: Root, model: str) -> Path:
    return Path(r) / "patching" / "residual" / f"{model}_residual_sweep.pkl"


def sublayers(r: Root, model: str) -> Path:
    """A model's attention-vs-MLP patching file (:mod:`emolens.phases.sublayers`)."""
    return Path(r) / "sublayers" / f"{model}.pkl"


def head_scores(r: Root, model: str) -> Path:
    return Path(r) / "screening" / f"head_scores_{model}.json"


def head_patching(r: Root, model: str) -> Path:
    return Path(r) / "patching" / "head" / f"{model}_head_patching.pkl"


def alignment_pair(r: Root, pair: str) -> Path:
    """A model pair's alignment pickle; ``pair`` is ``<a>__<b>``."""
    return Path(r) / "alignment" / f"{pair}.pkl"


def alignment_summary(r: Root) -> Path:
    return Path(r) / "alignment" / "summary.json"


def statistics(r: Root, mode: str) -> Path:
    """``effect``, ``power`` or ``k``."""
    return Path(r) / "statistics" / f"{mode}.json"


def steering(r: Root, model: str) -> Path:
    return Path(r) / "steering" / f"{model}.json"


def steering_transfer(r: Root, model: str) -> Path:
    """Steering of ``model`` with every other model's vectors carried through a map."""
    return Path(r) / "steering" / "transfer" / f"into_{model}.json"


def steering_transfer_summary(r: Root) -> Path:
    return Path(r) / "steering" / "transfer" / "summary.json"


def verification(r: Root) -> Path:
    return Path(r) / "verification.json"


def findings(r: Root) -> Path:
    return Path(r) / "findings.md"


def timing(r: Root) -> Path:
    return Path(r) / "timing" / "phase_timings.jsonl"


def figure(r: Root, name: str) -> Path:
    return Path(r) / "figures" / f"{name}.png"


def log(r: Root, rule: str, name: str | None = None) -> Path:
    """A job's log: ``logs/<rule>.log``, or ``logs/<rule>/<name>.log`` for a job per model, pair or chunk."""
    return Path(r) / "logs" / (f"{rule}.log" if name is None else f"{rule}/{name}.log")


def benchmark(r: Root, rule: str, name: str) -> Path:
    """A job's Snakemake benchmark file, ``benchmarks/<rule>/<name>.tsv`` (name ``all`` for a job over models)."""
    return Path(r) / "benchmarks" / rule / f"{name}.tsv"


def each(kind: Callable[[Root, str], Path], r: Root) -> dict[str, Path]:
    """Every existing file of one kind under ``r`` by its model (or pair, or mode) name, e.g. ``each(vectors, r)``."""
    template = kind(r, "\0")
    prefix, suffix = template.name.split("\0")
    return {p.name[len(prefix):len(p.name) - len(suffix)]: p
            for p in sorted(template.parent.glob(f"{prefix}*{suffix}"))}
