"""The words reference (phase 4): the prompts' words as a model with one layer, to align every model against.

Methods. Each prompt's TF-IDF word 1-2-grams (:func:`emolens.stats.words.word_features`), vocabulary and
weights learned on the fit half's frames only (the same seeded halves as phase 4), stored as an activations
file whose one residual index holds them. Aligned with a model like any other model, it says how much of
that model's structure the words alone carry; its features are also what phase 4's words-controlled sections
partial out of each model's activations. Inputs: the dataset. Outputs: ``activations/words.pkl``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emolens.data.dataset import load_dataset
from emolens.data.readout import DEFAULT, Readout
from emolens.io import load_pickle, provenance, save_pickle
from emolens.stats.resampling import frame_groups, frame_halves
from emolens.stats.words import word_features


def run(dataset: str | Path, out: str | Path, seed: int = 0, readout: Readout = DEFAULT) -> None:
    """Read the dataset, learn the words on the fit half, save every prompt's word features as activations."""
    from emolens.phases.activations import SCHEMA  # torch's import only where the file is written

    started = time.time()
    records = load_dataset(dataset, readout.labels)
    frames = frame_groups(records)
    registers = [r.get("register") for r in records] if all(r.get("register") for r in records) else None
    fit, _ = frame_halves(frames, registers, seed)
    features = word_features([r["text"] for r in records], fit).astype(np.float32)  # [n, v]
    both = {"last": features[:, None, :], "mean": features[:, None, :]}  # [n, 1, v]: one "layer", both readouts
    save_pickle({
        "schema": SCHEMA, "resid": both, "ids": [r["id"] for r in records],
        "emotions": [r["emotion"] for r in records], "item_ids": [r["item_id"] for r in records],
        "frames": frames, "registers": registers, "n_layers": 0, "d_model": features.shape[1],
        "learned_positions": False, "readout": readout.as_dict(), "quantization": None,
        "provenance": provenance({"seed": seed}, started, model="words"),
    }, out)


def words_of(words: str | Path | None, ids: Sequence[str]) -> np.ndarray | None:
    """The words reference's features [n, v] for these prompts (its file must hold the same prompts in order)."""
    if words is None:
        return None
    record = load_pickle(words, "emolens.activations/2")
    if list(record["ids"]) != list(ids):
        raise ValueError(f"{words} holds other prompts or another order than the activations; rebuild it")
    return record["resid"]["last"][:, 0].astype(np.float64)
