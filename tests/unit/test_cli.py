"""The emolens command line: plain-text help with every option described, and the retry guard (an input error is
recorded and a retry repeats it without running; an out-of-memory error is not recorded, so a retry runs)."""

import argparse

import pytest

from emolens import cli
from emolens.cli import INPUT_ERROR, RESOURCE_ERROR, main
from emolens.options import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def test_every_option_of_every_subcommand_has_help():
    parser = build_parser()
    commands = {"emolens": parser, **_subparsers(parser)}
    assert len(commands) > 15
    missing = [f"{name} {action.option_strings or action.dest}" for name, p in commands.items()
               for action in p._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert not missing, missing


def test_help_is_plain_text_and_settings_has_an_example():
    parser = build_parser()
    for p in [parser, *_subparsers(parser).values()]:
        text = p.format_help()
        assert "``" not in text and ":func:" not in text, p.prog
    settings = _subparsers(parser)["residual-chunk"].format_help()
    assert "--settings JSON" in settings and '{"hf_id": "openai-community/gpt2"' in settings


def test_input_error_is_recorded_and_a_retry_repeats_it_without_running(tmp_path, capsys, monkeypatch):
    record = tmp_path / "job.log.input_error"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    guard = ["--input-error-file", str(record)]
    assert main(["--attempt", "1", *guard, "dataset", "--check", str(bad)]) == INPUT_ERROR
    first = capsys.readouterr().err.strip()
    assert first.startswith("emolens dataset: error: ") and record.read_text().strip() == first

    ran = []
    monkeypatch.setattr(cli, "_cmd_dataset", lambda a: ran.append(a))
    assert main(["--attempt", "2", *guard, "dataset", "--check", str(bad)]) == INPUT_ERROR
    second = capsys.readouterr().err.strip().splitlines()
    assert not ran, "the retry ran the command"
    assert second[0].startswith("emolens: attempt 2 not run: attempt 1 ended in an input error") and second[-1] == first

    # A fresh run (attempt 1) clears the record and runs: the input may have been fixed.
    assert main(["--attempt", "1", *guard, "dataset", "--check", str(bad)]) == 0 and ran and not record.exists()


def test_usage_errors_are_input_errors_too(tmp_path, capsys):
    record = tmp_path / "r"
    assert main(["--input-error-file", str(record), "verify", "--results", "x"]) == INPUT_ERROR
    assert "the following arguments are required" in record.read_text()
    assert "usage: emolens verify" in capsys.readouterr().err


@pytest.mark.parametrize("error", [MemoryError("simulated"), cli.BatchOutOfMemoryError("CUDA out of memory even at 1")])
def test_out_of_memory_is_not_recorded_so_a_retry_runs(error, tmp_path, capsys, monkeypatch):
    record = tmp_path / "job.log.input_error"
    calls = []

    def out_of_memory(a):
        calls.append(a)
        raise error

    monkeypatch.setattr(cli, "_cmd_dataset", out_of_memory)
    for attempt in ("1", "2"):
        assert main(["--attempt", attempt, "--input-error-file", str(record), "dataset", "--check", "x"]) \
            == RESOURCE_ERROR
    assert len(calls) == 2 and not record.exists()
    assert "emolens dataset: error: " in capsys.readouterr().err


MIRRORED = {  # every CLI option that mirrors a config setting, by command
    "dataset": {"--seed", "--folds"}, "organism": {"--device"}, "equivalence": {"--device"},
    "activations": {"--device"}, "readout": {"--device"},
    "vectors": {"--k-max", "--folds", "--seed", "--n-perm", "--n-boot"},
    "residual-chunk": {"--device", "--direction", "--max-pairs", "--seed", "--message-positions"},
    "screen-heads": {"--device", "--direction", "--max-pairs", "--seed", "--message-positions", "--min-separation",
                     "--top-k"},
    "patch-heads": {"--device", "--direction", "--max-pairs", "--seed", "--message-positions", "--min-separation",
                    "--n-boot"},
    "residual-merge": {"--seed", "--n-boot", "--min-separation"},
    "sublayers": {"--device", "--direction", "--max-pairs", "--seed", "--message-positions", "--min-separation",
                  "--n-boot", "--n-perm", "--alpha"},
    "steer": {"--device", "--seed", "--n-null", "--max-prompts", "--n-boot", "--alphas", "--n-random",
              "--layer-stride", "--kl-prompts", "--kl-budget", "--n-random-subspaces", "--templates", "--max-depth",
              "--n-perm"},
    "steer-transfer": {"--device", "--seed", "--n-null", "--max-prompts", "--n-boot", "--ridge"},
    "words": {"--seed"}, "align": {"--seed", "--n-perm", "--knn-k"}, "align-summary": {"--alpha"},
    "stats": {"--seed", "--n-boot", "--n-perm", "--alpha", "--power"},
}


def test_every_option_that_mirrors_a_setting_defaults_to_the_schema():
    """The schema's defaults are the only defaults: a subcommand run by hand and the workflow agree."""
    from emolens import config

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    found: dict[str, set[str]] = {}
    for name, parser in commands.items():
        for action in parser._actions:
            if hasattr(action, "config_key"):
                found.setdefault(name, set()).add(action.option_strings[0])
                assert parser.get_default(action.dest) == config.default(action.config_key), (name, action.dest)
                assert f"config {action.config_key}" in action.help
    assert found == MIRRORED


def test_a_null_subsample_is_passed_as_none():
    """The rules pass a null max_pairs or max_prompts as None (left out, it would be the schema's default)."""
    model = ["--name", "m", "--settings", "{}", "--dataset", "d", "--out", "o"]
    parse = build_parser().parse_args
    assert parse(["residual-chunk", *model, "--layers", "0", "--max-pairs", "None"]).max_pairs is None
    assert parse(["steer", *model, "--activations", "a", "--max-prompts", "none"]).max_prompts is None
    assert parse(["steer", *model, "--activations", "a", "--max-prompts", "24"]).max_prompts == 24
    with pytest.raises(cli.UsageError, match="--max-prompts: expected an integer or none, got 'all'"):
        parse(["steer", *model, "--activations", "a", "--max-prompts", "all"])
