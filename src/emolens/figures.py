"""Figures for the Snakemake report: one PNG per question, every model in one picture.

Probe accuracy by relative depth (where is the emotion linearly readable?), residual-patching
heatmaps (where is it carried?), head-score heatmaps (which heads move it?), the cross-model
alignment matrix (is it the same across models?) and the effect sizes with their confidence
intervals (how sure are we?). Depth is relative (index / L) so models of different depths share
an axis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emolens.io import atomic_path, load_pickle  # noqa: E402


def _grid(n: int, width: float = 3.2, height: float = 2.6) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _save(fig: plt.Figure, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def probe_accuracy(vector_files: dict[str, Path], out: str | Path) -> None:
    """Cross-validated probe accuracy per layer, at relative depth, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    for name, path in vector_files.items():
        acc = load_pickle(path, schema="emolens.vectors/1")["probe_accuracy"]
        ax.plot(np.linspace(0, 1, len(acc)), acc, marker="o", ms=3, label=name)
    ax.axhline(0.25, color="grey", ls=":", lw=1, label="chance")
    ax.set(xlabel="relative depth (residual index / L)", ylabel="probe accuracy", ylim=(0, 1.02),
           title="Linear decodability of the emotion")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out)


def residual_patching(sweep_files: dict[str, Path], out: str | Path) -> None:
    """Mean normalised effect per residual index x position from the end, one panel per model."""
    fig, axes = _grid(len(sweep_files))
    for ax, (name, path) in zip(axes, sweep_files.items(), strict=False):
        sweep = load_pickle(path, schema="emolens.residual_sweep/1")
        im = ax.imshow(np.asarray(sweep["mean"], float).T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                       origin="lower")
        ax.set(title=name, xlabel="residual index", ylabel="position from end",
               yticks=range(len(sweep["positions"])), yticklabels=sweep["positions"])
    fig.colorbar(im, ax=axes, shrink=0.8, label="normalised effect (1 = source)")
    fig.suptitle("Residual-stream patching (denoising: source into target)")
    _save(fig, out)


def head_scores(score_files: dict[str, Path], out: str | Path) -> None:
    """Exact last-position effect of every head, one panel per model."""
    fig, axes = _grid(len(score_files))
    for ax, (name, path) in zip(axes, score_files.items(), strict=False):
        scores = json.loads(Path(path).read_text())
        exact = np.asarray(scores["exact_last_position"], float)  # [L, H]
        lim = max(np.abs(exact).max(), 1e-6)
        im = ax.imshow(exact.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        ax.set(title=f"{name} (AtP rho={scores['spearman']:.2f})", xlabel="layer", ylabel="head")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Head patching at the last position (exact)")
    _save(fig, out)


def alignment_matrix(summary: Path, models: Sequence[str], out: str | Path) -> None:
    """Mean linear CKA at matched depths for every model pair (diagonal = 1 by definition); int8 models marked."""
    pairs = json.loads(Path(summary).read_text())["pairs"]
    index = {m: i for i, m in enumerate(models)}
    matrix = np.eye(len(models))
    int8 = set()
    for pair in pairs:
        a, b = pair["models"]
        matrix[index[a], index[b]] = matrix[index[b], index[a]] = pair["measures"]["linear_cka"]["mean"]
        int8 |= {m for m, q in zip(pair["models"], pair.get("quantization", [None, None]), strict=True) if q == "int8"}
    labels = [f"{m} (int8)" if m in int8 else m for m in models]
    fig, ax = plt.subplots(figsize=(6.4, 5.0), layout="constrained")
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    for i in range(len(models)):
        for j in range(len(models)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(models)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), labels, fontsize=8)
    ax.set_title("Cross-model alignment (linear CKA, matched depths)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    _save(fig, out)


def effect_sizes(effect_json: Path, out: str | Path) -> None:
    """Mean last-position residual effect per relative depth, with its bootstrap 95% CI."""
    models = json.loads(Path(effect_json).read_text())["models"]
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    for name, tables in models.items():
        res = tables["residual"]
        col = list(res["positions"]).index(-1)
        mean = np.array([row[col] for row in res["mean"]], float)
        low = np.array([np.nan if row[col] is None else row[col] for row in res["ci_low"]], float)
        high = np.array([np.nan if row[col] is None else row[col] for row in res["ci_high"]], float)
        depth = np.linspace(0, 1, len(mean))
        ax.plot(depth, mean, marker="o", ms=3, label=name)
        ax.fill_between(depth, low, high, alpha=0.2)
    ax.set(xlabel="relative depth (residual index / L)", ylabel="normalised effect, last position",
           title="Residual patching effect with bootstrap 95% CI")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out)


def run(results: str | Path, models: Sequence[str], out_dir: str | Path) -> None:
    """Draw every figure of a profile's results into ``out_dir``."""
    r, out_dir = Path(results), Path(out_dir)
    probe_accuracy({m: r / "emotion_vectors" / f"{m}_vectors.pkl" for m in models}, out_dir / "probe_accuracy.png")
    residual_patching({m: r / "patching" / "residual" / f"{m}_residual_sweep.pkl" for m in models},
                      out_dir / "residual_patching.png")
    head_scores({m: r / "screening" / f"head_scores_{m}.json" for m in models}, out_dir / "head_scores.png")
    alignment_matrix(r / "alignment" / "summary.json", models, out_dir / "alignment.png")
    effect_sizes(r / "statistics" / "effect.json", out_dir / "effect_sizes.png")
