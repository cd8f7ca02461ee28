"""A steered readout, measured: one half's prompts run clean, then with dose steps added at a residual index.

What steering and its transfer share: the clean run and calibration of the measured prompts, the dose unit along a
direction (:func:`dose_steps`) and the item-mean shifts and KL costs of a steered run (:func:`shifts_at`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolens.data.readout import Readout
from emolens.engine.edits import Edited, Prompts, clean_run, prepare_prompts, run_edits
from emolens.model.adapter import ModelAdapter
from emolens.stats.steering_stats import item_matrix, projection_sd, readout_measures, unit

VANISH = 1e-6  # a vector shorter than this times the typical norm is no direction (index 0 of rotary models)


def typical_norms(x: np.ndarray) -> np.ndarray:
    """[N, S, d] fit-half last-token activations -> [S] median residual norm per index."""
    return np.median(np.linalg.norm(x, axis=-1), axis=0)


def steer_index(adapter: ModelAdapter, prompts: Prompts, clean: Edited, layer: int, steps: np.ndarray,
                alphas: Sequence[float], batch_size: int = 32) -> Edited:
    """Add alpha * step for each step [D, d] (one dose unit along a direction) at every alpha (rows alpha-major);
    alpha 0 copies ``clean``. Returns the run with C = len(alphas) * D conditions."""
    alphas = np.asarray(alphas, dtype=np.float64)
    moving = alphas != 0
    adds = (alphas[moving, None, None] * steps[None]).reshape(-1, steps.shape[-1])
    n_dir = len(steps)
    labels = np.repeat(clean.labels, len(alphas) * n_dir, axis=0)
    zeros = np.where(prompts.kl_row >= 0, 0.0, np.nan)[None]  # [1, P]: the clean run's KL from itself
    kl, kl_nl = (np.repeat(zeros, len(alphas) * n_dir, axis=0) for _ in range(2))
    if len(adds):
        run = run_edits(adapter, prompts, layer, add=adds, clean=clean, batch_size=batch_size)
        rows = (np.flatnonzero(moving)[:, None] * n_dir + np.arange(n_dir)).ravel()
        labels[rows], kl[rows], kl_nl[rows] = run.labels, run.kl, run.kl_nonlabel
    return Edited(labels, kl, kl_nl, {})


def steering_shifts(edited: Edited, clean: Edited, prompts: Prompts, offsets: np.ndarray, averaging: np.ndarray,
                    n_alphas: int) -> dict[str, np.ndarray]:
    """Item-mean shifts {"ld", "prob"} [A, D, I, n_emotions] and mean KLs over the KL prompts {"kl", "kl_nonlabel"}
    [A, D]."""
    prob0, ld0 = readout_measures(clean.labels[0], offsets)
    prob, ld = readout_measures(edited.labels, offsets)  # [C, P, n_emotions]
    out = {}
    for name, value, ref in (("ld", ld, ld0), ("prob", prob, prob0)):
        items = np.einsum("ip,cpe->cie", averaging, value - ref)  # [C, I, n_emotions]
        out[name] = items.reshape(n_alphas, -1, *items.shape[1:])
    kl_mask = prompts.kl_row >= 0
    for name, value in (("kl", edited.kl), ("kl_nonlabel", edited.kl_nonlabel)):
        mean = value[:, kl_mask].mean(1) if kl_mask.any() else np.full(len(value), np.nan)
        out[name] = mean.reshape(n_alphas, -1)
    return out


def dose_steps(x: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """[D, d] one dose unit along each direction: its unit vector times the projection sd of x [N, d] on it."""
    return unit(directions) * projection_sd(x, directions)[:, None]


@dataclass
class Measured:
    """One half's readout prompts, their clean run and calibration, and the item averaging of its shifts."""

    prompts: Prompts
    clean: Edited
    offsets: np.ndarray  # [n_emotions] each label's mean clean logit: the calibration
    averaging: np.ndarray  # [I, P]
    items: list[str]


def measure(adapter: ModelAdapter, records: Sequence[dict[str, Any]], readout: Readout, kl_prompts: int,
            capture: Sequence[int] = (), batch_size: int = 32) -> Measured:
    """Tokenise and run one half's readout prompts clean (capturing ``capture`` indices)."""
    prompts = prepare_prompts(adapter, records, readout, kl_prompts)
    clean = clean_run(adapter, prompts, capture=capture, batch_size=batch_size)
    averaging, items = item_matrix(prompts.items)
    return Measured(prompts, clean, clean.labels[0].mean(0), averaging, items)


def shifts_at(adapter: ModelAdapter, half: Measured, layer: int, steps: np.ndarray, alphas: Sequence[float],
              batch_size: int) -> dict[str, np.ndarray]:
    """Item-mean shifts and KLs (:func:`steering_shifts`) of one half steered along ``steps`` at ``layer``."""
    run = steer_index(adapter, half.prompts, half.clean, layer, steps, alphas, batch_size)
    return steering_shifts(run, half.clean, half.prompts, half.offsets, half.averaging, len(alphas))
