"""Phase 1, the dataset (v3): 900 prompts in four emotions, built as 225 minimal quadruples.

Method. Each ``item_id`` is one scenario (a person, and where the frame asks for them a relation, an
object, an event, a place and a day) written in all four emotions with one *frame*
(:mod:`emolens.data.frames`): one scenario sentence shared by the four texts, then one emotional clause
per emotion, the clauses matched in words (within one), pronouns, negation, punctuation and time
words. There are 32 explicit and 32 implicit frames, so every emotion is written in 64 distinct
frames; items alternate between the two *registers* (even items explicit, odd implicit) and cycle
through the frames. In the *explicit* register the emotion is named by an emotion word; in the
*implicit* register only the situation carries it, and no text contains an emotion-word stem
(:data:`STEMS`) or a fixed emotional formula (:data:`FORMULAE`), checked at build and at load. The
build also checks what the texts must not give away: every item's four texts within one word of each
other, and the surface baseline (:mod:`emolens.data.surface`: length, pronouns, punctuation, negation,
time words) at most :data:`MAX_SURFACE_ACCURACY` with frames held out, in each register. A probe
that generalises across frames (group folds with :func:`frame_groups`) and from explicit to implicit
prompts reads neither a sentence frame, nor a label word, nor the length of the text. The build is
deterministic and has no duplicate texts; ``n_items`` builds more items (refused where two texts
would coincide). A user's own JSONL may replace it, with any two emotions or more (the run's, as
``readout.labels`` names them); :func:`load_dataset` checks it line by line (``frame`` and ``register``
are optional there), and its implicit texts against the stems of its own emotions' names and label
words where they are not the built-in four (:func:`emotion_cues`).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens import EMOTIONS, emotion_order
from emolens.data.frames import DAYS, EVENTS, FRAMES, NAMES, PLACES, RELATIONS, THINGS
from emolens.data.surface import feature_matrix, length_match, words
from emolens.io import atomic_path
from emolens.stats.probes import probe_model
from emolens.stats.resampling import frame_groups, frame_label_permutations, grouped_folds, out_of_fold

SCHEMA_FIELDS = ("id", "emotion", "text", "item_id")  # required in every record
OPTIONAL_FIELDS = ("frame", "register")
REGISTERS = ("explicit", "implicit")
N_ITEMS = 225
MAX_SURFACE_ACCURACY = 0.35  # the surface baseline's ceiling with frames held out (chance 0.25)
SURFACE_FOLDS = 5

# Emotion-word stems (case-insensitive, matched at word starts). No implicit text may contain one.
STEMS: dict[str, str] = {
    "grat": r"\bgrat", "thank": r"\bthank", "appreciat": r"\bappreciat",
    "ang": r"\bang", "furious": r"\bfurious", "mad": r"\bmad\b", "annoy": r"\bannoy",
    "livid": r"\blivid", "outrag": r"\boutrag", "fed up": r"\bfed up\b",
    "sorry": r"\bsorry", "apolog": r"\bapolog", "forgiv": r"\bforgiv", "regret": r"\bregret",
    "fault": r"\bfault",
    "gratitude": r"\bgratitude", "anger": r"\banger", "apology": r"\bapology", "neutral": r"\bneutral",
}
# Fixed emotional formulae (case-insensitive). No implicit text may contain one either.
FORMULAE: dict[str, str] = {
    "unbelievable": r"\bunbelievabl", "unacceptable": r"\bunacceptabl", "inexcusable": r"\binexcusabl",
    "should have": r"\bshould(?:n't| not)? have\b", "owe you": r"\bowe\b",
    "happen again": r"\bhappen again\b", "how dare": r"\bhow dare\b", "how could you": r"\bhow could you\b",
    "cheers": r"\bcheers\b", "lifesaver": r"\blife ?saver", "you are a star": r"\b(?:you are|you're) a star\b",
    "you are the best": r"\b(?:you are|you're) the best\b", "make it up to": r"\bmake (?:it|this) up to\b",
    "spare me": r"\bspare me\b", "shame on": r"\bshame on\b", "my bad": r"\bmy bad\b",
    "much obliged": r"\bobliged\b", "kind of you": r"\bkind of you\b", "last time": r"\bthe last time\b",
    "excuse me": r"\bexcuse me\b", "pardon": r"\bpardon\b", "bless you": r"\bbless you\b",
}
_CUES = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in (STEMS | FORMULAE).items()}
SUFFIXES = ("ness", "ment", "ation", "ion", "ful", "ing", "ed", "e")  # dropped from a label word for its stem


class DatasetError(ValueError):
    """A dataset file breaks the contract; the message names the file and line."""


def stem(word: str) -> str:
    """A label word's stem: lower case, its first suffix of :data:`SUFFIXES` dropped where 3 letters or more remain."""
    word = word.strip().lower()
    cut = next((len(s) for s in SUFFIXES if word.endswith(s) and len(word) - len(s) >= 3), 0)
    return word[: len(word) - cut]


def emotion_cues(emotions: Iterable[str]) -> dict[str, re.Pattern[str]]:
    """What no implicit text may hold, by name: :data:`STEMS` and :data:`FORMULAE` for the built-in four; for
    any other set, the stem of each emotion's name and (``emotions`` a mapping, ``readout.labels``) label word,
    matched at word starts."""
    names = list(emotions)
    if set(names) == set(EMOTIONS):
        return _CUES
    words = [*names, *(emotions.values() if isinstance(emotions, Mapping) else ())]
    return {s: re.compile(rf"\b{re.escape(s)}", re.IGNORECASE) for s in dict.fromkeys(map(stem, words)) if s}


def cue_hits(text: str, cues: Mapping[str, re.Pattern[str]] = _CUES) -> list[str]:
    """The names of the cues (default :data:`STEMS` and :data:`FORMULAE`) found in ``text`` (case-insensitive)."""
    return [name for name, pattern in cues.items() if pattern.search(text)]


def _scenario(item: int) -> dict[str, str]:
    """The slot values of item ``item``: each slot cycles through its (prime-length) list."""
    return {"name": NAMES[item % len(NAMES)], "rel": RELATIONS[item % len(RELATIONS)],
            "thing": THINGS[item % len(THINGS)], "event": EVENTS[item % len(EVENTS)],
            "place": PLACES[item % len(PLACES)], "day": DAYS[item % len(DAYS)]}


def _frame_of(item: int) -> tuple[str, str]:
    """(register, frame id) of an item: even items explicit, odd implicit; frames cycle in id order."""
    register = REGISTERS[item % 2]
    ids = sorted(FRAMES[register])
    return register, ids[(item // 2) % len(ids)]


def _quadruple(item: int) -> list[dict[str, Any]]:
    """One scenario written in all four emotions with one frame: the scenario sentence, then each clause."""
    register, frame = _frame_of(item)
    scenario, clauses = FRAMES[register][frame]
    slots, item_id = _scenario(item), f"i{item:03d}"
    return [{"id": f"{item_id}_{emotion}", "emotion": emotion, "text": f"{scenario.format(**slots)} {clause}",
             "item_id": item_id, "frame": frame, "register": register}
            for emotion, clause in zip(EMOTIONS, clauses, strict=True)]


def surface_accuracy(records: list[dict[str, Any]], tokens: Sequence[Sequence[int]] = (), seed: int = 0,
                     folds: int = SURFACE_FOLDS) -> dict[str, float]:
    """Accuracy of the surface baseline (on :data:`emolens.data.surface.FEATURES` and each column of token counts
    [N] in ``tokens``) with whole frames held out, the same folds throughout: fitted on all prompts ("all"),
    and fitted within each register (keyed by register)."""
    labels = np.array([r["emotion"] for r in records])
    fold = grouped_folds(frame_groups(records), folds)
    x = feature_matrix([r["text"] for r in records], tokens)
    registers = np.array([r.get("register") for r in records])
    out = {"all": float((out_of_fold(probe_model(seed), x, labels, fold) == labels).mean())}
    for g in REGISTERS:
        keep = registers == g
        if len(set(fold[keep])) > 1:
            _, local = np.unique(fold[keep], return_inverse=True)
            out[g] = float((out_of_fold(probe_model(seed), x[keep], labels[keep], local) == labels[keep]).mean())
    return out


def _check_built(records: list[dict[str, Any]]) -> None:
    """Raise DatasetError unless implicit texts are cue-free, frames balanced, texts unique, every item's
    texts within one word of each other and the surface baseline at most its ceiling."""
    for r in records:
        if r["register"] == "implicit" and cue_hits(r["text"]):
            raise DatasetError(f"{r['id']}: implicit text contains the emotion cue(s) {cue_hits(r['text'])}")
    per_frame: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        per_frame[r["frame"]][r["emotion"]] += 1
    for frame, counts in per_frame.items():
        if len({counts[e] for e in EMOTIONS}) != 1:
            raise DatasetError(f"frame {frame}: unbalanced emotions {dict(counts)}")
    texts = Counter(r["text"] for r in records)
    if max(texts.values()) > 1:
        raise DatasetError(f"duplicate texts: {[t for t, n in texts.items() if n > 1]}")
    uneven = length_match([len(words(r["text"])) for r in records], [r["item_id"] for r in records])["beyond"]
    if uneven:
        raise DatasetError(f"{len(uneven)} item(s) whose texts differ by more than one word, "
                           f"first {dict(list(uneven.items())[:3])}")
    surface = surface_accuracy(records)
    if max(surface.values()) > MAX_SURFACE_ACCURACY:
        raise DatasetError(f"the surface baseline (length, pronouns, punctuation, negation, time words) reaches "
                           f"{surface} with frames held out, above {MAX_SURFACE_ACCURACY}: balance the frames")


def build_dataset(n_items: int = N_ITEMS) -> list[dict[str, Any]]:
    """The dataset: ``n_items`` scenarios (900 prompts by default), each written in all four emotions with one frame."""
    records = [r for item in range(n_items) for r in _quadruple(item)]
    _check_built(records)
    return records


def write_dataset(records: list[dict[str, Any]], path: str | Path) -> None:
    """Write records as JSONL, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def _check_optional(rec: dict[str, Any], where: str) -> None:
    """Check the optional ``frame`` and ``register`` fields."""
    if "frame" in rec and (not isinstance(rec["frame"], str) or not rec["frame"]):
        raise DatasetError(f"{where}: frame must be a non-empty string, not {rec['frame']!r}")
    if "register" in rec and (not isinstance(rec["register"], str) or rec["register"] not in REGISTERS):
        raise DatasetError(f"{where}: unknown register {rec['register']!r}; expected one of {REGISTERS}")


def _check_implicit(rows: list[tuple[str, dict[str, Any]]], cues: Mapping[str, re.Pattern[str]]) -> None:
    """No implicit text holds one of the ``cues`` (:func:`emotion_cues`)."""
    for where, rec in rows:
        hits = cue_hits(rec["text"], cues) if rec.get("register") == "implicit" else []
        if hits:
            kind = "formula" if cues is _CUES and hits[0] in FORMULAE else "stem"
            raise DatasetError(f"{where}: implicit text contains the emotion {kind} {hits[0]!r} "
                               f"(pattern {cues[hits[0]].pattern}); reword it or mark the record explicit")


def check_emotions(path: str | Path, declared: Mapping[str, str], expected: Iterable[str]) -> None:
    """Raise DatasetError unless the dataset's emotions (``declared``: each with the file:line it first appears at)
    are exactly ``expected`` (``readout.labels``); the message names the file, a label the run lacks, and both sets."""
    expected = set(expected)
    if set(declared) == expected:
        return
    stray = next((e for e in declared if e not in expected), None)
    where = f"{path}: " if stray is None else f"{declared[stray]}: unknown emotion label {stray!r}; "
    raise DatasetError(f"{where}the dataset's emotions {sorted(declared)} differ from readout.labels' "
                       f"{sorted(expected)}")


def declared_emotions(path: str | Path) -> dict[str, str]:
    """A quick scan of a dataset JSONL: each emotion label with the file:line it first appears at (lines that do not
    read as records are skipped, and a file that cannot be read declares none: :func:`load_dataset` names them)."""
    found: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return found
    for lineno, line in enumerate(lines, start=1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("emotion"), str):
            found.setdefault(rec["emotion"], f"{path}:{lineno}")
    return found


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every record of a dataset JSONL with its file:line, each checked alone: JSON, fields, types, unique ids and
    texts."""
    if not path.exists():
        raise DatasetError(f"{path}: dataset file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheet exports) is dropped
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}); a dataset is JSONL, one object a line") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror})") from None
    rows, seen_ids, seen_texts = [], set(), set()
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
        for f in ("id", "item_id", "emotion"):
            if not isinstance(rec[f], str) or not rec[f]:
                raise DatasetError(f"{where}: {f} must be a non-empty string, not {rec[f]!r}")
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            raise DatasetError(f"{where}: text must be a non-empty string, not {rec['text']!r}")
        _check_optional(rec, where)
        if rec["id"] in seen_ids:
            raise DatasetError(f"{where}: duplicate id {rec['id']!r}")
        if rec["text"] in seen_texts:
            raise DatasetError(f"{where}: duplicate text {rec['text']!r}")
        seen_ids.add(rec["id"])
        seen_texts.add(rec["text"])
        rows.append((where, rec))
    if not rows:
        raise DatasetError(f"{path}: no prompts in the file")
    return rows


def load_dataset(path: str | Path, emotions: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Read and check a dataset JSONL: fields, labels, unique ids and texts, balanced classes, implicit texts
    free of emotion cues. ``emotions``: the run's (``readout.labels``: its words give the cues of a set other
    than the built-in four), which the dataset's labels must be exactly; None: the dataset's own, two or more."""
    path = Path(path)
    rows = _read_rows(path)
    declared: dict[str, str] = {}
    for where, rec in rows:
        declared.setdefault(rec["emotion"], where)
    emotions = emotion_order(declared) if emotions is None else emotions
    emotions = emotions if isinstance(emotions, Mapping) else tuple(emotions)
    check_emotions(path, declared, emotions)
    if len(declared) < 2:
        raise DatasetError(f"{path}: one emotion label only ({list(declared)}); a dataset needs two or more")
    counts = Counter(rec["emotion"] for _, rec in rows)
    if len(set(counts.values())) != 1:
        raise DatasetError(f"{path}: unbalanced classes {({e: counts[e] for e in emotion_order(declared)})}; "
                           f"every emotion needs the same count")
    _check_implicit(rows, emotion_cues(emotions))
    return [rec for _, rec in rows]


def permuted(records: list[dict[str, Any]], by: str, seed: int) -> list[dict[str, Any]]:
    """A null dataset: the same texts with their emotion labels permuted ``by`` "frame" (one permutation of
    the emotions per frame, applied to all its items: templates move with the labels) or "item" (each item
    on its own). Nothing about the texts then predicts a label beyond chance, so every emotion test must
    find nothing on it."""
    groups = frame_groups(records) if by == "frame" else [r["item_id"] for r in records]
    emotions = emotion_order(r["emotion"] for r in records)
    codes = np.array([emotions.index(r["emotion"]) for r in records])
    new = frame_label_permutations(codes, groups, 1, len(emotions), np.random.default_rng(seed))[0]
    return [r | {"emotion": emotions[c]} for r, c in zip(records, new, strict=True)]


def run(out: str | Path, permute: str | None = None, source: str | Path | None = None, seed: int = 0,
        n_items: int = N_ITEMS, emotions: Iterable[str] | None = None) -> None:
    """Build the dataset of ``n_items`` items (or load ``source``, of ``emotions`` if given), permute its labels
    by ``permute`` if given, write it to ``out``."""
    records = load_dataset(source, emotions) if source else build_dataset(n_items)
    write_dataset(permuted(records, permute, seed) if permute else records, out)
