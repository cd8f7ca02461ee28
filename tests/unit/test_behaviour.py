"""Readout baseline: the report from planted logits by hand, and the model's own prediction on tiny models."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from emolens import EMOTIONS
from emolens.data.dataset import build_dataset, write_dataset
from emolens.data.readout import DEFAULT, Readout
from emolens.engine.inputs import tokenize
from emolens.model.loading import load_model
from emolens.phases import activations
from emolens.phases.behaviour import label_logits, readout_report, run

FAMILIES = ["gpt2", "gpt_neox", "gpt_neo", "llama", "qwen3", "gemma3"]


def test_report_by_hand_on_planted_logits():
    # Two prompts per emotion (explicit, implicit). Every prompt favours " anger" by 10; the true label
    # gets +1, except the implicit neutral prompt, whose +1 goes to gratitude (the model misreads it).
    truth = [e for e in EMOTIONS for _ in range(2)]
    registers = ["explicit", "implicit"] * 4
    logits = np.zeros((8, 4))
    logits[:, 1] = 10
    for i, e in enumerate(truth):
        logits[i, EMOTIONS.index(e)] += 1
    logits[7] = [1, 10, 0, 0]
    report = readout_report(logits, truth, registers)
    # Raw: everything is anger, so only the two anger prompts are right.
    assert report["accuracy"] == 0.25 and report["chance"] == 0.25 and report["n"] == 8
    assert report["predicted_share"] == {"gratitude": 0.0, "anger": 1.0, "apology": 0.0, "neutral": 0.0}
    assert report["confusion"] == [[0, 2, 0, 0]] * 4
    # Calibration offsets: column means (gratitude gets +1 on three prompts: 0, 1 and 7).
    assert report["mean_label_logit"] == pytest.approx(
        {"gratitude": 3 / 8, "anger": 10 + 2 / 8, "apology": 2 / 8, "neutral": 1 / 8})
    # Prompt 6 (neutral) minus offsets: [-.375, -.25, -.25, .875] -> neutral, right.
    # Prompt 7 (neutral) minus offsets: [.625, -.25, -.25, -.125] -> gratitude, wrong. The rest are right.
    assert report["accuracy_calibrated"] == 7 / 8
    assert report["confusion_calibrated"] == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [1, 0, 0, 1]]
    assert report["by_register"] == {
        "explicit": {"accuracy": 0.25, "accuracy_calibrated": 1.0, "n": 4},
        "implicit": {"accuracy": 0.25, "accuracy_calibrated": 0.75, "n": 4},
    }
    assert readout_report(logits, truth)["by_register"] == {}


def test_report_rows_count_each_emotion():
    rng = np.random.default_rng(0)
    truth = [EMOTIONS[i % 4] for i in range(40)] + ["anger"] * 3
    report = readout_report(rng.normal(size=(43, 4)), truth)
    assert np.sum(report["confusion"], axis=1).tolist() == [10, 13, 10, 10]
    assert np.sum(report["confusion_calibrated"], axis=1).tolist() == [10, 13, 10, 10]
    assert np.trace(report["confusion"]) / 43 == pytest.approx(report["accuracy"])
    assert sum(report["predicted_share"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_label_logits_equal_full_logits(tiny_adapters, family):
    adapter = tiny_adapters[family]
    texts = [r["text"] for r in build_dataset()[:8]]
    got = label_logits(adapter, texts, DEFAULT, batch_size=3)  # [8, 4]
    ids = [DEFAULT.label_token_ids(adapter.tokenizer)[e] for e in EMOTIONS]
    for i, tokens in enumerate(tokenize(adapter, texts)):
        with torch.no_grad():
            full = adapter.model(torch.tensor([tokens])).logits[0, -1, ids]
        np.testing.assert_allclose(got[i], full.double().numpy(), atol=1e-4)


def test_prefix_and_suffix_change_the_prompt(tiny_adapters):
    adapter = tiny_adapters["llama"]
    texts = [r["text"] for r in build_dataset()[:4]]
    plain = tokenize(adapter, texts)
    other = Readout(prefix="Message:\n", suffix="\nEmotion:")
    changed = tokenize(adapter, texts, other)
    assert all(a != b for a, b in zip(plain, changed, strict=True))
    prefix = adapter.tokenizer("Message:\n")["input_ids"]
    assert changed[0][: len(prefix)] == prefix
    assert not np.allclose(label_logits(adapter, texts, DEFAULT), label_logits(adapter, texts, other))


def test_run_writes_the_baseline(tiny_checkpoints, tmp_path):
    data = tmp_path / "data.jsonl"
    records = build_dataset()
    write_dataset(records, data)
    out = tmp_path / "readout" / "gpt2.json"
    settings = {"path": str(tiny_checkpoints["gpt2"]), "dtype": "float32", "batch_size": 256}
    result = run(settings, data, out, name="gpt2", device="cpu")
    written = json.loads(out.read_text())
    assert written["schema"] == "emolens.readout/1" and written["model"] == "gpt2"
    assert written["n"] == len(records) and written["chance"] == 0.25
    assert 0 <= written["accuracy"] <= 1 and 0 <= written["accuracy_calibrated"] <= 1
    per_emotion = [sum(r["emotion"] == e for r in records) for e in EMOTIONS]
    for key in ("confusion", "confusion_calibrated"):
        assert np.shape(written[key]) == (4, 4) and np.sum(written[key], axis=1).tolist() == per_emotion
    assert sum(r["n"] for r in written["by_register"].values()) == len(records)
    assert written["readout"] == DEFAULT.as_dict() and list(written["label_token_ids"]) == list(EMOTIONS)
    assert written["quantization"] is None and written["provenance"]["settings"]["readout"] == DEFAULT.as_dict()
    assert written["accuracy"] == result["accuracy"]


def test_activations_job_writes_the_same_baseline(tiny_checkpoints, tmp_path):
    """The workflow's activations job reads the label logits off its own forwards: the same file, one pass fewer."""
    data = tmp_path / "data.jsonl"
    write_dataset(build_dataset(), data)
    settings = {"path": str(tiny_checkpoints["llama"]), "dtype": "float32", "batch_size": 64}
    alone = run(settings, data, tmp_path / "alone.json", name="llama", device="cpu")
    activations.run(settings, data, tmp_path / "act.pkl", name="llama", device="cpu",
                    readout_out=tmp_path / "shared.json")
    shared = json.loads((tmp_path / "shared.json").read_text())
    for key in ("accuracy", "accuracy_calibrated", "confusion", "confusion_calibrated", "by_register",
                "predicted_share", "mean_label_logit", "label_token_ids", "readout"):
        assert shared[key] == json.loads(json.dumps(alone[key])), key  # bit-identical logits: same batches


def test_run_refuses_a_label_that_splits(tiny_checkpoints, tmp_path):
    data = tmp_path / "data.jsonl"
    write_dataset(build_dataset(), data)
    out = tmp_path / "readout.json"
    readout = Readout.from_config({"labels": {**DEFAULT.labels, "anger": " xqzangerz"}})
    with pytest.raises(ValueError, match=r"readout\.labels\.anger = ' xqzangerz'"):
        run({"path": str(tiny_checkpoints["gpt2"]), "dtype": "float32"}, data, out, name="gpt2", device="cpu",
            readout=readout)
    assert not out.exists()


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_readout_reads_the_prompt_in_the_chat_template(tiny_checkpoints, tmp_path):
    """An instruct model's chat readout: the message as the user's turn, the suffix opening the answer; it is
    reported beside the plain readout, which stays what every other phase reads."""
    ckpt = tmp_path / "chat_model"
    shutil.copytree(tiny_checkpoints["gpt2"], ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    tok.chat_template = CHAT
    tok.save_pretrained(ckpt)
    data, out = tmp_path / "data.jsonl", tmp_path / "readout.json"
    records = build_dataset()[:40]
    write_dataset(records, data)
    settings = {"path": str(ckpt), "dtype": "float32", "batch_size": 64}
    plain = run(settings, data, tmp_path / "plain.json", name="m", device="cpu")
    result = run({**settings, "chat_template": True}, data, out, name="m", device="cpu")
    assert plain["chat"] is None and result["accuracy"] == plain["accuracy"]
    text = records[0]["text"]
    assert DEFAULT.chat_prompt(text, tok) == f"<|user|>{text}<|end|><|assistant|>" + DEFAULT.suffix.lstrip()
    adapter = load_model(settings, name="m", device="cpu")
    logits = label_logits(adapter, [r["text"] for r in records], DEFAULT, chat=True)
    expected = readout_report(logits, [r["emotion"] for r in records], [r.get("register") for r in records])
    assert json.loads(out.read_text())["chat"]["accuracy_calibrated"] == expected["accuracy_calibrated"]
    assert not np.allclose(logits, label_logits(adapter, [r["text"] for r in records], DEFAULT))


def test_chat_readout_refused_without_a_chat_template(tiny_checkpoints, tmp_path):
    data, out = tmp_path / "data.jsonl", tmp_path / "readout.json"
    write_dataset(build_dataset()[:8], data)
    with pytest.raises(ValueError, match=r"models\.m\.chat_template: the tokenizer of m has no chat template"):
        run({"path": str(tiny_checkpoints["gpt2"]), "chat_template": True}, data, out, name="m", device="cpu")
    assert not out.exists()
