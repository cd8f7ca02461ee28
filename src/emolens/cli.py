"""The emolens command: one subcommand per phase, so every step can be run by hand.

Snakemake rules call these subcommands and pass only a model's own settings (as JSON), so a job
reruns exactly when its inputs or settings change. Known bad input ends in one line naming the
file, line or setting, and exit status 2; running out of memory ends in exit status 3. A workflow
job that is retried (``retries: 1``) passes ``--attempt`` and ``--input-error-file``: an input error
is the same on every attempt, so the retry repeats attempt 1's error line and exits 2 at once
instead of loading the model again; an out-of-memory error is retried (with more memory).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emolens import config
from emolens.config import ConfigError, ModelLoadError
from emolens.dataset import N_ITEMS, DatasetError
from emolens.io import ResultFileError
from emolens.oom import BatchOutOfMemoryError

INPUT_ERROR = 2  # bad input: the same on every attempt, so a workflow retry is refused
RESOURCE_ERROR = 3  # out of memory: another attempt (with more memory) may pass
USER_ERRORS = (ConfigError, ValueError, DatasetError, ModelLoadError, ResultFileError, FileNotFoundError, IndexError)
RESOURCE_ERRORS = (BatchOutOfMemoryError, MemoryError)


def _json_object(flag: str) -> Callable[[str], dict[str, Any]]:
    """An argparse type: a JSON object given as ``flag``."""

    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{flag} is not JSON: {e}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{flag} must be a JSON object")
        return value

    return parse


_settings = _json_object("--settings")


def _readout(text: str) -> Any:
    """``--readout JSON``: the config's readout section, as an :class:`emolens.readout.Readout`."""
    from emolens.readout import Readout

    try:
        return Readout.from_config(json.loads(text))
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--readout is not JSON: {e}") from None
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _jobs(text: str) -> list[dict[str, Any]]:
    value = json.loads(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("--jobs must be a JSON list")
    return value


def _cmd_dataset(a: argparse.Namespace) -> None:
    from emolens import dataset

    if a.action == "describe":
        _describe(a)
    elif a.check:
        records = dataset.load_dataset(a.check)
        print(f"{a.check}: {len(records)} prompts, balanced, no duplicates")
    elif a.out:
        dataset.run(a.out, a.permute_by, a.source, a.seed, a.items)
    else:
        raise DatasetError("give --out (where to build the dataset) or --check (a JSONL to validate), or describe")


def _describe(a: argparse.Namespace) -> None:
    """Print the dataset card of the built-in dataset or ``--source``; write it as JSON to ``--out`` if given."""
    from transformers import AutoTokenizer

    from emolens import card, dataset
    from emolens.io import save_json
    from emolens.organisms import train_tokenizer
    from emolens.plan import ORGANISM_VOCAB

    records = dataset.load_dataset(a.source) if a.source else dataset.build_dataset(a.items)
    tokenizers = {f"organism BPE ({ORGANISM_VOCAB})": train_tokenizer([r["text"] for r in records])}
    for path in a.tokenizer or ():
        tokenizers[path] = AutoTokenizer.from_pretrained(path, local_files_only=True)
    described = card.describe(records, tokenizers, seed=a.seed)
    if a.out:
        save_json(described, a.out)
    print(card.render(described))


def _cmd_organism(a: argparse.Namespace) -> None:
    from emolens import organisms

    organisms.run(a.dataset, a.name, a.settings["organism"], a.out, readout=a.readout)


def _cmd_activations(a: argparse.Namespace) -> None:
    from emolens import activations

    activations.run(a.settings, a.dataset, a.out, name=a.name, device=a.device, readout=a.readout)


def _cmd_readout(a: argparse.Namespace) -> None:
    from emolens import behaviour

    behaviour.run(a.settings, a.dataset, a.out, name=a.name, device=a.device, readout=a.readout)


def _cmd_vectors(a: argparse.Namespace) -> None:
    from emolens import vectors

    vectors.run(a.activations, a.dataset, a.vectors_out, a.subspaces_out, k_max=a.k_max, folds=a.folds,
                seed=a.seed, n_perm=a.n_perm, n_boot=a.n_boot)


def _model_and_records(a: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    """The model adapter and dataset records a model job works on."""
    from emolens.dataset import load_dataset
    from emolens.models import load_model

    records = load_dataset(a.dataset)
    return load_model(a.settings, name=a.name, device=a.device), records


def _patching_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {"max_pairs": a.max_pairs, "seed": a.seed, "direction": a.direction, "readout": a.readout,
            "message_positions": a.message_positions,
            "settings": {**a.settings, "max_pairs": a.max_pairs, "direction": a.direction, "seed": a.seed,
                         "message_positions": a.message_positions, "readout": a.readout.as_dict()}}


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
        adapter, records, layers, a.out, batch_size=batch_size, **_patching_kwargs(a)))


def _cmd_residual_merge(a: argparse.Namespace) -> None:
    from emolens import residual

    residual.merge(a.chunks, a.out, a.n_layers, seed=a.seed, n_resamples=a.n_boot, min_separation=a.min_separation)


def _cmd_screen_heads(a: argparse.Namespace) -> None:
    from emolens import heads

    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: heads.run_screening(
        adapter, records, a.out, top_k=a.top_k, min_separation=a.min_separation, batch_size=batch_size,
        **_patching_kwargs(a)))


def _cmd_patch_heads(a: argparse.Namespace) -> None:
    from emolens import heads

    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: heads.run_head_patching(
        adapter, records, a.screening, a.out, n_resamples=a.n_boot, min_separation=a.min_separation,
        batch_size=batch_size, **_patching_kwargs(a)))


def _steering_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """The steering options both steering subcommands share, and the settings their provenance records."""
    options = {"n_random": a.n_random, "max_prompts": a.max_prompts, "n_boot": a.n_boot, "seed": a.seed}
    return {**options, "readout": a.readout, "dataset": a.dataset,
            "settings": {**a.settings, **options, "readout": a.readout.as_dict()}}


def _cmd_steer(a: argparse.Namespace) -> None:
    from emolens import steering

    adapter, records = _model_and_records(a)
    kwargs = _steering_kwargs(a)
    kwargs["settings"].update(alphas=a.alphas, layer_stride=a.layer_stride, kl_prompts=a.kl_prompts,
                              n_random_subspaces=a.n_random_subspaces, transfer_alpha=a.transfer_alpha)
    _with_backoff(a, lambda batch_size: steering.run_steering(
        adapter, records, a.activations, a.out, alphas=a.alphas, layer_stride=a.layer_stride,
        kl_prompts=a.kl_prompts, n_random_subspaces=a.n_random_subspaces, transfer_alpha=a.transfer_alpha,
        batch_size=batch_size, **kwargs))


def _cmd_steer_transfer(a: argparse.Namespace) -> None:
    from emolens import transfer

    adapter, records = _model_and_records(a)
    kwargs = _steering_kwargs(a)
    kwargs["settings"]["ridge"] = a.ridge
    _with_backoff(a, lambda batch_size: transfer.run_transfer(
        adapter, records, a.activations, a.steering, a.out, ridge=a.ridge, batch_size=batch_size, **kwargs))


def _cmd_steer_transfer_summary(a: argparse.Namespace) -> None:
    from emolens import transfer

    transfer.run_transfer_summary(a.inputs, a.out)


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
        statistics.run_k(a.activations, a.subspaces, a.out, seed=a.seed, n_perm=a.n_perm, alpha=a.alpha)


def _cmd_verify(a: argparse.Namespace) -> None:
    from emolens import verify
    from emolens.dataset import load_dataset

    failed = verify.run(a.results, a.models, load_dataset(a.dataset), a.out)
    if failed:
        raise VerificationFailed(f"{failed} check(s) failed; see {a.out} and the log above")


def _cmd_timing(a: argparse.Namespace) -> None:
    from emolens import timing

    timing.run(a.jobs, a.out)


def _cmd_figures(a: argparse.Namespace) -> None:
    from emolens import figures

    figures.run(a.results, a.models, a.out, organisms=a.organisms, profile=a.profile)


def _cmd_preflight(a: argparse.Namespace) -> None:
    from emolens import preflight

    preflight.run(a.configfile, models=a.models, out=a.out)


def _cmd_findings(a: argparse.Namespace) -> None:
    from emolens import findings

    findings.run(a.results, a.out, organisms=list(a.organisms))


def _cmd_plan(a: argparse.Namespace) -> None:
    from emolens import plan

    plan.run(a.configfile, tokens=a.prompt_tokens)


class VerificationFailed(RuntimeError):
    """At least one verification check failed."""


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="model name from the config")
    p.add_argument("--settings", type=_settings, required=True, metavar="JSON",
                   help="the model's settings from the config, as a JSON object, e.g. "
                        "'{\"hf_id\": \"openai-community/gpt2\", \"dtype\": \"float32\", \"batch_size\": 16}' or "
                        "'{\"path\": \"results/demo/models/gpt2_small\"}' (keys: workflow/schemas/config.schema.yaml, "
                        "models.<name>)")
    p.add_argument("--dataset", required=True, help="phase-1 dataset JSONL")
    p.add_argument("--readout", type=_readout, default=_readout("{}"), metavar="JSON",
                   help="the config's readout section as JSON, e.g. '{\"suffix\": \"\\nThe emotion of this message "
                        "is\", \"prefix\": \"\", \"labels\": {\"anger\": \" anger\"}}' (labels not given keep their "
                        "defaults); default: the defaults")
    _setting(p, "--device", "device", "torch device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N")


def _setting(p: argparse.ArgumentParser, flag: str, key: str, help: str, **kw: Any) -> None:
    """An option that mirrors the config key ``key`` (kept on the action as ``config_key``): its default is the
    schema's, so a command run by hand and the workflow agree."""
    value = config.default(key)
    p.add_argument(flag, default=value, help=f"{help} (config {key}; default: {value})", **kw).config_key = key


def _separation_arg(p: argparse.ArgumentParser) -> None:
    _setting(p, "--min-separation", "patching.min_separation",
             "pairs whose clean LD_donor - LD_run is below this (logits) are left out of summaries", type=float)


def _dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("build", "describe"), default="build",
                   help="build (the default; or --check a JSONL) or describe: print the dataset card of the "
                        "built-in dataset or --source (with --out, also write it as JSON)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--out", help="where to write the built dataset (describe: the card's JSON)")
    group.add_argument("--check", help="a dataset JSONL to validate")
    p.add_argument("--permute-by", choices=("frame", "item"),
                   help="write a null dataset: the emotion labels permuted by frame (one permutation per frame) or "
                        "within each item")
    p.add_argument("--source", help="the dataset to permute or describe (default: the built-in one)")
    p.add_argument("--items", type=int, default=N_ITEMS,
                   help=f"items in the built-in dataset, four prompts each (default {N_ITEMS}; the build refuses "
                        "a size at which two texts coincide)")
    p.add_argument("--tokenizer", action="append",
                   help="describe: a Hugging Face tokenizer directory whose token-length match to report (repeatable)")
    _setting(p, "--seed", "seed", "seed of the label permutation", type=int)


def _organism_options(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, help="checkpoint directory to write")


def _activations_options(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, help="activations pickle to write")


def _readout_options(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, help="readout JSON to write")


def _vectors_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activations", required=True, help="the model's phase-2 activations pickle")
    p.add_argument("--dataset", required=True, help="the dataset JSONL the activations were extracted from")
    p.add_argument("--vectors-out", required=True, help="emotion vectors and probe accuracies pickle to write")
    p.add_argument("--subspaces-out", required=True, help="emotion subspaces pickle to write")
    _setting(p, "--k-max", "subspace.k_max", "subspace dimensions kept per layer", type=int)
    _setting(p, "--folds", "subspace.probe_folds", "GroupKFold folds over frames (items where no frame)", type=int)
    _setting(p, "--seed", "seed", "seed of the fold assignment", type=int)
    _setting(p, "--n-perm", "statistics.n_perm", "label permutations by frame of the decoding test", type=int)
    _setting(p, "--n-boot", "patching.n_boot",
             "frame-then-item bootstrap resamples of probe minus lexical accuracy", type=int)


def _patching_options(p: argparse.ArgumentParser, name: str) -> None:
    """Options of residual-chunk, screen-heads and patch-heads (which one: ``name``)."""
    _model_args(p)
    p.add_argument("--out", required=True, help="result file to write (pickle; screen-heads: JSON)")
    _setting(p, "--direction", "patching.direction", "denoising patches the source run's activations into the "
             "target run; noising the reverse", choices=["denoising", "noising"])
    _setting(p, "--max-pairs", "patching.max_pairs", "deterministic subsample of pairs (none: all)", type=int)
    _setting(p, "--seed", "seed", "seed of the pair subsample and of the head-screening frame split", type=int)
    _setting(p, "--message-positions", "patching.message_positions",
             "message tokens patched before the readout suffix (positions are roles from the end)", type=int)
    if name != "residual-chunk":
        _separation_arg(p)
    if name == "residual-chunk":
        p.add_argument("--layers", required=True, help="residual indices a-b (inclusive)")
    if name == "screen-heads":
        _setting(p, "--top-k", "patching.top_k_heads", "heads carried to head patching", type=int)
    if name == "patch-heads":
        p.add_argument("--screening", required=True, help="phase-6a head_scores JSON")
        _setting(p, "--n-boot", "patching.n_boot", "frame-then-item bootstrap resamples", type=int)


def _residual_merge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunks", nargs="+", required=True, help="the model's chunk pickles (layers_<a>-<b>.pkl)")
    p.add_argument("--n-layers", type=int, required=True,
                   help="decoder layers L of the model: the chunks must cover residual indices 0..L once")
    p.add_argument("--out", required=True, help="merged residual sweep pickle to write")
    _setting(p, "--seed", "seed", "seed of the bootstrap", type=int)
    _setting(p, "--n-boot", "patching.n_boot", "frame-then-item bootstrap resamples", type=int)
    _separation_arg(p)


def _steering_options(p: argparse.ArgumentParser, name: str) -> None:
    """Options of steer and steer-transfer (which one: ``name``)."""
    _model_args(p)
    p.add_argument("--out", required=True, help="JSON to write")
    _setting(p, "--seed", "seed", "seed of the frame split, subsample, directions, bootstrap", type=int)
    _setting(p, "--n-random", "steering.n_random", "random unit directions of the null", type=int)
    _setting(p, "--max-prompts", "steering.max_prompts", "held-out prompts measured (whole items; none: all)",
             type=int)
    _setting(p, "--n-boot", "steering.n_boot", "frame-then-item bootstrap resamples", type=int)
    if name == "steer":
        p.add_argument("--activations", required=True, help="the model's phase-2 activations pickle")
        _setting(p, "--alphas", "steering.alphas",
                 "steering strengths, in units of the typical residual norm (0 is always added)", type=float,
                 nargs="+")
        _setting(p, "--layer-stride", "steering.layer_stride", "steer every n-th residual index (and the last)",
                 type=int)
        _setting(p, "--kl-prompts", "steering.kl_prompts", "neutral held-out prompts for the KL cost", type=int)
        _setting(p, "--n-random-subspaces", "steering.n_random_subspaces", "random subspaces ablated as the null",
                 type=int)
        _setting(p, "--transfer-alpha", "steering.transfer_alpha",
                 "alpha (nearest on the grid) at which the best index is chosen and transfer runs", type=float)
    else:
        p.add_argument("--activations", nargs="+", required=True,
                       help="phase-2 activations of every model (<name>.pkl), this one included")
        p.add_argument("--steering", required=True, help="this model's steering JSON (its best index and alpha)")
        _setting(p, "--ridge", "steering.ridge", "ridge of the map, relative to a's mean eigenvalue", type=float)


def _steer_transfer_summary_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", nargs="+", required=True, help="steering/transfer/into_<m>.json files")
    p.add_argument("--out", required=True, help="summary JSON to write")


def _align_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activations", nargs=2, required=True, metavar=("A", "B"), help="the two models' activations")
    p.add_argument("--vectors", nargs=2, required=True, metavar=("A", "B"), help="the two models' vectors pickles")
    p.add_argument("--subspaces", nargs=2, required=True, metavar=("A", "B"),
                   help="the two models' subspaces pickles")
    p.add_argument("--out", required=True, help="alignment pickle of the pair to write")
    _setting(p, "--seed", "seed", "seed of the frame split and the permutations", type=int)
    _setting(p, "--n-perm", "alignment.n_perm", "permutations of each null", type=int)
    _setting(p, "--knn-k", "alignment.knn_k", "neighbours in the mutual k-NN overlap", type=int)


def _align_summary_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", nargs="+", required=True, help="alignment pickles of every model pair")
    p.add_argument("--out", required=True, help="summary JSON to write")
    _setting(p, "--alpha", "statistics.alpha", "Benjamini-Hochberg FDR level within each family", type=float)


def _stats_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=["effect", "power", "k"],
                   help="effect: effect sizes, CIs and p-values; power: frames needed; k: aligned dimensions")
    p.add_argument("--sweeps", nargs="*", default=[], help="residual sweep pickles (effect, power)")
    p.add_argument("--heads", nargs="*", default=[], help="head patching pickles (effect, power)")
    p.add_argument("--activations", nargs="*", default=[], help="activations pickles of every model (k)")
    p.add_argument("--subspaces", nargs="*", default=[], help="subspaces pickles of every model, same order (k)")
    p.add_argument("--out", required=True, help="JSON to write")
    _setting(p, "--seed", "seed", "seed of the bootstrap, permutations and split", type=int)
    _setting(p, "--n-boot", "patching.n_boot", "frame-then-item bootstrap resamples (effect)", type=int)
    _setting(p, "--n-perm", "statistics.n_perm", "permutations (effect, k)", type=int)
    _setting(p, "--alpha", "statistics.alpha", "significance level", type=float)
    _setting(p, "--power", "statistics.power", "target power of the frames-needed rows", type=float)


def _verify_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="results/<profile>")
    p.add_argument("--models", nargs="+", required=True, help="model names from the config")
    p.add_argument("--dataset", required=True, help="the dataset JSONL every phase ran on")
    p.add_argument("--out", required=True, help="verification JSON to write")


def _timing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=_jobs, required=True, help="JSON list of {rule, model, chunk, benchmark, output}")
    p.add_argument("--out", required=True, help="timing JSONL to write")


def _figures_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="results/<profile>")
    p.add_argument("--models", nargs="+", required=True, help="model names from the config, in config order")
    p.add_argument("--out", required=True, help="directory for the PNG files")
    p.add_argument("--organisms", type=_json_object("--organisms"), default={}, metavar="JSON",
                   help="the demo organisms' settings by model, e.g. '{\"gpt2_small\": {\"d_model\": 64, "
                        "\"n_layers\": 4}}': they are labelled 'demo organism (d_model, layers)'; default: none")
    p.add_argument("--profile", help="profile name in every title (default: the name of the --results directory)")


def _findings_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, help="results/<profile>")
    p.add_argument("--out", required=True, help="markdown file to write, e.g. results/<profile>/findings.md")
    p.add_argument("--organisms", type=_json_object("--organisms"), default={}, metavar="JSON",
                   help="the demo organisms by model (as for figures): the caveats name them; default: none")


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", default="config/config.yaml", help="profile YAML to plan (validated)")
    p.add_argument("--prompt-tokens", type=int, default=24, help="tokens per prompt assumed (plan.PROMPT_TOKENS)")


def _preflight_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--configfile", help="profile YAML to check (validated; default: config/config.yaml)")
    group.add_argument("--models", type=_json_object("--models"), metavar="JSON",
                       help="the config's models section as a JSON object, e.g. "
                            "'{\"gpt2_small\": {\"hf_id\": \"openai-community/gpt2\"}}' (what the workflow passes)")
    p.add_argument("--out", help="JSON report to write when every model can run")


COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
    # (name, help, its options), in the order of the phases; command NAME runs _cmd_NAME (dashes as underscores)
    ("dataset", "phase 1: build the 900-prompt dataset, or check a JSONL", _dataset_options),
    ("organism", "demo: build and train a tiny model organism", _organism_options),
    ("activations", "phase 2: residual stream at every layer", _activations_options),
    ("readout", "readout baseline: the model's own 4-way emotion prediction", _readout_options),
    ("vectors", "phase 3: emotion vectors, probes and subspaces", _vectors_options),
    ("residual-chunk", "phase 5: residual patching of one layer chunk",
     lambda p: _patching_options(p, "residual-chunk")),
    ("screen-heads", "phase 6a: exact and attribution scores of every head",
     lambda p: _patching_options(p, "screen-heads")),
    ("patch-heads", "phase 6b: the top-K heads, alone and jointly",
     lambda p: _patching_options(p, "patch-heads")),
    ("residual-merge", "phase 5: check and merge a model's chunk files", _residual_merge_options),
    ("steer", "steering dose-response, specificity, KL cost and directional ablation of the emotion vectors",
     lambda p: _steering_options(p, "steer")),
    ("steer-transfer", "steer a model with every other model's emotion vectors carried through a ridge map",
     lambda p: _steering_options(p, "steer-transfer")),
    ("steer-transfer-summary", "the steering-transfer matrix over model pairs",
     _steer_transfer_summary_options),
    ("align", "phase 4: compare two models of any widths on the same prompts", _align_options),
    ("align-summary", "phase 4: headline numbers of every model pair", _align_summary_options),
    ("stats", "phase 7: effect sizes, power, or aligned subspace dimensions (k)", _stats_options),
    ("verify", "check every output of every phase; non-zero exit on any failure", _verify_options),
    ("timing", "one timing record per job, from Snakemake benchmark files", _timing_options),
    ("figures", "the report's figures from a profile's results", _figures_options),
    ("findings", "the findings page (markdown) from a profile's results", _findings_options),
    ("plan", "memory plan: weights, KV cache, activations and batch sizes per model", _plan_options),
    ("preflight", "before a run: per model, are the weights cached or at their path, their download size, gated "
                  "or not, and free disk against the need", _preflight_options),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every phase's subcommand (:data:`COMMANDS`)."""
    parser = _Parser(prog="emolens", description=__doc__.split("\n\n")[0].replace("\n", " "),
                     epilog="Exit status: 0 done; 2 bad input (one line on stderr naming the file, line or "
                            "setting; a workflow retry is refused); 3 out of memory (retried). "
                            "Run 'emolens <command> --help' for a command's options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _guard_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, options in COMMANDS:
        options(sub.add_parser(name, help=help, description=help))
    return parser


@dataclass
class RetryGuard:
    """Refuses a workflow retry after an input error: attempt 1 records its error line in ``record``
    (a file Snakemake leaves alone, unlike the job's log, which it deletes before every attempt); a
    later attempt that finds it repeats the line and exits 2 without running. Attempt 1 first removes
    a record an earlier run left, so a fixed input runs again."""

    attempt: int = 1
    record: Path | None = None

    def refusal(self) -> str | None:
        """The lines a retry prints instead of running, or None when the command should run."""
        if self.record is None:
            return None
        if self.attempt <= 1:
            self.record.unlink(missing_ok=True)
            return None
        if not self.record.is_file():
            return None
        return (f"emolens: attempt {self.attempt} not run: attempt 1 ended in an input error (exit 2), which "
                f"another attempt cannot change; out-of-memory errors (exit 3) are retried\n"
                + self.record.read_text().rstrip("\n"))

    def input_error(self, message: str) -> int:
        """Print the error line(s), record them for a retry, and return the input-error status."""
        print(message, file=sys.stderr)
        if self.record is not None:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            self.record.write_text(message + "\n")
        return INPUT_ERROR


class _UsageError(Exception):
    """A command line argparse refused (its usage line is already printed)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises a usage error instead of exiting, so it is recorded like any input error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(f"{self.prog}: error: {message}")


def _guard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attempt", type=int, default=1, metavar="N",
                   help="the workflow job's attempt, 1 on the first run (rules pass Snakemake's attempt); "
                        "default: 1")
    p.add_argument("--input-error-file", type=Path, metavar="PATH",
                   help="where an input error (exit 2) is recorded, e.g. the job's log path + '.input_error'; "
                        "with --attempt 2 or more, a recorded error is repeated and nothing runs")


def _retry_guard(argv: list[str] | None) -> RetryGuard:
    """The retry options, read before the full command line (whose own errors they must cover)."""
    pre = argparse.ArgumentParser(add_help=False)
    _guard_args(pre)
    known, _ = pre.parse_known_args(argv)
    return RetryGuard(attempt=known.attempt, record=known.input_error_file)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the emolens console script: 0 done, 2 bad input, 3 out of memory."""
    guard = _retry_guard(argv)
    refusal = guard.refusal()
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return INPUT_ERROR
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        return guard.input_error(str(e))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        globals()[f"_cmd_{args.command.replace('-', '_')}"](args)
    except RESOURCE_ERRORS as e:
        detail = e if isinstance(e, BatchOutOfMemoryError) else f"out of host memory ({e!r})"
        print(f"emolens {args.command}: error: {detail}", file=sys.stderr)
        return RESOURCE_ERROR
    except (*USER_ERRORS, VerificationFailed) as e:  # one line per problem (preflight may find several)
        return guard.input_error("\n".join(f"emolens {args.command}: error: {line}"
                                           for line in str(e).splitlines() or [""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
