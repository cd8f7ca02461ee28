"""The ``emolens`` command: one subcommand per phase, so every step can be run by hand.

Snakemake rules call these subcommands and pass only a model's own settings (as JSON), so a job
reruns exactly when its inputs or settings change. Known bad input ends in one line naming the
file, line or setting, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from emolens.config import ConfigError, ModelLoadError
from emolens.dataset import DatasetError
from emolens.io import ResultFileError
from emolens.oom import BatchOutOfMemoryError

USER_ERRORS = (ConfigError, ValueError, DatasetError, ModelLoadError, ResultFileError, BatchOutOfMemoryError,
               FileNotFoundError, IndexError)


def _settings(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--settings is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


def _jobs(text: str) -> list[dict[str, Any]]:
    value = json.loads(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("--jobs must be a JSON list")
    return value


def _cmd_dataset(a: argparse.Namespace) -> None:
    from emolens import dataset

    if a.check:
        records = dataset.load_dataset(a.check)
        print(f"{a.check}: {len(records)} prompts, balanced, no duplicates")
    else:
        dataset.run(a.out)


def _cmd_organism(a: argparse.Namespace) -> None:
    from emolens import organisms

    organisms.run(a.dataset, a.name, a.settings["organism"], a.out)


def _cmd_activations(a: argparse.Namespace) -> None:
    from emolens import activations

    activations.run(a.settings, a.dataset, a.out, name=a.name, device=a.device)


def _cmd_vectors(a: argparse.Namespace) -> None:
    from emolens import vectors

    vectors.run(a.activations, a.vectors_out, a.subspaces_out, k_max=a.k_max, folds=a.folds, seed=a.seed)


def _model_and_records(a: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    """The model adapter and dataset records a model job works on."""
    from emolens.dataset import load_dataset
    from emolens.models import load_model

    records = load_dataset(a.dataset)
    return load_model(a.settings, name=a.name, device=a.device), records


def _patching_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {"max_pairs": a.max_pairs, "seed": a.seed, "direction": a.direction,
            "settings": {**a.settings, "max_pairs": a.max_pairs, "direction": a.direction, "seed": a.seed}}


def _with_backoff(a: argparse.Namespace, job: Callable[..., Any]) -> None:
    """Run a model job at the configured batch size, halving it on CUDA out-of-memory."""
    from emolens.oom import run_with_backoff

    run_with_backoff(lambda bs: job(batch_size=bs), a.settings.get("batch_size", 16), what=f"{a.command} {a.name}")


def _layer_range(text: str) -> range:
    """``a-b`` (or ``a``) -> range(a, b + 1)."""
    first, _, last = text.partition("-")
    if not (first.isdigit() and (last or first).isdigit()) or int(first) > int(last or first):
        raise ValueError(f"--layers: expected residual indices a-b with a <= b, got {text!r}")
    return range(int(first), int(last or first) + 1)


def _cmd_residual_chunk(a: argparse.Namespace) -> None:
    from emolens import residual

    layers = _layer_range(a.layers)
    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: residual.run_chunk(
        adapter, records, layers, a.out, n_positions=a.n_positions, batch_size=batch_size, **_patching_kwargs(a)))


def _cmd_residual_merge(a: argparse.Namespace) -> None:
    from emolens import residual

    residual.merge(a.chunks, a.out, a.n_layers, seed=a.seed, n_resamples=a.n_boot)


def _cmd_screen_heads(a: argparse.Namespace) -> None:
    from emolens import heads

    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: heads.run_screening(
        adapter, records, a.out, top_k=a.top_k, batch_size=batch_size, **_patching_kwargs(a)))


def _cmd_patch_heads(a: argparse.Namespace) -> None:
    from emolens import heads

    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: heads.run_head_patching(
        adapter, records, a.screening, a.out, n_resamples=a.n_boot, batch_size=batch_size, **_patching_kwargs(a)))


def _cmd_align(a: argparse.Namespace) -> None:
    from emolens import alignment

    alignment.run_pair(*a.activations, *a.vectors, *a.subspaces, a.out, seed=a.seed, n_perm=a.n_perm,
                       k_nn=a.knn_k)


def _cmd_align_summary(a: argparse.Namespace) -> None:
    from emolens import alignment

    alignment.run_summary(a.pairs, a.out, alpha=a.alpha)


def _cmd_stats(a: argparse.Namespace) -> None:
    from emolens import statistics

    if a.mode == "effect":
        statistics.run_effect(a.sweeps, a.heads, a.out, seed=a.seed, n_boot=a.n_boot, n_perm=a.n_perm,
                              alpha=a.alpha)
    elif a.mode == "power":
        statistics.run_power(a.sweeps, a.heads, a.out, alpha=a.alpha, power=a.power)
    else:
        statistics.run_k(a.activations, a.subspaces, a.out, seed=a.seed, n_perm=a.n_perm)


def _cmd_verify(a: argparse.Namespace) -> None:
    from emolens import verify
    from emolens.dataset import load_dataset

    failed = verify.run(a.results, a.models, len(load_dataset(a.dataset)), a.out, min_spearman=a.min_spearman)
    if failed:
        raise VerificationFailed(f"{failed} check(s) failed; see {a.out} and the log above")


def _cmd_timing(a: argparse.Namespace) -> None:
    from emolens import timing

    timing.run(a.jobs, a.out)


def _cmd_figures(a: argparse.Namespace) -> None:
    from emolens import figures

    figures.run(a.results, a.models, a.out)


def _cmd_plan(a: argparse.Namespace) -> None:
    from emolens import plan

    plan.run(a.configfile, tokens=a.prompt_tokens)


class VerificationFailed(RuntimeError):
    """At least one verification check failed."""


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="model name from the config")
    p.add_argument("--settings", type=_settings, required=True, help="the model's settings as JSON")
    p.add_argument("--dataset", required=True, help="phase-1 dataset JSONL")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every phase's subcommand."""
    parser = argparse.ArgumentParser(prog="emolens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        return p

    p = command("dataset", _cmd_dataset, "phase 1: build the 900-prompt dataset, or check a JSONL")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="where to write the built dataset")
    group.add_argument("--check", help="a dataset JSONL to validate")

    p = command("organism", _cmd_organism, "demo: build and train a tiny model organism")
    _model_args(p)
    p.add_argument("--out", required=True, help="checkpoint directory to write")

    p = command("activations", _cmd_activations, "phase 2: residual stream at every layer")
    _model_args(p)
    p.add_argument("--out", required=True, help="activations pickle to write")

    p = command("vectors", _cmd_vectors, "phase 3: emotion vectors, probes and subspaces")
    p.add_argument("--activations", required=True)
    p.add_argument("--vectors-out", required=True)
    p.add_argument("--subspaces-out", required=True)
    p.add_argument("--k-max", type=int, default=8)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    for name, fn, help in (("residual-chunk", _cmd_residual_chunk, "phase 5: residual patching of one layer chunk"),
                           ("screen-heads", _cmd_screen_heads, "phase 6a: exact and attribution scores of every head"),
                           ("patch-heads", _cmd_patch_heads, "phase 6b: the top-K heads, alone and jointly")):
        p = command(name, fn, help)
        _model_args(p)
        p.add_argument("--out", required=True)
        p.add_argument("--direction", choices=["denoising", "noising"], default="denoising")
        p.add_argument("--max-pairs", type=int, default=None, help="deterministic subsample of pairs")
        p.add_argument("--seed", type=int, default=0)
        if name == "residual-chunk":
            p.add_argument("--layers", required=True, help="residual indices a-b (inclusive)")
            p.add_argument("--n-positions", type=int, default=6)
        if name == "screen-heads":
            p.add_argument("--top-k", type=int, default=8)
        if name == "patch-heads":
            p.add_argument("--screening", required=True, help="phase-6a head_scores JSON")
            p.add_argument("--n-boot", type=int, default=1000)

    p = command("residual-merge", _cmd_residual_merge, "phase 5: check and merge a model's chunk files")
    p.add_argument("--chunks", nargs="+", required=True)
    p.add_argument("--n-layers", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000)

    p = command("align", _cmd_align, "phase 4: compare two models of any widths on the same prompts")
    p.add_argument("--activations", nargs=2, required=True, metavar=("A", "B"))
    p.add_argument("--vectors", nargs=2, required=True, metavar=("A", "B"))
    p.add_argument("--subspaces", nargs=2, required=True, metavar=("A", "B"))
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-perm", type=int, default=200)
    p.add_argument("--knn-k", type=int, default=10)

    p = command("align-summary", _cmd_align_summary, "phase 4: headline numbers of every model pair")
    p.add_argument("--pairs", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=float, default=0.05)

    p = command("stats", _cmd_stats, "phase 7: effect sizes, power, or aligned subspace dimensions (k)")
    p.add_argument("mode", choices=["effect", "power", "k"])
    p.add_argument("--sweeps", nargs="*", default=[])
    p.add_argument("--heads", nargs="*", default=[])
    p.add_argument("--activations", nargs="*", default=[])
    p.add_argument("--subspaces", nargs="*", default=[])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--n-perm", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)

    p = command("verify", _cmd_verify, "check every output of every phase; non-zero exit on any failure")
    p.add_argument("--results", required=True, help="results/<profile>")
    p.add_argument("--models", nargs="+", required=True, help="model names from the config")
    p.add_argument("--dataset", required=True)
    p.add_argument("--min-spearman", type=float, default=0.0)
    p.add_argument("--out", required=True)

    p = command("timing", _cmd_timing, "one timing record per job, from Snakemake benchmark files")
    p.add_argument("--jobs", type=_jobs, required=True, help="JSON list of {rule, model, chunk, benchmark, output}")
    p.add_argument("--out", required=True)

    p = command("figures", _cmd_figures, "the report's figures from a profile's results")
    p.add_argument("--results", required=True, help="results/<profile>")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--out", required=True, help="directory for the PNG files")

    p = command("plan", _cmd_plan, "memory plan: weights, KV cache, activations and batch sizes per model")
    p.add_argument("--configfile", default="config/config.yaml", help="profile YAML to plan (validated)")
    p.add_argument("--prompt-tokens", type=int, default=24, help="tokens per prompt assumed (plan.PROMPT_TOKENS)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emolens`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        args.func(args)
    except (*USER_ERRORS, VerificationFailed) as e:
        print(f"emolens {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
