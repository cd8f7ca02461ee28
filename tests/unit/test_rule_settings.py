"""Every workflow rule passes every setting its emolens command reads, so the value comes from the config.

An option that mirrors a config key (made by ``emolens.options._setting``, which keeps the key on the action as
``config_key``) defaults to the schema's default: a rule that leaves it out runs with the default whatever the
profile says (the dataset card once ran with 5 folds whatever ``subspace.probe_folds`` was). The rules are read as
text: each rule's ``shell:`` string, with the flag helpers of common.smk that its params call (``pairs=pair_flags()``)
written in.
"""

from __future__ import annotations

import argparse
import ast
import re
from functools import cache
from pathlib import Path

from emolens.options import build_parser

RULES = Path(__file__).resolve().parents[2] / "workflow" / "rules"
# Options a command takes that the mode a rule runs does not read (every mode of a command shares its options).
NOT_READ = {
    "dataset": {"--seed", "--folds"},  # the build: the seed only permutes labels (--permute-by); the folds: the card's
    "stats effect": {"--power"},
    "stats power": {"--seed", "--n-boot", "--n-perm"},
    "stats k": {"--n-boot", "--power"},
}


def _helpers() -> dict[str, str]:
    """The source of each function of common.smk, by name."""
    text = (RULES / "common.smk").read_text()
    return {m.group(1): m.group(0) for m in re.finditer(r"^def (\w+)\(.*?(?=^\S|\Z)", text, re.M | re.S)}


def rule_shells() -> dict[str, str]:
    """Each rule's shell command as written, followed by the source of the common.smk helpers its params call."""
    helpers = _helpers()
    shells = {}
    for path in sorted(RULES.glob("*.smk")):
        for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S):
            shell = re.search(r"^    shell:\n((?:        .*\n?)+)", body, re.M)
            if shell:
                called = re.findall(r"^        \w+=(\w+)\(\),$", body, re.M)
                written = ast.literal_eval(f"({shell.group(1)})")  # the string literals, concatenated
                shells[rule] = " ".join([written, *(helpers.get(f, "") for f in called)])
    return shells


@cache
def mirrored_options(command: str) -> set[str]:
    """The options of an emolens subcommand that mirror a config key."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {a.option_strings[0] for a in commands[command]._actions if hasattr(a, "config_key")}


def missing_settings(shell: str) -> set[str]:
    """The options mirroring a config key that the emolens command in ``shell`` reads and ``shell`` does not pass."""
    words = shell.split()
    i = words.index("emolens") + 1
    while words[i].startswith("--"):  # the options before the subcommand (--attempt N --input-error-file PATH)
        i += 2
    command, mode = words[i], words[i + 1]
    name = command if mode.startswith("-") else f"{command} {mode}"
    return mirrored_options(command) - set(re.findall(r"--[a-z][a-z-]*", shell)) - NOT_READ.get(name, set())


def test_every_rule_passes_every_setting_its_command_reads():
    shells = rule_shells()
    assert {"dataset_card", "residual_chunk", "steer", "stats_k"} <= set(shells)
    assert {rule: missing for rule, shell in shells.items() if (missing := missing_settings(shell))} == {}


def test_a_setting_left_out_is_found():
    assert missing_settings("emolens dataset describe --source {input} --out {output} 2> {log}") == {
        "--seed", "--folds"}
    assert missing_settings("emolens --attempt 1 --input-error-file x steer-transfer --name m --ridge 0.1") == {
        "--seed", "--n-null", "--max-prompts", "--n-boot", "--device"}
    assert "--max-pairs" in rule_shells()["residual_chunk"]  # written in from pair_flags()
