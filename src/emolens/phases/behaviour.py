"""Readout baseline: does the model read the emotion at all?

Method. Every dataset prompt (the message inside the configured readout, :mod:`emolens.data.readout`)
runs once, clean, in batches of equal token length; the model's answer is the argmax of its label
logits (one per emotion of the run) at the last position (final norm, then those unembedding rows, as every patching
metric reads them: :func:`emolens.engine.patching.collect`). Raw accuracy takes that argmax as it is. A
model may favour one label whatever the message (a 135M model answered " anger" for all 900
prompts), which raw accuracy cannot tell from not reading the message. Contextual calibration, in
the spirit of Zhao et al. (2021) with the dataset itself as the content-free estimate, subtracts each
label's mean logit over all prompts before the argmax: it asks whether the right label rises above
its own average. The offsets are fitted on the same prompts they are scored on (n numbers for n
emotions, n - 1 free, on hundreds of prompts), so calibrated accuracy is a mild in-sample estimate.
Both are reported overall, per register (when the records have one) and as n x n confusion matrices
(rows = true emotion, columns = predicted, in :func:`emolens.emotion_order`), beside chance (1 / n)
and the share of raw predictions that go to each label. An instruct model (``models.<m>.chat_template``) is
also read with the prompt in its chat template (the message as the user's turn, the suffix opening
the assistant's answer: :meth:`emolens.data.readout.Readout.chat_prompt`), reported under ``chat`` beside
the plain readout every other phase uses. Patching effects are interpretable only where the
clean model separates the emotions; this file says how far it does.

Inputs: one model's settings, the dataset JSONL and the readout. Output:
``results/<p>/readout/<m>.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens import emotion_order
from emolens.data.dataset import load_dataset
from emolens.data.readout import DEFAULT, Readout
from emolens.engine.inputs import tokenize
from emolens.engine.oom import run_with_backoff
from emolens.engine.patching import collect
from emolens.io import provenance, save_json
from emolens.model.adapter import ModelAdapter
from emolens.model.loading import load_model

log = logging.getLogger(__name__)
SCHEMA = "emolens.readout/1"


def confusion(truth: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """[k, k] counts of k emotions: row = true emotion index, column = predicted index."""
    return np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)


def _accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(truth == predicted)) if len(truth) else float("nan")


def readout_report(logits: np.ndarray, emotions: Sequence[str],
                   registers: Sequence[str | None] | None = None) -> dict[str, Any]:
    """The baseline's numbers from label logits [N, n_emotions] (columns in :func:`emolens.emotion_order` of the
    true emotions, as the readout's labels) and true emotions; chance is 1 / n_emotions.

    Calibrated predictions are argmax(logits - mean_label_logit), the mean taken over all N prompts
    (``by_register`` uses the same offsets). ``registers`` (optional, None entries skipped) adds ``by_register``.
    """
    order = emotion_order(emotions)
    logits = np.asarray(logits, dtype=np.float64)  # [N, n_emotions]
    assert logits.ndim == 2 and logits.shape == (len(emotions), len(order)), logits.shape
    truth = np.array([order.index(e) for e in emotions], dtype=int)  # [N]
    offsets = logits.mean(axis=0)  # [n_emotions]: each label's mean logit, the calibration
    raw = logits.argmax(axis=1)  # [N]
    calibrated = (logits - offsets).argmax(axis=1)  # [N]
    by_register: dict[str, dict[str, Any]] = {}
    if registers is not None:
        registers = list(registers)
        for register in sorted({r for r in registers if r is not None}):
            mask = np.array([r == register for r in registers])
            by_register[register] = {"accuracy": _accuracy(truth[mask], raw[mask]),
                                     "accuracy_calibrated": _accuracy(truth[mask], calibrated[mask]),
                                     "n": int(mask.sum())}
    return {
        "n": len(truth),
        "chance": 1 / len(order),
        "emotions": list(order),
        "accuracy": _accuracy(truth, raw),
        "accuracy_calibrated": _accuracy(truth, calibrated),
        "confusion": confusion(truth, raw, len(order)).tolist(),
        "confusion_calibrated": confusion(truth, calibrated, len(order)).tolist(),
        "by_register": by_register,
        "predicted_share": {e: float(np.mean(raw == i)) for i, e in enumerate(order)},
        "mean_label_logit": {e: float(offsets[i]) for i, e in enumerate(order)},
    }


def label_logits(adapter: ModelAdapter, texts: Sequence[str], readout: Readout = DEFAULT,
                 batch_size: int = 32, chat: bool = False) -> np.ndarray:
    """Clean label logits [N, n_emotions] (the readout's emotions) at each readout prompt's last position
    (``chat``: the prompt in the tokenizer's chat template, :meth:`Readout.chat_prompt`)."""
    ids = readout.label_token_ids(adapter.tokenizer)
    tokens = tokenize(adapter, texts, readout, chat)
    logits, _ = collect(adapter, tokens, [ids[e] for e in readout.emotions], offsets=(), batch_size=batch_size)
    return logits.double().numpy()


def check_readout(adapter: ModelAdapter, settings: dict[str, Any], name: str, readout: Readout) -> None:
    """Refuse, before any forward, a label that is not one token or a chat readout without a chat template."""
    readout.label_token_ids(adapter.tokenizer)
    if settings.get("chat_template") and not getattr(adapter.tokenizer, "chat_template", None):
        raise ValueError(f"models.{name}.chat_template: the tokenizer of {name} has no chat template; "
                         "set chat_template to false")


def readout_result(adapter: ModelAdapter, settings: dict[str, Any], records: Sequence[dict[str, Any]],
                   logits: np.ndarray, name: str, readout: Readout = DEFAULT, started: float | None = None
                   ) -> dict[str, Any]:
    """The readout file from the plain prompts' label logits [N, n_emotions]; an instruct model
    (``chat_template``) is also read in its chat template here."""
    started = time.time() if started is None else started
    texts, emotions = [r["text"] for r in records], [r["emotion"] for r in records]
    registers = [r.get("register") for r in records]
    registers = registers if any(r is not None for r in registers) else None
    chat = None
    if settings.get("chat_template"):
        chat_logits, _ = run_with_backoff(lambda bs: label_logits(adapter, texts, readout, bs, chat=True),
                                          settings.get("batch_size", 16), what=f"readout {name}")
        chat = readout_report(chat_logits, emotions, registers)
    return {
        "schema": SCHEMA,
        "model": name,
        **readout_report(logits, emotions, registers),
        "chat": chat,  # the same readout in the tokenizer's chat template
        "readout": readout.as_dict(),
        "label_token_ids": readout.label_token_ids(adapter.tokenizer),
        "quantization": adapter.quantization,
        "provenance": provenance({**settings, "readout": readout.as_dict()}, started, model=name),
    }


def save_readout(result: dict[str, Any], out: str | Path) -> None:
    """Write the readout file and log its accuracies."""
    save_json(result, out)
    name = result["model"]
    share = max(result["predicted_share"].items(), key=lambda kv: kv[1])
    log.info("readout %s: accuracy %.3f raw, %.3f calibrated (chance %.2f, n = %d); most predicted %r (%.0f%%)",
             name, result["accuracy"], result["accuracy_calibrated"], result["chance"], result["n"], share[0],
             100 * share[1])
    if result["chat"]:
        log.info("readout %s in its chat template: accuracy %.3f raw, %.3f calibrated", name,
                 result["chat"]["accuracy"], result["chat"]["accuracy_calibrated"])
    for register, r in result["by_register"].items():
        log.info("readout %s [%s]: accuracy %.3f raw, %.3f calibrated (n = %d)", name, register, r["accuracy"],
                 r["accuracy_calibrated"], r["n"])


def run(settings: dict[str, Any], dataset: str | Path, out: str | Path, name: str, device: str = "auto",
        readout: Readout = DEFAULT) -> dict[str, Any]:
    """Load the model and dataset, read every prompt's emotion from the label logits, save the JSON (the workflow's
    activations job writes the same file from its own forwards: :func:`emolens.phases.activations.run`)."""
    started = time.time()
    records = load_dataset(dataset, readout.labels)
    adapter = load_model(settings, name=name, device=device)
    check_readout(adapter, settings, name, readout)
    texts = [r["text"] for r in records]
    logits, _ = run_with_backoff(lambda bs: label_logits(adapter, texts, readout, bs),
                                 settings.get("batch_size", 16), what=f"readout {name}")
    result = readout_result(adapter, settings, records, logits, name, readout, started)
    save_readout(result, out)
    return result
