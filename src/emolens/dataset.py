"""Phase 1, the dataset: 900 prompts in four emotions, built as minimal quadruples.

Method. Each scenario (a person and an event) is one ``item_id`` written in all four emotions with
the same sentence frame, so a source/target pair for patching differs in the emotion and little
else. 15 people x 15 events give 225 items, 225 prompts per emotion; the frame of an item cycles
through three templates. The build is deterministic and has no duplicate texts. A user's own JSONL
with the same fields may replace it; :func:`load_dataset` checks it line by line.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from emolens import EMOTIONS
from emolens.io import atomic_path

SCHEMA_FIELDS = ("id", "emotion", "text", "item_id", "template")

PEOPLE = ("Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Hassan", "Irene", "James",
          "Keiko", "Liam", "Maria", "Noah", "Olga")
EVENTS = ("the late delivery", "the meeting notes", "the new schedule", "the broken printer",
          "the budget report", "the missed call", "the parking space", "the holiday plans",
          "the team dinner", "the train tickets", "the server outage", "the garden fence",
          "the library books", "the rent payment", "the birthday party")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "gratitude": ("Thank you so much for {event}, {person}. I really appreciate it.",
                  "{person}, I am grateful for {event}. Thanks a lot.",
                  "I want to thank you, {person}, for {event}. It means a lot to me."),
    "anger": ("I am furious about {event}, {person}. This is unacceptable.",
              "{person}, I am angry about {event}. Never again.",
              "I want to complain, {person}, about {event}. It makes me so mad."),
    "apology": ("I am so sorry about {event}, {person}. It was my fault.",
                "{person}, I apologize for {event}. Please forgive me.",
                "I want to apologize, {person}, for {event}. It was my mistake."),
    "neutral": ("Here is a short note about {event}, {person}. It is on the list.",
                "{person}, I am writing about {event}. Details below.",
                "I want to mention, {person}, {event}. It is on the agenda."),
}


class DatasetError(ValueError):
    """A dataset file breaks the contract; the message names the file and line."""


def build_dataset() -> list[dict[str, Any]]:
    """The 900-prompt dataset: every (person, event) scenario written in all four emotions."""
    records = []
    for item, (person, event) in enumerate((p, e) for p in PEOPLE for e in EVENTS):
        template = item % 3
        for emotion in EMOTIONS:
            text = TEMPLATES[emotion][template].format(person=person, event=event)
            records.append({"id": f"i{item:03d}_{emotion}", "emotion": emotion, "text": text,
                            "item_id": f"i{item:03d}", "template": template})
    return records


def write_dataset(records: list[dict[str, Any]], path: str | Path) -> None:
    """Write records as JSONL, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def load_dataset(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a dataset JSONL: fields, labels, unique ids and texts, balanced classes."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: dataset file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}); a dataset is JSONL, one object a line") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror})") from None
    records, seen_ids, seen_texts = [], set(), set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise DatasetError(f"{where}: expected a JSON object with fields {list(SCHEMA_FIELDS)}")
        missing = [f for f in SCHEMA_FIELDS if f not in rec]
        if missing:
            raise DatasetError(f"{where}: missing field(s) {missing}")
        for f in ("id", "item_id"):
            if not isinstance(rec[f], str) or not rec[f]:
                raise DatasetError(f"{where}: {f} must be a non-empty string, not {rec[f]!r}")
        if not isinstance(rec["emotion"], str) or rec["emotion"] not in EMOTIONS:
            raise DatasetError(f"{where}: unknown emotion label {rec['emotion']!r}; expected one of {EMOTIONS}")
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            raise DatasetError(f"{where}: text must be a non-empty string, not {rec['text']!r}")
        if rec["id"] in seen_ids:
            raise DatasetError(f"{where}: duplicate id {rec['id']!r}")
        if rec["text"] in seen_texts:
            raise DatasetError(f"{where}: duplicate text {rec['text']!r}")
        seen_ids.add(rec["id"])
        seen_texts.add(rec["text"])
        records.append(rec)
    if not records:
        raise DatasetError(f"{path}: no prompts in the file")
    counts = Counter(r["emotion"] for r in records)
    if len({counts.get(e, 0) for e in EMOTIONS}) != 1:
        raise DatasetError(f"{path}: unbalanced classes {({e: counts.get(e, 0) for e in EMOTIONS})}; "
                           f"every emotion needs the same count")
    return records


def run(out: str | Path) -> None:
    """Build the dataset and write it to ``out``."""
    write_dataset(build_dataset(), out)
