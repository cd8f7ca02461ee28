"""Figures for the Snakemake report: one PNG per question, every model in one picture.

Probe accuracy by relative depth (where is the emotion linearly readable?), residual-patching
heatmaps (where is it carried?), head-score heatmaps (which heads move it?), cross-model alignment by
depth between its floor and ceiling (is it the same across models?) and the last-position residual effect with its
confidence intervals (how sure are we?). Depth is relative (index / L) so models of different
depths share an axis.

Conventions: every title names the profile; a demo organism is labelled as one, with its width and
depth, never as the real model whose name it borrows; panels that are compared share one labelled
colour scale; a statistic is drawn beside its null or reference (chance, the lexical baseline, the
permutation null, 0 = no effect); lines that may overlap differ in marker and line style too.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from emolens import layout  # noqa: E402
from emolens.io import atomic_path, load_pickle  # noqa: E402
from emolens.report.results import floats  # noqa: E402


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


def model_labels(models: Sequence[str], organisms: dict[str, dict] | None = None) -> dict[str, str]:
    """Display name per model: a demo organism says so, with its width and depth (it borrows a real model's name)."""
    organisms = organisms or {}
    return {m: f"{m}: demo organism (d_model {organisms[m]['d_model']}, {organisms[m]['n_layers']} layers)"
            if m in organisms else m for m in models}


def _label(labels: dict[str, str] | None, name: str, wrap: bool = False) -> str:
    label = (labels or {}).get(name, name)
    return label.replace(": ", "\n", 1) if wrap else label


def _tick(labels: dict[str, str] | None, name: str) -> str:
    """A short label for matrix ticks: 'gpt2_small' or 'gpt2_small\n(organism, d 64, 4 layers)'."""
    label = (labels or {}).get(name, name)
    if ": demo organism (d_model " not in label:
        return label
    width, depth = label.split(": demo organism (d_model ", 1)[1].rstrip(")").split(", ")
    return f"{name}\n(organism, d {width}, {depth})"


def _in_profile(title: str, profile: str | None) -> str:
    return f"{title} - profile {profile}" if profile else title


def _suptitle(fig: plt.Figure, title: str, profile: str | None, note: str = "", size: float = 9) -> None:
    """The figure's title, naming the profile, with an explanatory note; both wrapped to the figure's width."""
    chars = int(fig.get_figwidth() * 72 / (0.58 * size))
    lines = textwrap.wrap(_in_profile(title, profile), chars) + textwrap.wrap(note, chars)
    fig.suptitle("\n".join(lines), fontsize=size)


# Styles that stay apart when lines overlap: colour, marker and line style all differ.
STYLES = [dict(color=f"C{i}", marker=m, ls=ls) for i, (m, ls) in
          enumerate(zip("osD^vP*X", ["-", "--", "-.", ":", "-", "--", "-.", ":"], strict=True))]


def probe_accuracy(vector_files: dict[str, Path], out: str | Path, labels: dict[str, str] | None = None,
                   profile: str | None = None) -> None:
    """Frame-held-out probe accuracy per layer at relative depth, one panel per model, beside its lexical
    baseline (dashed; implicit register dotted), the implicit-register probe and explicit->implicit transfer."""
    fig, axes = _grid(len(vector_files), width=3.6 if len(vector_files) > 1 else 6.0,
                      height=3.0 if len(vector_files) > 1 else 3.8)
    for ax, (name, path) in zip(axes, vector_files.items(), strict=False):
        vec = load_pickle(path, schema="emolens.vectors/1")
        acc = np.asarray(vec["probe_accuracy"], float)
        depth = np.linspace(0, 1, len(acc))
        by_register = vec.get("probe_accuracy_by_register") or {}
        lexical_by_register = vec.get("lexical_accuracy_by_register") or {}
        transfer = vec.get("transfer_explicit_to_implicit")
        ax.plot(depth, acc, color="C0", marker="o", ms=4, lw=1.6, label="probe, all prompts (frames held out)")
        if "implicit" in by_register:
            ax.plot(depth, by_register["implicit"], color="C1", marker="s", ms=4, ls="--", lw=1.4,
                    mfc="none", label="probe, implicit prompts")
        if transfer is not None:
            ax.plot(depth, transfer, color="C2", marker="^", ms=4, ls="-.", lw=1.4,
                    label="probe fit on explicit, tested on implicit")
        if vec.get("lexical_accuracy") is not None:
            ax.axhline(vec["lexical_accuracy"], color="C3", ls="--", lw=1.2, label="lexical baseline (words alone)")
        if "implicit" in lexical_by_register:
            ax.axhline(lexical_by_register["implicit"], color="C3", ls=":", lw=1.2, label="lexical, implicit prompts")
        n = len(vec["emotions"])
        ax.axhline(1 / n, color="grey", lw=1, label=f"chance ({1 / n:.2f})")
        ax.set(xlabel="relative depth (residual index / L)", ylabel=f"{n}-way accuracy", ylim=(0, 1.05))
        ax.set_title(_label(labels, name, wrap=True), fontsize=8)
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=3 if len(axes) > 1 else 2,
               fontsize=7)
    _suptitle(fig, "Emotion probes beside the words alone", profile,
              "Linear probe accuracy per residual index, cross-validated with whole frames held out; the lexical "
              "baseline is a bag-of-words classifier on the same folds (read the probe against it, not only chance).")
    _save(fig, out)


def residual_patching(sweep_files: dict[str, Path], out: str | Path, labels: dict[str, str] | None = None,
                      profile: str | None = None) -> None:
    """Ratio-of-sums effect per residual index x position from the end, one panel per model, one colour scale."""
    fig, axes = _grid(len(sweep_files), width=4.0 if len(sweep_files) > 1 else 5.5, height=3.3)
    for ax, (name, path) in zip(axes, sweep_files.items(), strict=False):
        sweep = load_pickle(path, schema="emolens.residual_sweep/1")
        im = ax.imshow(np.asarray(sweep["summary"], float).T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                       origin="lower")
        ax.set(xlabel="residual index", ylabel="position (role, from the end)")
        ax.set_title(f"{_label(labels, name, wrap=True)}\n{sweep['n_pairs_included']}/{len(sweep['pairs'])} pairs "
                     f"kept (clean separation >= {sweep.get('min_separation', 1.0):g})", fontsize=8)
        ax.set_yticks(range(len(sweep["positions"])), sweep["position_roles"], fontsize=6)
        ax.set_xticks(list(range(len(sweep["layers"]))), [str(x) for x in sweep["layers"]], fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.9, label="effect (ratio of sums)\n0 = target, 1 = source")
    _suptitle(fig, "Residual-stream patching, source into target (denoising)", profile,
              "One cell per residual index (0 = the embeddings, L = the last block's output) and position counted "
              "from the end (the readout suffix, then the message); colour: the ratio-of-sums effect over the pairs "
              "the clean model separates.")
    _save(fig, out)


def head_scores(score_files: dict[str, Path], out: str | Path, labels: dict[str, str] | None = None,
                profile: str | None = None) -> None:
    """Exact last-position effect of every head, one panel per model, one symmetric colour scale for all."""
    found = {name: json.loads(Path(path).read_text()) for name, path in score_files.items()}
    exact = {name: np.asarray(s["exact_last_position"], float) for name, s in found.items()}  # [L, H]
    lim = max([float(np.nanmax(np.abs(e))) for e in exact.values() if e.size] + [1e-6])
    fig, axes = _grid(len(found), width=3.4 if len(found) > 1 else 5.5, height=3.0)
    for ax, (name, scores) in zip(axes, found.items(), strict=False):
        im = ax.imshow(exact[name].T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        rho = scores.get("spearman")
        ax.set_title(f"{_label(labels, name, wrap=True)}\nAtP vs exact: Spearman rho = "
                     f"{'n/a' if rho is None else f'{rho:.2f}'}", fontsize=8)
        ax.set(xlabel="layer", ylabel="head")
        n_layers, n_heads = exact[name].shape
        ax.set_xticks(range(n_layers))
        ax.set_yticks(range(n_heads))
        for layer, head in scores.get("top_heads", []):
            ax.add_patch(plt.Rectangle((layer - 0.5, head - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
    fig.colorbar(im, ax=axes, shrink=0.95, label="exact last-position effect\n0 = none, 1 = as source")
    _suptitle(fig, "Patching each attention head at the last position", profile,
              "Boxed: the top heads, confirmed on the other half of the frames. AtP = attribution patching, a "
              "gradient estimate of each head's effect; rho = its Spearman rank agreement with the exact effects.")
    _save(fig, out)


ALIGNMENT_PANELS = {"linear_cka": "linear CKA (texts alike)",
                    "linear_cka_item_centred": "CKA, item-centred (emotion alike)",
                    "transfer_cosine_mean": "vector transfer cosine", "rsa": "RSA of emotion means",
                    "rdm_rho": "RDM rho over emotion x frame cells"}


def _relative_depths(pair: dict) -> np.ndarray:
    return np.array([la for la, _ in pair["matched_layers"]], float) / max(pair["n_layers"][0], 1)


def alignment_depths(summary: Path, out: str | Path, labels: dict[str, str] | None = None,
                     profile: str | None = None) -> None:
    """Each cross-model measure by matched depth: every model pair's line over its frame-permuted null's band (mean
    to 95th percentile: the floor), each model against the words reference (dotted) and, where a model has a twin,
    the model against its twin (dashed black: the ceiling)."""
    data = json.loads(Path(summary).read_text())
    by_kind: dict[str, list[dict]] = {}
    for pair in data["pairs"]:
        by_kind.setdefault(pair.get("kind", "models"), []).append(pair)
    fig, axes = _grid(len(ALIGNMENT_PANELS), width=3.6, height=2.8)
    colours = plt.get_cmap("tab10")
    for ax, (measure, title) in zip(axes, ALIGNMENT_PANELS.items(), strict=False):
        for i, pair in enumerate(by_kind.get("models", [])):
            cell, x = pair["measures"].get(measure), _relative_depths(pair)
            if cell is None:
                continue
            ax.fill_between(x, floats(cell["null_mean"]), floats(cell.get("null_q95", cell["null_mean"])),
                            color=colours(i % 10), alpha=0.12, lw=0)
            ax.plot(x, floats(cell["value"]), color=colours(i % 10), marker="o", ms=2.5, lw=1.2,
                    label=" / ".join(pair["models"]))
        for j, pair in enumerate(by_kind.get("words", [])):
            cell = pair["measures"].get(measure)
            if cell is not None:
                ax.plot(_relative_depths(pair), floats(cell["value"]), color="0.45", ls=":", marker="x", ms=2.5, lw=1,
                        label="a model / the words" if j == 0 else None)
        for j, pair in enumerate(by_kind.get("ceiling", [])):
            cell = pair["measures"].get(measure)
            if cell is not None:
                ax.plot(_relative_depths(pair), floats(cell["value"]), color="black", ls="--", lw=1.4,
                        label="ceiling: a model / its twin" if j == 0 else None)
        ax.axhline(0, color="0.8", lw=0.6), ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=8), ax.set_xlabel("relative depth (of the first model)", fontsize=7)
    axes[-1].legend(*axes[0].get_legend_handles_labels(), fontsize=5, loc="center", frameon=False,
                    ncols=2 if len(by_kind.get("models", [])) > 8 else 1)  # five panels on six axes
    _suptitle(fig, "Cross-model alignment by depth: floor, pairs, words, ceiling", profile,
              "Shaded: each pair's permutation null, mean to 95th percentile (the floor). Dotted: each model against "
              "the words reference. Dashed black: a model against its twin (another numeric build or organism seed), "
              "the ceiling.")
    _save(fig, out)


def residual_effect_last_position(effect_json: Path, out: str | Path, labels: dict[str, str] | None = None,
                                  profile: str | None = None) -> None:
    """The ratio-of-sums patching effect at the last position per relative depth, with its frame-then-item
    bootstrap 95% CI as error bars; filled markers: significant after Benjamini-Hochberg (identity cells are
    checks, not tests)."""
    data = json.loads(Path(effect_json).read_text())
    n_models = len(data["models"])
    fig, ax = plt.subplots(figsize=(7.2, 4.4 + 0.2 * math.ceil(n_models / 2)), layout="constrained")
    ax.axhline(0, color="grey", lw=1, ls=":")
    ax.axhline(1, color="grey", lw=1, ls="--")
    for k, (name, tables) in enumerate(data["models"].items()):
        res = tables["residual"]
        col = list(res["positions"]).index(-1)

        def column(key: str, res: dict = res, col: int = col) -> np.ndarray:
            return np.array([np.nan if row[col] is None else row[col] for row in res[key]], float)

        mean, low, high = column("effect"), column("ci_low"), column("ci_high")
        significant = np.array([bool(row[col]) for row in res.get("significant", [[False] * (col + 1)] * len(mean))])
        depth = np.linspace(0, 1, len(mean)) + (k - (n_models - 1) / 2) * 0.008  # dodge overlapping bars
        style = STYLES[k % len(STYLES)]
        ax.errorbar(depth, mean, yerr=[mean - low, high - mean], color=style["color"], ls=style["ls"], lw=1.4,
                    elinewidth=1.2, capsize=3, marker=style["marker"], ms=6, mfc="white", label=_label(labels, name))
        ax.plot(depth[significant], mean[significant], ls="none", marker=style["marker"], ms=6, color=style["color"],
                zorder=4)
    ax.set(xlabel="relative depth of the patched residual index (index / L)",
           ylabel="patching effect at the last position\n(ratio of sums: 0 = target, 1 = source)")
    for y, text in ((0.0, "no effect "), (1.0, "as the source run ")):
        ax.text(1.0, y, text, ha="right", va="bottom", fontsize=7, color="grey", transform=ax.get_yaxis_transform())
    _suptitle(fig, "Residual patching at the last position, with frame-then-item bootstrap 95% CIs", profile,
              "Ratio of sums over the kept pairs of each residual index. Filled markers: significant after "
              "Benjamini-Hochberg (item sign-flip test); hollow: not significant, or an identity cell (index 0 and "
              "L, which are verification checks, not tests).")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncol=2 if n_models > 1 else 1)
    _save(fig, out)


def readout_baseline(readout_files: dict[str, Path], out: str | Path, labels: dict[str, str] | None = None,
                     profile: str | None = None) -> None:
    """The model's own n-way prediction (n emotions): raw and calibrated accuracy per model (and register), chance
    at 1 / n."""
    found = {name: json.loads(Path(path).read_text()) for name, path in readout_files.items()}
    registers = sorted({reg for rb in found.values() for reg in rb.get("by_register", {})})
    bars = [(group, kind) for group in ("all", *registers) for kind in ("accuracy", "accuracy_calibrated")]
    width, x = 0.8 / len(bars), np.arange(len(found))
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.3 * len(found) * len(bars))), 3.8), layout="constrained")
    for i, (group, kind) in enumerate(bars):
        cells = [rb if group == "all" else rb.get("by_register", {}).get(group, {}) for rb in found.values()]
        values = [np.nan if cell.get(kind) is None else cell[kind] for cell in cells]
        label = f"{group}, {'calibrated' if kind == 'accuracy_calibrated' else 'raw'}"
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label, color=plt.cm.tab20(i % 20))
    n = max(len(rb["emotions"]) for rb in found.values())  # every model reads the run's emotions
    ax.axhline(1 / n, color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(range(len(found)), [_tick(labels, m) for m in found], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel=f"{n}-way accuracy", ylim=(0, 1.3), yticks=np.linspace(0, 1, 6))  # the legend sits above the bars
    _suptitle(fig, "Does the model read the emotion? (label-logit argmax)", profile, size=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    _save(fig, out)


BANDS = (("early", 0.0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("late", 2 / 3, 1.01))


def steering(results: str | Path, models: Sequence[str], out_dir: str | Path, labels: dict[str, str] | None = None,
             profile: str | None = None) -> None:
    """Steering: dose-response of the on-target logit-difference shift per layer band (early/middle/late
    relative depth; shaded: random directions' mean to 95th percentile), the n x n specificity matrix at each
    model's best index, the ablation drop by depth, and (when there is one) the cross-model transfer matrix."""
    r, out_dir = Path(results), Path(out_dir)
    found = {m: json.loads(layout.steering(r, m).read_text()) for m in models if layout.steering(r, m).exists()}
    if not found:
        return
    fig, axes = _grid(len(found), width=3.4, height=2.8)
    for ax, (name, st) in zip(axes, found.items(), strict=False):
        shift, alphas = st["readout_shift"]["ld"], np.asarray(st["alphas"], float)
        depth = np.asarray(st["relative_depth"], float)
        on = np.asarray(shift["on_target"], float).mean(-1)  # [layer, alpha]: mean over emotions
        low, high = (np.asarray(shift[k], float).mean(-1) for k in ("random_mean", "random_q95"))
        for i, (band, lo, hi) in enumerate(BANDS):
            sel = (depth >= lo) & (depth < hi)
            if sel.any():
                ax.plot(alphas, on[sel].mean(0), marker="o", ms=3, color=f"C{i}", label=f"{band} ({sel.sum()})")
                ax.fill_between(alphas, low[sel].mean(0), high[sel].mean(0), color=f"C{i}", alpha=0.15, lw=0)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(title=_label(labels, name, wrap=True), xlabel="dose (sd along the vector)", ylabel="on-target LD shift")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6, title="band (indices)", title_fontsize=6)
    fig.suptitle(_in_profile("Steering dose-response", profile) + "\n(shaded: random directions, mean to 95th pct.)",
                 fontsize=8)
    _save(fig, out_dir / "steering_dose_response.png")

    fig, axes = _grid(len(found), width=3.0, height=2.8)
    lim = max([float(np.abs(np.asarray(st["best"]["specificity_ld"], float)).max()) for st in found.values()] + [1e-9])
    for ax, (name, st) in zip(axes, found.items(), strict=False):
        best = st["best"]
        spec = np.asarray(best["specificity_ld"], float)
        image = ax.imshow(spec, cmap="RdBu_r", vmin=-lim, vmax=lim)  # one scale for every panel
        for (i, j), v in np.ndenumerate(spec):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        emotion_ticks = [e[:4] for e in st["emotions"]]
        ax.set_xticks(range(len(emotion_ticks)), emotion_ticks, fontsize=7)
        ax.set_yticks(range(len(emotion_ticks)), emotion_ticks, fontsize=7)
        ax.set(title=f"{_label(labels, name, wrap=True)}\nindex {best['layer']}, {best['alpha']:g} sd",
               xlabel="readout", ylabel="vector")
        ax.title.set_fontsize(8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="LD shift (logits)")
    fig.suptitle(_in_profile("Specificity at the best index", profile)
                 + "\n(LD shift of each readout under each emotion's vector)", fontsize=8)
    _save(fig, out_dir / "steering_specificity.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    for i, (name, st) in enumerate(found.items()):
        ab = st["ablation"]
        depth = np.asarray(st["relative_depth"], float)
        style = STYLES[i % len(STYLES)]  # overlapping lines stay apart: marker and line style differ too
        ax.plot(depth, ab["readout_drop"], marker=style["marker"], ls=style["ls"], ms=4, color=style["color"],
                label=_label(labels, name))
        ax.plot(depth, ab["readout_drop_random_mean"], ls=":", lw=1, color=style["color"])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="relative depth of the ablated index", ylabel="calibrated readout accuracy drop",
           title=_in_profile("Ablating the emotion subspace (dotted: random subspaces)", profile))
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
    _save(fig, out_dir / "steering_ablation.png")

    summary = layout.steering_transfer_summary(r)
    if not summary.exists():  # one model: nothing to transfer
        return
    tr = json.loads(summary.read_text())
    frac = np.array([[np.nan if v is None else v for v in row] for row in tr["fraction_mean"]], float)
    fig, ax = plt.subplots(figsize=(max(4.8, 1.6 + 0.8 * len(frac)), max(3.6, 1.2 + 0.7 * len(frac))),
                           layout="constrained")
    image = ax.imshow(frac, cmap="viridis", vmin=min(0.0, np.nanmin(frac, initial=0.0)),
                      vmax=max(1.0, np.nanmax(frac, initial=1.0)))
    for (i, j), v in np.ndenumerate(frac):
        if np.isfinite(v):
            star = "*" if tr["beats_null"][i][j] else ""
            ax.text(j, i, f"{v:.2f}{star}", ha="center", va="center", fontsize=7, color="k" if v > 0.5 else "w")
    ax.set_xticks(range(len(frac)), [_tick(labels, m) for m in tr["models"]], rotation=30, ha="right", fontsize=6)
    ax.set_yticks(range(len(frac)), [_tick(labels, m) for m in tr["models"]], fontsize=6)
    ax.set(xlabel="steered model b", ylabel="vector from model a")
    _suptitle(fig, "Steering transfer", profile, "Fraction of b's own steering that a's mapped vector achieves "
              "(* above the random-direction null)", size=8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of b's own shift")
    _save(fig, out_dir / "steering_transfer.png")


# The figures of a profile: (file stem, what it shows). Cross-model ones only with two models or more.
FIGURES = {
    "probe_accuracy": "emotion probes by depth beside the lexical baseline",
    "residual_patching": "residual patching effect per residual index x position",
    "head_scores": "exact last-position head effects and AtP agreement",
    "residual_effect_last_position": "last-position residual patching effect with frame-then-item bootstrap CIs",
    "readout_baseline": "the model's own emotion readout, one label per emotion",
    "steering_dose_response": "steering dose-response per layer band",
    "steering_specificity": "steering specificity at the best index",
    "steering_ablation": "emotion-subspace ablation",
    "attention_vs_mlp": "attention vs MLP write per block at the last position (report.attention_mlp)",
}
CROSS_MODEL_FIGURES = {
    "alignment": "cross-model alignment by depth between its floor (null) and ceiling (twin), with the words reference",
    "steering_transfer": "cross-model steering transfer",
}


def run(results: str | Path, models: Sequence[str], out_dir: str | Path, organisms: dict[str, dict] | None = None,
        profile: str | None = None) -> None:
    """Draw every figure of a profile's results into ``out_dir`` (:data:`FIGURES`, and with two models or more
    :data:`CROSS_MODEL_FIGURES`). ``organisms``: {model: organism settings} of the demo organisms, for their
    labels; ``profile``: the name in every title (default: the results directory's name)."""
    r, out_dir = Path(results), Path(out_dir)
    kw = {"labels": model_labels(models, organisms), "profile": profile or r.name}
    probe_accuracy({m: layout.vectors(r, m) for m in models}, out_dir / "probe_accuracy.png", **kw)
    residual_patching({m: layout.residual_sweep(r, m) for m in models}, out_dir / "residual_patching.png", **kw)
    head_scores({m: layout.head_scores(r, m) for m in models}, out_dir / "head_scores.png", **kw)
    if len(models) > 1:  # one model: nothing to align
        alignment_depths(layout.alignment_summary(r), out_dir / "alignment.png", **kw)
    residual_effect_last_position(layout.statistics(r, "effect"), out_dir / "residual_effect_last_position.png",
                                  **kw)
    readout_baseline({m: layout.readout(r, m) for m in models}, out_dir / "readout_baseline.png", **kw)
    steering(r, models, out_dir, **kw)
