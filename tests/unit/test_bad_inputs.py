"""The bad-input table (docs/bad-inputs.md), one test per row, through the real ``emolens`` command.

Each row: the command exits 2 with one line on stderr (``emolens <cmd>: error: ...``, no traceback)
that names the file, line or setting to fix; it writes no output; a finished output it would have
replaced is kept. :data:`ROWS` builds each bad input in a directory and returns the command; the
table in docs/bad-inputs.md is these rows run with ``python tests/unit/test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from emolens.cli import main
from emolens.data.dataset import build_dataset, write_dataset
from emolens.io import save_pickle
from emolens.phases.residual import CHUNK_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
DATASET = "results/p/data/emotion_dataset.jsonl"  # where the workflow builds it for profile p
CHUNKS = "results/p/patching/residual/chunks/m"
SWEEP = "results/p/patching/residual/m_residual_sweep.pkl"


@dataclass
class Row:
    """One bad input: what it is, the command that meets it, and what its one-line error must name."""

    input: str
    argv: list[str]
    names: list[str]  # fragments the error line must contain
    outputs: list[str] = field(default_factory=list)  # paths the command must not create or change
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return self.argv[0]


# --- building the bad inputs (all paths relative to the directory the command runs in) ---------------
def _dataset(lines: list[str] | None = None) -> list[str]:
    write_dataset(build_dataset(), DATASET)
    return Path(DATASET).read_text().splitlines() if lines is None else lines


def _user_dataset(edit: Callable[[list[str]], None]) -> str:
    lines = _dataset()
    edit(lines)
    Path("my_prompts.jsonl").write_text("\n".join(lines) + "\n")
    return "my_prompts.jsonl"


def _cut_line_3(lines: list[str]) -> None:
    lines[2] = lines[2][:-9]


def _set(lines: list[str], i: int, **fields) -> None:
    lines[i] = json.dumps({**json.loads(lines[i]), **fields})


def _config(edit: Callable[[dict], None]) -> str:
    config = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    edit(config)
    Path("my_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return "my_config.yaml"


def _model_job(settings: dict, *extra: str, command: str = "activations", out: str = "results/p/activations/m.pkl",
               dataset: str = DATASET) -> list[str]:
    _dataset()
    return [command, "--name", "m", "--settings", json.dumps(settings), "--dataset", dataset, "--out", out,
            "--device", "cpu", *extra]


def _chunk(first: int, last: int, model: str = "m", n_pairs: int = 3) -> dict:
    n = last - first + 1
    return {"schema": CHUNK_SCHEMA, "model": model, "n_layers": 2, "layers": list(range(first, last + 1)),
            "positions": [-1, -2], "pairs": [(f"i{k:03d}_anger", f"i{k:03d}_neutral") for k in range(n_pairs)],
            "items": [f"i{k:03d}" for k in range(n_pairs)], "frames": [f"f{k:03d}" for k in range(n_pairs)],
            "contrasts": ["anger-neutral"] * n_pairs,
            "effect": np.zeros((n_pairs, n, 2)), "ld_patched": np.zeros((n_pairs, n, 2)),
            "ld_clean_run": np.zeros(n_pairs), "ld_clean_donor": np.ones(n_pairs),
            "suffix": "\nThe emotion of this message is", "label_token_ids": {"anger": 5, "neutral": 6},
            "direction": "denoising", "quantization": None, "provenance": {}}


def _merge(damage: Callable[[Path], None] | None = None, chunks=((0, 0), (1, 1), (2, 2))) -> list[str]:
    """Three good chunk files of a 2-layer model, one of them damaged, and a finished sweep from earlier."""
    paths = []
    for first, last in chunks:
        paths.append(Path(CHUNKS) / f"layers_{first:02d}-{last:02d}.pkl")
        save_pickle(_chunk(first, last), paths[-1])
    if damage:
        damage(paths[1])
    Path(SWEEP).write_bytes(b"a finished sweep from an earlier run")
    return ["residual-merge", "--chunks", *map(str, paths), "--n-layers", "2", "--out", SWEEP, "--n-boot", "100"]


class _RunsCode:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


def _binary_file(path: str) -> str:
    Path(path).write_bytes(b"\x80\x05\x95" + bytes(range(256)))
    return path


def _empty_dir(path: str) -> str:
    Path(path).mkdir(parents=True)
    return path


def _unresolvable(ckpt: Path) -> str:
    """A tiny BERT-as-decoder checkpoint (blocks under bert.encoder, embeddings beside them), fixture's tokenizer."""
    from transformers import AutoTokenizer

    from emolens.model.tiny import tiny_model

    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    tiny_model("bert-generation", len(tokenizer)).save_pretrained("bert")
    tokenizer.save_pretrained("bert")
    return "bert"


def _checkpoint_of_type(model_type: str) -> str:
    Path("ckpt").mkdir()
    Path("ckpt/config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 32,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2}))
    return "ckpt"


OTHER = {"gratitude": "joy", "anger": "fear", "apology": "sadness", "neutral": "calm"}  # another run's emotions
SHARED_WORD = {"gratitude": " thanks", "anger": " thanks", "apology": " apology", "neutral": " neutral"}
ROWS: dict[str, Callable[[Path], Row]] = {
    "malformed dataset line": lambda ckpt: Row(
        "A dataset line that is not JSON", ["dataset", "--check", _user_dataset(_cut_line_3)],
        ["my_prompts.jsonl:3:", "not valid JSON"]),
    "malformed dataset line in a model job": lambda ckpt: Row(
        "The same dataset given to a model job", _model_job({"path": "models/m"}, dataset=_user_dataset(_cut_line_3)),
        ["my_prompts.jsonl:3:", "not valid JSON"], outputs=["results/p/activations/m.pkl"]),
    "missing field": lambda ckpt: Row(
        "A dataset line without a field", ["dataset", "--check", _user_dataset(
            lambda lines: lines.__setitem__(4, json.dumps({k: v for k, v in json.loads(lines[4]).items()
                                                           if k != "item_id"})))],
        ["my_prompts.jsonl:5:", "item_id"]),
    "unknown emotion label": lambda ckpt: Row(
        "An unknown emotion label", ["dataset", "--check", _user_dataset(lambda lines: _set(lines, 6, emotion="joy"))],
        ["my_prompts.jsonl:7:", "'joy'", "gratitude"]),
    "dataset of other emotions than the readout's": lambda ckpt: Row(
        "A dataset whose emotions are not readout.labels'", _model_job({"path": "models/m"}, dataset=_user_dataset(
            lambda lines: [_set(lines, i, emotion=OTHER[json.loads(x)["emotion"]]) for i, x in enumerate(lines)])),
        ["my_prompts.jsonl:1:", "'joy'", "the dataset's emotions ['calm', 'fear', 'joy', 'sadness'] differ from "
         "readout.labels' ['anger', 'apology', 'gratitude', 'neutral']"], outputs=["results/p/activations/m.pkl"]),
    "one emotion in readout.labels": lambda ckpt: Row(
        "readout.labels with one emotion", _model_job({"path": "models/m"}, "--readout", '{"labels": {"joy": " joy"}}'),
        ["--readout", "readout.labels must name two emotions or more", "'joy'"],
        outputs=["results/p/activations/m.pkl"]),
    "one label word for two emotions": lambda ckpt: Row(
        "Two emotions with one label word in --readout", ["dataset", "--check", _user_dataset(lambda lines: None),
                                                          "--readout", json.dumps({"labels": SHARED_WORD})],
        ["--readout", "readout.labels: gratitude and anger share the label word ' thanks'",
         "each emotion needs its own"]),
    "duplicate text": lambda ckpt: Row(
        "The same text twice", ["dataset", "--check", _user_dataset(
            lambda lines: _set(lines, 8, text=json.loads(lines[4])["text"]))],
        ["my_prompts.jsonl:9:", "duplicate text"]),
    "empty dataset": lambda ckpt: Row(
        "An empty dataset file", ["dataset", "--check", _user_dataset(lambda lines: lines.clear())],
        ["my_prompts.jsonl", "no prompts"]),
    "dataset not text": lambda ckpt: Row(
        "A dataset that is not text", ["dataset", "--check", _binary_file("my_prompts.jsonl")],
        ["my_prompts.jsonl", "not UTF-8"]),
    "id of the wrong type": lambda ckpt: Row(
        "A field of the wrong type", ["dataset", "--check", _user_dataset(lambda lines: _set(lines, 3, id=[3]))],
        ["my_prompts.jsonl:4:", "id must be a non-empty string"]),
    "unbalanced classes": lambda ckpt: Row(
        "Unbalanced classes", ["dataset", "--check", _user_dataset(lambda lines: lines.pop(1))],
        ["my_prompts.jsonl:", "unbalanced classes", "'anger': 224", "'gratitude': 225"]),
    "implicit text with an emotion stem": lambda ckpt: Row(
        "An implicit text with an emotion stem", ["dataset", "--check", _user_dataset(
            lambda lines: _set(lines, 6, text=json.loads(lines[6])["text"] + " I am so sorry."))],
        ["my_prompts.jsonl:7:", "implicit", "'sorry'"]),
    "unknown register": lambda ckpt: Row(
        "An unknown register", ["dataset", "--check", _user_dataset(lambda lines: _set(lines, 5, register="subtle"))],
        ["my_prompts.jsonl:6:", "'subtle'", "explicit", "implicit"]),
    "unknown config key": lambda ckpt: Row(
        "A config key that does not exist (typo)", ["plan", "--configfile", _config(
            lambda c: c["patching"].update(message_positionz=c["patching"].pop("message_positions")))],
        ["my_config.yaml", "patching", "'message_positionz'"]),
    "wrong config type": lambda ckpt: Row(
        "A config value of the wrong type", ["plan", "--configfile", _config(
            lambda c: c["models"]["llama3_8b"].update(batch_size="64"))],
        ["my_config.yaml", "models.llama3_8b.batch_size", "'64' is not of type 'integer'"]),
    "unknown organism family": lambda ckpt: Row(
        "An organism of an unknown family", ["plan", "--configfile", _config(
            lambda c: c["models"]["llama3_8b"]["organism"].update(family="mamba"))],
        ["my_config.yaml", "models.llama3_8b.organism.family", "'mamba'", "gpt_neox"]),
    "one label word for two emotions in a profile": lambda ckpt: Row(
        "Two emotions with one label word in a profile", ["plan", "--configfile", _config(
            lambda c: c["readout"].update(labels=SHARED_WORD))],
        ["my_config.yaml: readout.labels: gratitude and anger share the label word ' thanks'"]),
    "organism below its accuracy target": lambda ckpt: Row(
        "An organism that misses its accuracy target", _model_job(
            {"organism": {"family": "gpt2", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_steps": 2,
                          "min_steps": 1}},
            command="organism", out="results/p/models/m"),
        ["models.m: organism reached held-out accuracy", "< 0.9; raise its max_steps or change its size"],
        outputs=["results/p/models/m/readout_accuracy.json"]),
    "model the adapter cannot resolve": lambda ckpt: Row(
        "A checkpoint with no decoder-block list (BERT as a decoder)", _model_job({"path": _unresolvable(ckpt)}),
        ["models.m (model_type 'bert-generation', BertGenerationDecoder)", "cannot find its decoder blocks",
         "module lists tried: bert.encoder.layer (2)", "models.m.layers"], outputs=["results/p/activations/m.pkl"]),
    "hand-given paths that do not resolve": lambda ckpt: Row(
        "A model's layers path that names nothing", _model_job({"path": str(ckpt), "layers": "model.blocks"}),
        ["models.m (model_type 'gpt_neox', GPTNeoXForCausalLM)", "models.m.layers 'model.blocks' does not resolve"],
        outputs=["results/p/activations/m.pkl"]),
    "unknown model type": lambda ckpt: Row(
        "A checkpoint whose model type transformers does not know", _model_job({"path": _checkpoint_of_type("mamba9")}),
        ["models.m", "mamba9"], outputs=["results/p/activations/m.pkl"]),
    "model directory without a checkpoint": lambda ckpt: Row(
        "A local model directory that holds no checkpoint", _model_job({"path": _empty_dir("models/m")}),
        ["models.m", "'models/m'", "model_type"], outputs=["results/p/activations/m.pkl"]),
    "layer range outside the model": lambda ckpt: Row(
        "A layer range outside the model", _model_job(
            {"path": str(ckpt)}, "--layers", "0-9", command="residual-chunk", out=f"{CHUNKS}/layers_00-09.pkl"),
        ["residual indices", "outside 0..2"], outputs=[f"{CHUNKS}/layers_00-09.pkl"]),
    "layer range that is not a range": lambda ckpt: Row(
        "A layer range that is not a-b", _model_job(
            {"path": "models/m"}, "--layers", "3-1", command="residual-chunk", out=f"{CHUNKS}/layers_03-01.pkl"),
        ["--layers", "a-b", "'3-1'"], outputs=[f"{CHUNKS}/layers_03-01.pkl"]),
    "missing local model": lambda ckpt: Row(
        "A local model directory that does not exist", _model_job({"path": "models/llama-3-8b"}),
        ["models.m.path", "'models/llama-3-8b'", "not a directory"], outputs=["results/p/activations/m.pkl"]),
    "hub id not cached while offline": lambda ckpt: Row(
        "A hub id that is not cached, offline", _model_job({"hf_id": "nobody/not-a-model"}),
        ["models.m", "'nobody/not-a-model'", "HF_HUB_OFFLINE=1", "models.m.path"],
        outputs=["results/p/activations/m.pkl"], env={"HF_HUB_OFFLINE": "1"}),
    "truncated chunk": lambda ckpt: Row(
        "A truncated chunk file at merge", _merge(lambda p: p.write_bytes(p.read_bytes()[:200])),
        [f"{CHUNKS}/layers_01-01.pkl", "truncated", f"snakemake -R {CHUNKS}/layers_01-01.pkl"], outputs=[SWEEP]),
    "foreign chunk": lambda ckpt: Row(
        "A chunk of another model at merge", _merge(lambda p: save_pickle(_chunk(1, 1, model="other"), p)),
        [f"{CHUNKS}/layers_01-01.pkl", "foreign chunk", "model", f"snakemake -R {CHUNKS}/layers_01-01.pkl"],
        outputs=[SWEEP]),
    "not a chunk": lambda ckpt: Row(
        "Another result file in place of a chunk", _merge(lambda p: save_pickle(
            {"schema": "emolens.activations/2", "provenance": {}}, p)),
        [f"{CHUNKS}/layers_01-01.pkl", "emolens.activations/2", f"snakemake -R {CHUNKS}/layers_01-01.pkl"],
        outputs=[SWEEP]),
    "missing chunk": lambda ckpt: Row(
        "A chunk missing at merge", _merge(chunks=((0, 0), (2, 2))),
        ["residual indices 1-1", f"snakemake -R {CHUNKS}/layers_01-01.pkl"], outputs=[SWEEP]),
    "malicious pickle": lambda ckpt: Row(
        "A pickle that would run code", _merge(lambda p: p.write_bytes(pickle.dumps(
            {"schema": CHUNK_SCHEMA, "provenance": {}, "effect": _RunsCode()}))),
        [f"{CHUNKS}/layers_01-01.pkl", "refused to load global", "system", "not in the allow-list"],
        outputs=[SWEEP, "PWNED"]),
}
# Rows that need a saved checkpoint (the model loads before the error).
NEEDS_CHECKPOINT = {"layer range outside the model", "model the adapter cannot resolve",
                    "hand-given paths that do not resolve"}


def _state(paths: list[str]) -> dict[str, bytes | None]:
    return {p: Path(p).read_bytes() if Path(p).is_file() else None for p in paths}


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_gets_one_clear_line_and_no_output(name, tmp_path, monkeypatch, capsys, request):
    checkpoint = request.getfixturevalue("tiny_checkpoints")["gpt_neox"] if name in NEEDS_CHECKPOINT else None
    monkeypatch.chdir(tmp_path)
    row = ROWS[name](checkpoint)
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    before = _state(row.outputs)
    capsys.readouterr()

    code = main(row.argv)

    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"emolens {row.command}: error: ")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err
    for fragment in row.names:
        assert fragment in lines[0], (fragment, lines[0])
    assert _state(row.outputs) == before, "the command created or changed an output"
    assert not list(tmp_path.rglob(".*.tmp*")), "a temporary file was left behind"


@pytest.mark.slow  # a fresh process: about 8 s of imports
@pytest.mark.parametrize("name", ["malicious pickle"])
def test_console_script_exits_2_with_one_line(name, tmp_path, monkeypatch):
    """The installed ``emolens`` script, in a fresh process: exit status 2, one line, no traceback."""
    monkeypatch.chdir(tmp_path)
    row = ROWS[name](None)
    emolens = shutil.which("emolens", path=Path(sys.executable).parent) or "emolens"
    out = subprocess.run([emolens, *row.argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"emolens {row.command}: error: "), out.stderr
    assert not Path("PWNED").exists()


@pytest.mark.slow  # a fresh snakemake process
@pytest.mark.parametrize("name", ["unknown config key", "one label word for two emotions in a profile"])
def test_snakemake_config_error_is_one_line(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row = ROWS[name](None)
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n",
                          "--directory", str(tmp_path), "--configfile", row.argv[-1]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    log = out.stdout + out.stderr
    lines = [line for line in log.splitlines() if all(fragment in line for fragment in row.names)]
    assert len(lines) == 1, log
    assert "Failed validating" not in log and len(log.strip().splitlines()) <= 5, log


def table(tiny_checkpoint: Path) -> str:
    """The bad-input table (markdown): each row run through the console script in a fresh directory."""
    import tempfile

    emolens = shutil.which("emolens", path=Path(sys.executable).parent) or "emolens"
    rows = ["| Bad input | What you see (stderr) | Exit | Test row |", "|---|---|---|---|"]
    for name, build in ROWS.items():
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                row = build(tiny_checkpoint)
                env = {**os.environ, **row.env}
                out = subprocess.run([emolens, *row.argv], capture_output=True, text=True, env=env)
            finally:
                os.chdir(cwd)
        lines = out.stderr.strip().splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith(f"emolens {row.command}: error:")), 0)
        message = "<br>".join(lines[start:]).replace(str(tiny_checkpoint), "ckpt").replace("|", "\\|")
        note = " (after the job's progress and log lines)" if start else ""
        rows.append(f"| {row.input} | `` {message} ``{note} | {out.returncode} | `{name}` |")
    return "\n".join(rows)


if __name__ == "__main__":  # print the table for docs/bad-inputs.md
    from emolens.model.organisms import build_organism, train_tokenizer

    with __import__("tempfile").TemporaryDirectory() as ckpt:
        tok = train_tokenizer([r["text"] for r in build_dataset()])
        build_organism("gpt_neox", d_model=32, n_layers=2, n_heads=4, vocab_size=len(tok)).save_pretrained(ckpt)
        tok.save_pretrained(ckpt)
        print(table(Path(ckpt)))
