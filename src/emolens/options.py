"""The emolens command line: one options function per subcommand, and the parser they make.

An option that mirrors a config key takes its default from the schema (:func:`_setting`), so a
subcommand run by hand and the workflow agree. The parser raises :class:`UsageError` instead of
exiting, so :func:`emolens.cli.main` records a usage error like any other input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emolens import config
from emolens.data.dataset import N_ITEMS


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
    """``--readout JSON``: the config's readout section, as an :class:`emolens.data.readout.Readout`."""
    from emolens.data.readout import Readout

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


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="model name from the config")
    p.add_argument("--settings", type=_settings, required=True, metavar="JSON",
                   help="the model's settings from the config, as a JSON object, e.g. "
                        "'{\"hf_id\": \"openai-community/gpt2\", \"dtype\": \"float32\", \"batch_size\": 16}' or "
                        "'{\"path\": \"results/demo/models/gpt2_small\"}' (keys: workflow/schemas/config.schema.yaml, "
                        "models.<name>)")
    p.add_argument("--dataset", required=True, help="phase-1 dataset JSONL")
    _readout_arg(p)
    _setting(p, "--device", "device", "torch device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N")


def _count_or_none(text: str) -> int | None:
    """An argparse type: a count, or ``none`` (the config's null: no subsample), so a rule can always pass it."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or none, got {text!r}") from None


def _readout_arg(p: argparse.ArgumentParser) -> None:
    """``--readout``: the run's prompts and label words, whose emotions the dataset must hold."""
    p.add_argument("--readout", type=_readout, default=_readout("{}"), metavar="JSON",
                   help="the config's readout section as JSON, e.g. '{\"suffix\": \"\\nThe emotion of this message "
                        "is\", \"prefix\": \"\", \"labels\": {\"joy\": \" joy\", \"fear\": \" fear\"}}': the labels "
                        "are the run's emotions, and the dataset must hold exactly these (given, they replace the "
                        "default four whole); default: the defaults")


def _json_list(text: str) -> list[str]:
    """A JSON list of strings (readout suffixes hold newlines and spaces)."""
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError(f"expected a JSON list of strings, got {text!r}")
    return value


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
    _readout_arg(p)  # --check and --source: the emotions the dataset must hold
    _setting(p, "--seed", "seed", "seed of the label permutation (--permute-by) and of the card's baselines "
             "(describe)", type=int)
    _setting(p, "--folds", "subspace.probe_folds", "describe: folds (grouped by frame) of the card's surface and "
             "lexical baselines", type=int)


def _organism_options(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, help="checkpoint directory to write")


def _equivalence_options(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, help="equivalence JSON to write")


def _activations_options(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, help="activations pickle to write")
    p.add_argument("--readout-out", help="readout JSON to write from the same forwards (as the readout command's)")


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
    """Options of residual-chunk, screen-heads, patch-heads and sublayers (which one: ``name``)."""
    _model_args(p)
    p.add_argument("--out", required=True, help="result file to write (pickle; screen-heads: JSON)")
    _setting(p, "--direction", "patching.direction", "denoising patches the source run's activations into the "
             "target run; noising the reverse", choices=["denoising", "noising"])
    _setting(p, "--max-pairs", "patching.max_pairs", "deterministic subsample of pairs (none: all)",
             type=_count_or_none)
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
    if name == "sublayers":
        _setting(p, "--n-boot", "patching.n_boot", "frame-then-item bootstrap resamples", type=int)
        _setting(p, "--n-perm", "statistics.n_perm", "sign flips of frames, attention minus MLP", type=int)
        _setting(p, "--alpha", "statistics.alpha", "BH level over the blocks", type=float)


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
    _setting(p, "--n-null", "steering.n_null", "directions of each matched null", type=int)
    _setting(p, "--max-prompts", "steering.max_prompts", "held-out prompts measured (whole items; none: all)",
             type=_count_or_none)
    _setting(p, "--n-boot", "steering.n_boot", "frame-then-item bootstrap resamples", type=int)
    if name == "steer":
        p.add_argument("--activations", required=True, help="the model's phase-2 activations pickle")
        _setting(p, "--alphas", "steering.alphas", "steering doses in projection-sd units (0 is always added)",
                 type=float, nargs="+")
        _setting(p, "--n-random", "steering.n_random", "isotropic directions per index beside the dose-response",
                 type=int)
        _setting(p, "--layer-stride", "steering.layer_stride", "steer every n-th residual index (and the last)",
                 type=int)
        _setting(p, "--kl-prompts", "steering.kl_prompts", "neutral held-out prompts for the KL cost", type=int)
        _setting(p, "--n-random-subspaces", "steering.n_random_subspaces", "random subspaces ablated as the null",
                 type=int)
        _setting(p, "--kl-budget", "steering.kl_budget", "largest off-label KL (nats) of the chosen dose", type=float)
        _setting(p, "--templates", "steering.templates", "other readout suffixes the chosen vector is measured under, "
                 "as a JSON list", type=_json_list)
        _setting(p, "--n-perm", "steering.n_perm", "label permutations of the permuted null at the chosen dose "
                 "(none: n_null // n_emotions)", type=_count_or_none)
        _setting(p, "--max-depth", "steering.max_depth", "relative depth of the second, inner steering choice",
                 type=float)
    else:
        p.add_argument("--activations", nargs="+", required=True,
                       help="phase-2 activations of every model (<name>.pkl), this one included")
        p.add_argument("--steering", required=True, help="this model's steering JSON (its best index and alpha)")
        p.add_argument("--words", help="the words reference's activations: each source also words-partialled")
        _setting(p, "--ridge", "steering.ridge", "ridge of the map, relative to a's mean eigenvalue", type=float)


def _steer_transfer_summary_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", nargs="+", required=True, help="steering/transfer/into_<m>.json files")
    p.add_argument("--out", required=True, help="summary JSON to write")


def _words_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="phase-1 dataset JSONL")
    _readout_arg(p)
    p.add_argument("--out", required=True, help="the words reference's activations pickle to write")
    _setting(p, "--seed", "seed", "seed of the frame split whose fit half the vocabulary is learned on", type=int)


def _align_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activations", nargs=2, required=True, metavar=("A", "B"), help="the two models' activations")
    p.add_argument("--vectors", nargs=2, default=(), metavar=("A", "B"), help="the two models' vectors (descriptive)")
    p.add_argument("--subspaces", nargs=2, default=(), metavar=("A", "B"), help="the two models' subspaces pickles")
    p.add_argument("--words", help="the words reference's activations: adds the words-controlled section")
    p.add_argument("--kind", choices=("models", "words", "ceiling"), default="models", help="B: model, words, twin")
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
    p.add_argument("--dataset", help="the dataset JSONL: adds each register's effects (effect)")
    p.add_argument("--words", help="the words reference's activations: adds k with the words controlled (k)")
    p.add_argument("--ceiling-activations", nargs="*", default=[], help="each ceiling twin's activations (k)")
    p.add_argument("--ceiling-of", nargs="*", default=[], help="the model of each ceiling twin, same order (k)")
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
    ("equivalence", "before the long jobs: every prompt within the model's context, and capture, readout and fast "
                    "patching against their references on two prompts", _equivalence_options),
    ("activations", "phase 2: residual stream at every layer", _activations_options),
    ("readout", "readout baseline: the model's own emotion prediction, one label per emotion", _readout_options),
    ("vectors", "phase 3: emotion vectors, probes and subspaces", _vectors_options),
    ("residual-chunk", "phase 5: residual patching of one layer chunk",
     lambda p: _patching_options(p, "residual-chunk")),
    ("screen-heads", "phase 6a: exact and attribution scores of every head",
     lambda p: _patching_options(p, "screen-heads")),
    ("patch-heads", "phase 6b: the top-K heads, alone and jointly",
     lambda p: _patching_options(p, "patch-heads")),
    ("residual-merge", "phase 5: check and merge a model's chunk files", _residual_merge_options),
    ("sublayers", "attention vs MLP: every block's two writes into the stream patched at the last position",
     lambda p: _patching_options(p, "sublayers")),
    ("steer", "steering dose-response, specificity, KL cost and directional ablation of the emotion vectors",
     lambda p: _steering_options(p, "steer")),
    ("steer-transfer", "steer a model with every other model's emotion vectors carried through a ridge map",
     lambda p: _steering_options(p, "steer-transfer")),
    ("steer-transfer-summary", "the steering-transfer matrix over model pairs",
     _steer_transfer_summary_options),
    ("words", "phase 4: the words reference, the prompts' word features as a one-layer model", _words_options),
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
    parser = _Parser(prog="emolens",
                     description="The emolens command: one subcommand per phase, so every step can be run by hand.",
                     epilog="Exit status: 0 done; 2 bad input (one line on stderr naming the file, line or "
                            "setting; a workflow retry is refused); 3 out of memory (retried). "
                            "Run 'emolens <command> --help' for a command's options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    guard_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, options in COMMANDS:
        options(sub.add_parser(name, help=help, description=help))
    return parser


class UsageError(Exception):
    """A command line argparse refused (its usage line is already printed)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises a usage error instead of exiting, so it is recorded like any input error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def guard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attempt", type=int, default=1, metavar="N",
                   help="the workflow job's attempt, 1 on the first run (rules pass Snakemake's attempt); "
                        "default: 1")
    p.add_argument("--input-error-file", type=Path, metavar="PATH",
                   help="where an input error (exit 2) is recorded, e.g. the job's log path + '.input_error'; "
                        "with --attempt 2 or more, a recorded error is repeated and nothing runs")
