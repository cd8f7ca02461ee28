"""Attention vs MLP in the report: the figure, the findings section and the verification check of the sublayers phase.

Reads ``results/<p>/sublayers/<m>.pkl`` (:mod:`emolens.phases.sublayers`) through :mod:`emolens.layout`. The figure
(``attention_vs_mlp.png``) draws, per model, the attention and MLP effects at the last position by relative depth
with their CIs; the findings section says per model where each is largest and in which blocks one beats the other
after BH; the check asks for the shapes, finite CIs around the estimates and the identity (the last block's input
and both writes patched: effect 1).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens import layout
from emolens.io import load_pickle
from emolens.report.checks import IDENTITY_TOL
from emolens.report.figures import STYLES, _grid, _label, _save, _suptitle

SCHEMA = "emolens.sublayers/1"
KIND_NAMES = {"attn_out": "attention (mixer)", "mlp_out": "MLP"}


def attention_vs_mlp(files: dict[str, Path], out: str | Path, labels: dict[str, str] | None = None,
                     profile: str | None = None) -> None:
    """One panel per model: the attention and MLP write's patching effect at the last position by the relative depth
    of the block, with 95% frame-then-item bootstrap CIs; a star where attention and MLP differ after BH."""
    fig, axes = _grid(len(files), width=3.6, height=2.8)
    for ax, (m, path) in zip(axes, files.items(), strict=False):
        s = load_pickle(path, schema=SCHEMA)
        if not s.get("applicable", True):
            ax.text(0.5, 0.5, "\n".join(textwrap.wrap(f"not measured: {s['reason']}", 50)), ha="center",
                    va="center", fontsize=6, transform=ax.transAxes)
            ax.set(title=_label(labels, m, wrap=True), xticks=[], yticks=[])
            ax.title.set_fontsize(8)
            continue
        depth = np.asarray(s["relative_depth"], float)
        for k, kind in enumerate(s["kinds"]):
            mean, low, high = (np.asarray(s[key], float)[k] for key in ("summary", "ci_low", "ci_high"))
            style = STYLES[k]
            ax.errorbar(depth, mean, yerr=[mean - low, high - mean], color=style["color"], ls=style["ls"],
                        marker=style["marker"], ms=4, lw=1.2, capsize=2, label=KIND_NAMES.get(kind, kind))
        stars = np.asarray(s["attention_minus_mlp_significant"], bool)
        top = np.nanmax(np.asarray(s["ci_high"], float), axis=0)
        ax.plot(depth[stars], top[stars] + 0.05, ls="none", marker="*", color="k", ms=6)
        ax.axhline(0, color="grey", lw=1, ls=":")
        ax.set(title=_label(labels, m, wrap=True), xlabel="relative depth of the block", xlim=(0, 1),
               ylabel="effect at the last position")
        ax.title.set_fontsize(8)
    _suptitle(fig, "Attention vs MLP: each block's two writes into the residual stream patched at the last position",
              profile, "Ratio of sums over the kept pairs (0 = target, 1 = source), 95% frame-then-item bootstrap CIs. "
              "*: attention and MLP differ (frame sign flips, BH over the blocks).")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncol=2)
    _save(fig, out)


def _cell(s: dict[str, Any], k: int, b: int) -> str:
    summary, low, high = (np.asarray(s[key], float)[k, b] for key in ("summary", "ci_low", "ci_high"))
    return f"{summary:.2f} [{low:.2f}, {high:.2f}]" if np.isfinite(summary) else "n/a"


def verdict(s: dict[str, Any]) -> str:
    """Attention or MLP, in words: which write carries more of the effect summed over the blocks, and the blocks
    where one beats the other after BH."""
    summary = np.nan_to_num(np.asarray(s["summary"], float))
    diff, sig = np.asarray(s["attention_minus_mlp_difference"], float), np.asarray(s["attention_minus_mlp_significant"])
    attn = [b for b in range(len(diff)) if sig[b] and diff[b] > 0]
    mlp = [b for b in range(len(diff)) if sig[b] and diff[b] < 0]
    total_a, total_m = summary[0].sum(), summary[1].sum()
    lead = "attention moves more of it in" if total_a > total_m else "MLPs compute more of it at the last token"
    return (f"{lead} (summed effects {total_a:.2f} vs {total_m:.2f}); attention > MLP in blocks {attn or 'none'}, "
            f"MLP > attention in blocks {mlp or 'none'}")


def section(results: str | Path, models: Sequence[str], table: Callable[[list[str], list[list[Any]]], list[str]]
            ) -> list[str]:
    """The findings section: per model, the largest attention and MLP effect (block, depth, CI), then the blocks
    (``table``: the findings page's markdown table)."""
    files = {m: layout.sublayers(results, m) for m in models if layout.sublayers(results, m).exists()}
    if not files:
        return []
    lines = ["## Attention or MLP? (each block's two writes patched at the last position)", "",
             "Is the emotion moved into the last position by attention (which reads the message) or computed there "
             "by MLPs (which read the last position only), and where? Effect as in residual patching; attention - "
             "MLP tested by frame sign flips, BH over the blocks.", ""]
    rows, blocks = [], []
    for m, path in files.items():
        s = load_pickle(path, schema=SCHEMA)
        if not s.get("applicable", True):
            rows.append([m, "n/a", "n/a", f"not measured: {s['reason']}"])
            continue
        summary = np.asarray(s["summary"], float)
        best = [int(np.nanargmax(np.where(np.isfinite(row), row, -np.inf))) for row in summary]
        rows.append([m, *(f"block {b} (depth {s['relative_depth'][b]:.2f}): {_cell(s, k, b)}"
                          for k, b in enumerate(best)), verdict(s)])
        blocks += [[m, b, _cell(s, 0, b), _cell(s, 1, b), f"{s['attention_minus_mlp_p_bh'][b]:.3f}"]
                   for b in s["blocks"]]
    return (lines + table(["model", "largest attention effect", "largest MLP effect", "in words"], rows) + [""]
            + table(["model", "block", "attention [95% CI]", "MLP [95% CI]", "p (BH), attention - MLP"], blocks)
            + [""])


def check(path: Path, n_layers: int) -> tuple[bool, str]:
    """Both writes of every block summarised (finite, inside their CIs) and the identity: the last block's input and
    both writes patched give the donor's output (effect 1 on every kept pair); the writes add up to the blocks."""
    s = load_pickle(path, schema=SCHEMA)
    if not s.get("applicable", True):  # a model whose blocks do not add up: the file must say so, and be right
        return s["sublayer_sum"] is None or not s["sublayer_sum"] < 1e-4, f"not measured: {s['reason']}"
    summary, low, high = (np.asarray(s[k], float) for k in ("summary", "ci_low", "ci_high"))
    ok_shape = summary.shape == (2, n_layers) and np.asarray(s["effect"]).shape == (len(s["pairs"]), 2, n_layers)
    inside = np.isfinite(summary).any() and bool(np.all((low <= summary + 1e-9) & (summary <= high + 1e-9)
                                                       | ~np.isfinite(summary)))
    identity = s["block_identity"] is not None and s["block_identity"] < IDENTITY_TOL
    return ok_shape and inside and identity, (f"{s['n_pairs_included']} kept pairs; max |effect(last block's input + "
                                              f"writes) - 1| = {s['block_identity']}; writes add up to "
                                              f"{s['sublayer_sum']:.1e}; {verdict(s)}")
