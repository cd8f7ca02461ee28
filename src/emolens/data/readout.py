"""The readout task every phase shares: a prompt around each message, and one label token per emotion.

A :class:`Readout` is the config's ``readout`` section: a prompt is ``prefix + message + suffix``
(the prefix may hold a few-shot demonstration; empty by default), and the model's answer is read at
the last position as the logits of the label words (each with its leading space). ``labels`` maps each
emotion of the run to its word: its keys are the run's emotions (any two or more; the built-in four
by default), kept in :func:`emolens.emotion_order`, and a dataset must hold exactly these emotions. A
label word must be exactly one token in the model's tokenizer, and the tokens must differ:
:meth:`Readout.label_token_ids` refuses anything else (a word that splits would otherwise be scored
by its first piece, which other words may share); two emotions with one word are refused as soon as the section
is read (:func:`emolens.config.label_clash`). :data:`DEFAULT` is the readout of the defaults;
the module functions :func:`prompt` and :func:`label_token_ids` apply it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emolens import EMOTIONS, emotion_order
from emolens.config import label_clash

READOUT_SUFFIX = "\nThe emotion of this message is"
LABEL_WORDS: dict[str, str] = {e: " " + e for e in EMOTIONS}
KEYS = ("suffix", "prefix", "labels")


@dataclass(frozen=True)
class Readout:
    """How a message becomes a prompt (``prefix + text + suffix``) and which word names each emotion."""

    suffix: str = READOUT_SUFFIX
    prefix: str = ""
    labels: dict[str, str] = field(default_factory=lambda: dict(LABEL_WORDS))  # {emotion: label word}

    def __post_init__(self) -> None:
        if not isinstance(self.suffix, str) or not isinstance(self.prefix, str):
            raise ValueError(f"readout.suffix and readout.prefix must be strings, got {self.suffix!r}, {self.prefix!r}")
        if not isinstance(self.labels, Mapping) or len(self.labels) < 2:
            raise ValueError(f"readout.labels must name two emotions or more, each with its label word "
                             f"{{emotion: word}}, got {self.labels!r}")
        for emotion, word in self.labels.items():
            if not isinstance(emotion, str) or not emotion.strip():
                raise ValueError(f"readout.labels: an emotion must be a non-empty name, got {emotion!r}")
            if not isinstance(word, str) or not word:
                raise ValueError(f"readout.labels.{emotion} must be a non-empty string, got {word!r}")
        clash = label_clash(self.labels)
        if clash:
            raise ValueError(clash)
        object.__setattr__(self, "labels", {e: self.labels[e] for e in emotion_order(self.labels)})  # own copy

    def __hash__(self) -> int:  # the labels dict is never changed after construction
        return hash((self.suffix, self.prefix, tuple(self.labels.items())))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> Readout:
        """The config's ``readout`` section (any key left out keeps its default; labels given replace the
        default four whole: they are the run's emotions)."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(KEYS))
        if unknown:
            raise ValueError(f"readout: unknown key(s) {unknown}; expected some of {list(KEYS)}")
        labels = section.get("labels") or LABEL_WORDS
        if not isinstance(labels, Mapping):
            raise ValueError(f"readout.labels must be an object {{emotion: word}}, got {labels!r}")
        return cls(suffix=section.get("suffix", READOUT_SUFFIX), prefix=section.get("prefix", ""), labels=dict(labels))

    @property
    def emotions(self) -> tuple[str, ...]:
        """The run's emotions, in the order of every vector, matrix and file."""
        return tuple(self.labels)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as the config section (``Readout.from_config(r.as_dict()) == r``)."""
        return {"suffix": self.suffix, "prefix": self.prefix, "labels": dict(self.labels)}

    def prompt(self, text: str) -> str:
        """The readout prompt for one message: prefix, text, suffix."""
        return self.prefix + text + self.suffix

    def chat_prompt(self, text: str, tokenizer: Any) -> str:
        """The readout prompt as an instruct model's conversation: ``prefix + text`` is the user's turn and the
        suffix (leading whitespace dropped) opens the assistant's answer, so the label word comes next as in
        :meth:`prompt`. The tokenizer's chat template writes the turns (and its own special tokens)."""
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template, so the readout cannot be wrapped in one")
        turn = tokenizer.apply_chat_template([{"role": "user", "content": self.prefix + text}],
                                             add_generation_prompt=True, tokenize=False)
        return turn + self.suffix.lstrip()

    def label_token_ids(self, tokenizer: Any) -> dict[str, int]:
        """{emotion: token id} of each label word; a ValueError if a word is not one token or two share one."""
        ids = {}
        for emotion, word in self.labels.items():
            tokens = list(tokenizer.encode(word, add_special_tokens=False))
            if len(tokens) != 1:
                raise ValueError(
                    f"readout.labels.{emotion} = {word!r} is {len(tokens)} tokens in this tokenizer "
                    f"({_pieces(tokenizer, tokens)}), and a label must be scored as one token: set "
                    f"readout.labels.{emotion} to a word that is one token in this tokenizer")
            ids[emotion] = int(tokens[0])
        by_id: dict[int, list[str]] = {}
        for emotion, tid in ids.items():
            by_id.setdefault(tid, []).append(emotion)
        shared = {tid: es for tid, es in by_id.items() if len(es) > 1}
        if shared:
            which = "; ".join(f"{es} -> {_pieces(tokenizer, [tid])}" for tid, es in shared.items())
            raise ValueError(f"readout labels share a token, so the readout cannot tell them apart ({which}): "
                             f"set readout.labels so that each emotion has its own one-token word")
        return ids


def _pieces(tokenizer: Any, tokens: list[int]) -> str:
    """The tokens as readable strings, for error messages."""
    decode = getattr(tokenizer, "decode", None)
    try:
        pieces = [decode([t]) for t in tokens] if decode else tokenizer.convert_ids_to_tokens(tokens)
    except Exception:  # noqa: BLE001 - a message helper never hides the real error
        pieces = tokens
    return " + ".join(repr(p) for p in pieces) if pieces else "no tokens"


DEFAULT = Readout()


def prompt(text: str) -> str:
    """The default readout prompt for one message: the text, then the default suffix."""
    return DEFAULT.prompt(text)


def label_token_ids(tokenizer: Any) -> dict[str, int]:
    """The default label words' token ids (see :meth:`Readout.label_token_ids`)."""
    return DEFAULT.label_token_ids(tokenizer)
