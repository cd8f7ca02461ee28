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

from emolens.config import ConfigError
from emolens.dataset import DatasetError
from emolens.io import ResultFileError
from emolens.models import ModelLoadError

USER_ERRORS = (ConfigError, DatasetError, ModelLoadError, ResultFileError, FileNotFoundError, IndexError)


def _settings(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--settings is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
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

    organisms.run(a.dataset, a.name, a.settings["organism"], a.out, device=a.device)


def _cmd_activations(a: argparse.Namespace) -> None:
    from emolens import activations

    activations.run(a.settings, a.dataset, a.out, name=a.name, device=a.device)


def _cmd_vectors(a: argparse.Namespace) -> None:
    from emolens import vectors

    vectors.run(a.activations, a.vectors_out, a.subspaces_out, k_max=a.k_max, folds=a.folds, seed=a.seed)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emolens`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"emolens {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
