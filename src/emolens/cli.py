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
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emolens import stopwatch
from emolens.config import ConfigError, ModelLoadError
from emolens.data.dataset import DatasetError
from emolens.engine.oom import BatchOutOfMemoryError
from emolens.io import ResultFileError
from emolens.options import UsageError, build_parser, guard_args

INPUT_ERROR = 2  # bad input: the same on every attempt, so a workflow retry is refused
RESOURCE_ERROR = 3  # out of memory: another attempt (with more memory) may pass
USER_ERRORS = (ConfigError, ValueError, DatasetError, ModelLoadError, ResultFileError, FileNotFoundError, IndexError)
RESOURCE_ERRORS = (BatchOutOfMemoryError, MemoryError)


def _cmd_dataset(a: argparse.Namespace) -> None:
    from emolens.data import dataset

    if a.action == "describe":
        _describe(a)
    elif a.check:
        records = dataset.load_dataset(a.check, a.readout.labels)
        print(f"{a.check}: {len(records)} prompts in {len(a.readout.labels)} emotions, balanced, no duplicates")
    elif a.out:
        dataset.run(a.out, a.permute_by, a.source, a.seed, a.items, emotions=a.readout.labels)
    else:
        raise DatasetError("give --out (where to build the dataset) or --check (a JSONL to validate), or describe")


def _describe(a: argparse.Namespace) -> None:
    """Print the dataset card of the built-in dataset or ``--source``; write it as JSON to ``--out`` if given."""
    from transformers import AutoTokenizer

    from emolens.data import card, dataset
    from emolens.io import save_json
    from emolens.model.organisms import train_tokenizer
    from emolens.model.tiny import ORGANISM_VOCAB

    records = dataset.load_dataset(a.source, a.readout.labels) if a.source else dataset.build_dataset(a.items)
    tokenizers = {f"organism BPE ({ORGANISM_VOCAB})": train_tokenizer([r["text"] for r in records])}
    for path in a.tokenizer or ():
        tokenizers[path] = AutoTokenizer.from_pretrained(path, local_files_only=True)
    described = card.describe(records, tokenizers, seed=a.seed, folds=a.folds)
    if a.out:
        save_json(described, a.out)
    print(card.render(described))


def _cmd_organism(a: argparse.Namespace) -> None:
    from emolens.model import organisms

    organisms.run(a.dataset, a.name, a.settings["organism"], a.out, readout=a.readout)


def _cmd_equivalence(a: argparse.Namespace) -> None:
    from emolens.phases import equivalence

    equivalence.run(a.settings, a.dataset, a.out, name=a.name, device=a.device, readout=a.readout)


def _cmd_activations(a: argparse.Namespace) -> None:
    from emolens.phases import activations

    activations.run(a.settings, a.dataset, a.out, name=a.name, device=a.device, readout=a.readout,
                    readout_out=a.readout_out)


def _cmd_readout(a: argparse.Namespace) -> None:
    from emolens.phases import behaviour

    behaviour.run(a.settings, a.dataset, a.out, name=a.name, device=a.device, readout=a.readout)


def _cmd_vectors(a: argparse.Namespace) -> None:
    from emolens.phases import vectors

    vectors.run(a.activations, a.dataset, a.vectors_out, a.subspaces_out, k_max=a.k_max, folds=a.folds,
                seed=a.seed, n_perm=a.n_perm, n_boot=a.n_boot)


def _model_and_records(a: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    """The model adapter and dataset records a model job works on."""
    from emolens.data.dataset import load_dataset
    from emolens.model.loading import load_model

    records = load_dataset(a.dataset, a.readout.labels)
    return load_model(a.settings, name=a.name, device=a.device), records


def _patching_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {"max_pairs": a.max_pairs, "seed": a.seed, "direction": a.direction, "readout": a.readout,
            "message_positions": a.message_positions,
            "settings": {**a.settings, "max_pairs": a.max_pairs, "direction": a.direction, "seed": a.seed,
                         "message_positions": a.message_positions, "readout": a.readout.as_dict()}}


def _with_backoff(a: argparse.Namespace, job: Callable[..., Any]) -> None:
    """Run a model job at the configured batch size, halving it on CUDA out-of-memory."""
    from emolens.engine.oom import run_with_backoff

    run_with_backoff(lambda bs: job(batch_size=bs), a.settings.get("batch_size", 16), what=f"{a.command} {a.name}")


def _layer_range(text: str) -> range:
    """``a-b`` (or ``a``) -> range(a, b + 1)."""
    first, _, last = text.partition("-")
    if not (first.isdigit() and (last or first).isdigit()) or int(first) > int(last or first):
        raise ValueError(f"--layers: expected residual indices a-b with a <= b, got {text!r}")
    return range(int(first), int(last or first) + 1)


def _cmd_residual_chunk(a: argparse.Namespace) -> None:
    from emolens.phases import residual

    layers = _layer_range(a.layers)
    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: residual.run_chunk(
        adapter, records, layers, a.out, batch_size=batch_size, **_patching_kwargs(a)))


def _cmd_residual_merge(a: argparse.Namespace) -> None:
    from emolens.phases import residual

    residual.merge(a.chunks, a.out, a.n_layers, seed=a.seed, n_resamples=a.n_boot, min_separation=a.min_separation)


def _cmd_screen_heads(a: argparse.Namespace) -> None:
    from emolens.phases import heads

    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: heads.run_screening(
        adapter, records, a.out, top_k=a.top_k, min_separation=a.min_separation, batch_size=batch_size,
        **_patching_kwargs(a)))


def _cmd_patch_heads(a: argparse.Namespace) -> None:
    from emolens.phases import heads

    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: heads.run_head_patching(
        adapter, records, a.screening, a.out, n_resamples=a.n_boot, min_separation=a.min_separation,
        batch_size=batch_size, **_patching_kwargs(a)))


def _cmd_sublayers(a: argparse.Namespace) -> None:
    from emolens.phases import sublayers

    adapter, records = _model_and_records(a)
    _with_backoff(a, lambda batch_size: sublayers.run(
        adapter, records, a.out, n_resamples=a.n_boot, n_perm=a.n_perm, alpha=a.alpha,
        min_separation=a.min_separation, batch_size=batch_size, **_patching_kwargs(a)))


def _steering_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """The steering options both steering subcommands share, and the settings their provenance records."""
    options = {"n_null": a.n_null, "max_prompts": a.max_prompts, "n_boot": a.n_boot, "seed": a.seed}
    return {**options, "readout": a.readout, "dataset": a.dataset,
            "settings": {**a.settings, **options, "readout": a.readout.as_dict()}}


def _cmd_steer(a: argparse.Namespace) -> None:
    from emolens.phases import steering

    adapter, records = _model_and_records(a)
    kwargs = _steering_kwargs(a)
    extra = {"alphas": a.alphas, "layer_stride": a.layer_stride, "n_random": a.n_random, "kl_prompts": a.kl_prompts,
             "kl_budget": a.kl_budget, "n_random_subspaces": a.n_random_subspaces, "templates": a.templates,
             "max_depth": a.max_depth, "n_perm": a.n_perm}
    kwargs["settings"].update(extra)
    _with_backoff(a, lambda batch_size: steering.run_steering(
        adapter, records, a.activations, a.out, batch_size=batch_size, **extra, **kwargs))


def _cmd_steer_transfer(a: argparse.Namespace) -> None:
    from emolens.phases import transfer

    adapter, records = _model_and_records(a)
    kwargs = _steering_kwargs(a)
    kwargs["settings"]["ridge"] = a.ridge
    _with_backoff(a, lambda batch_size: transfer.run_transfer(
        adapter, records, a.activations, a.steering, a.out, ridge=a.ridge, batch_size=batch_size, words=a.words,
        **kwargs))


def _cmd_steer_transfer_summary(a: argparse.Namespace) -> None:
    from emolens.phases import transfer

    transfer.run_transfer_summary(a.inputs, a.out)


def _cmd_words(a: argparse.Namespace) -> None:
    from emolens.phases import words

    words.run(a.dataset, a.out, seed=a.seed, readout=a.readout)


def _cmd_align(a: argparse.Namespace) -> None:
    from emolens.phases import alignment

    alignment.run_pair(*a.activations, a.out, vectors=a.vectors, subspaces=a.subspaces, words=a.words, kind=a.kind,
                       seed=a.seed, n_perm=a.n_perm, k_nn=a.knn_k)


def _cmd_align_summary(a: argparse.Namespace) -> None:
    from emolens.phases import alignment_summary

    alignment_summary.run_summary(a.pairs, a.out, alpha=a.alpha)


def _cmd_stats(a: argparse.Namespace) -> None:
    from emolens.phases import statistics

    if a.mode == "effect":
        from emolens.data.dataset import load_dataset

        records = load_dataset(a.dataset) if a.dataset else []
        registers = {r["item_id"]: r["register"] for r in records if r.get("register")}
        statistics.run_effect(a.sweeps, a.heads, a.out, seed=a.seed, n_boot=a.n_boot, n_perm=a.n_perm,
                              alpha=a.alpha, register_of=registers)
    elif a.mode == "power":
        statistics.run_power(a.sweeps, a.heads, a.out, alpha=a.alpha, power=a.power)
    else:
        from emolens.phases import aligned_dims

        aligned_dims.run_k(a.activations, a.subspaces, a.out, seed=a.seed, n_perm=a.n_perm, alpha=a.alpha,
                           words=a.words, ceilings=list(zip(a.ceiling_activations, a.ceiling_of, strict=True)))


def _cmd_verify(a: argparse.Namespace) -> None:
    from emolens.data.dataset import load_dataset
    from emolens.report import verify

    failed = verify.run(a.results, a.models, load_dataset(a.dataset), a.out)
    if failed:
        raise VerificationFailed(f"{failed} check(s) failed; see {a.out} and the log above")


def _cmd_timing(a: argparse.Namespace) -> None:
    from emolens.report import timing

    timing.run(a.jobs, a.out)


def _cmd_figures(a: argparse.Namespace) -> None:
    from emolens import layout
    from emolens.report import attention_mlp, figures

    figures.run(a.results, a.models, a.out, organisms=a.organisms, profile=a.profile)
    attention_mlp.attention_vs_mlp({m: layout.sublayers(a.results, m) for m in a.models},
                                   Path(a.out) / "attention_vs_mlp.png",
                                   labels=figures.model_labels(a.models, a.organisms),
                                   profile=a.profile or Path(a.results).name)


def _cmd_preflight(a: argparse.Namespace) -> None:
    from emolens.model import preflight

    preflight.run(a.configfile, models=a.models, out=a.out)


def _cmd_findings(a: argparse.Namespace) -> None:
    from emolens.report import findings

    findings.run(a.results, a.out, organisms=list(a.organisms))


def _cmd_plan(a: argparse.Namespace) -> None:
    from emolens.model import plan

    plan.run(a.configfile, tokens=a.prompt_tokens)


class VerificationFailed(RuntimeError):
    """At least one verification check failed."""


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


def _retry_guard(argv: list[str] | None) -> RetryGuard:
    """The retry options, read before the full command line (whose own errors they must cover)."""
    pre = argparse.ArgumentParser(add_help=False)
    guard_args(pre)
    known, _ = pre.parse_known_args(argv)
    return RetryGuard(attempt=known.attempt, record=known.input_error_file)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the emolens console script: 0 done, 2 bad input, 3 out of memory."""
    stopwatch.start()
    guard = _retry_guard(argv)
    refusal = guard.refusal()
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return INPUT_ERROR
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return guard.input_error(str(e))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        globals()[f"_cmd_{args.command.replace('-', '_')}"](args)
        print(stopwatch.line(), file=sys.stderr)  # where the job's time went: benchmarks/profile_phases.py
    except RESOURCE_ERRORS as e:
        detail = e if isinstance(e, BatchOutOfMemoryError) else f"out of host memory ({e!r})"
        print(f"emolens {args.command}: error: {detail}", file=sys.stderr)
        return RESOURCE_ERROR
    except (*USER_ERRORS, VerificationFailed) as e:  # one line per problem (preflight may find several)
        return guard.input_error("\n".join(f"emolens {args.command}: error: {line}"
                                           for line in str(e).splitlines() or [""]))
    return 0


def console() -> None:
    """The console script: :func:`main`, then an immediate exit. By then every output is written and closed, so
    the interpreter's teardown of torch and transformers (0.7 s, once per workflow job) is skipped: logs and
    standard streams are flushed, then ``os._exit``. An unexpected exception still ends the ordinary way."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
