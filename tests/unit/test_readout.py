"""The readout: prompts from the config, and the rule that every label word is exactly one distinct token."""

import argparse

import pytest

from emolens import EMOTIONS, emotion_order
from emolens.data.readout import DEFAULT, LABEL_WORDS, READOUT_SUFFIX, Readout, label_token_ids, prompt
from emolens.options import _readout, build_parser


def test_defaults_and_prompt():
    r = Readout()
    assert r == DEFAULT and hash(r) == hash(Readout())
    assert r.labels == LABEL_WORDS and list(r.labels) == list(EMOTIONS)
    assert r.prompt("Hi.") == prompt("Hi.") == "Hi." + READOUT_SUFFIX
    few_shot = Readout(prefix="Thanks!\nThe emotion of this message is gratitude\n\n", suffix="\nEmotion:")
    assert few_shot.prompt("Hi.") == "Thanks!\nThe emotion of this message is gratitude\n\nHi.\nEmotion:"


def test_config_round_trip_and_labels():
    r = Readout.from_config({"prefix": "P ", "labels": {**LABEL_WORDS, "anger": " rage"}})
    assert r.suffix == READOUT_SUFFIX and r.prefix == "P "
    assert r.labels == {**LABEL_WORDS, "anger": " rage"}
    assert Readout.from_config(r.as_dict()) == r and Readout.from_config(None) == DEFAULT
    assert r.as_dict() == {"suffix": READOUT_SUFFIX, "prefix": "P ", "labels": {**LABEL_WORDS, "anger": " rage"}}


@pytest.mark.parametrize("labels", [
    {"sadness": " sad", "joy": " happy"},
    {e: f" {e}" for e in ("trust", "joy", "fear", "surprise", "sadness", "disgust", "anger", "anticipation")},
])
def test_any_label_set_of_two_or_more_replaces_the_default_four(labels):
    r = Readout.from_config({"labels": labels})
    assert set(r.emotions) == set(labels) and len(r.emotions) == len(labels)  # replaced whole, never merged
    assert r.emotions == emotion_order(labels) and r.labels == {e: labels[e] for e in r.emotions}
    assert Readout.from_config(r.as_dict()) == r
    assert Readout.from_config({"labels": dict(reversed(labels.items()))}) == r  # the order is the set's own
    if "anger" in labels:  # a built-in emotion comes first, the others alphabetically
        assert r.emotions[0] == "anger" and list(r.emotions[1:]) == sorted(set(labels) - {"anger"})


@pytest.mark.parametrize("section, match", [
    ({"sufix": "x"}, r"unknown key\(s\) \['sufix'\]"),
    ({"labels": {"joy": " joy"}}, r"readout\.labels must name two emotions or more.*'joy'"),
    ({"labels": {"joy": " joy", "": " x"}}, r"an emotion must be a non-empty name, got ''"),
    ({"labels": [" joy", " fear"]}, r"readout\.labels must be an object"),
    ({"labels": {**LABEL_WORDS, "anger": ""}}, r"readout\.labels\.anger must be a non-empty string"),
])
def test_bad_sections_are_named(section, match):
    with pytest.raises(ValueError, match=match):
        Readout.from_config(section)


def test_default_labels_are_single_tokens(tokenizer):
    ids = DEFAULT.label_token_ids(tokenizer)
    assert ids == label_token_ids(tokenizer) and list(ids) == list(EMOTIONS) and len(set(ids.values())) == 4
    for emotion, word in LABEL_WORDS.items():
        assert tokenizer.encode(word, add_special_tokens=False) == [ids[emotion]]


def test_label_that_splits_is_refused_with_its_pieces(tokenizer):
    word = " xqzgratitudez"
    pieces = [tokenizer.decode([t]) for t in tokenizer.encode(word, add_special_tokens=False)]
    assert len(pieces) > 1
    r = Readout.from_config({"labels": {**LABEL_WORDS, "gratitude": word}})
    with pytest.raises(ValueError) as err:
        r.label_token_ids(tokenizer)
    message = str(err.value)
    assert "readout.labels.gratitude" in message and repr(word) in message
    assert f"{len(pieces)} tokens" in message and " + ".join(map(repr, pieces)) in message
    assert "set readout.labels.gratitude to a word that is one token in this tokenizer" in message


def test_one_word_for_two_emotions_is_refused_when_the_section_is_read():
    with pytest.raises(ValueError, match=r"^readout\.labels: gratitude and anger share the label word ' thanks'; "
                                         r"each emotion needs its own$"):
        Readout.from_config({"labels": {"gratitude": " thanks", "anger": " thanks", "neutral": " neutral"}})
    with pytest.raises(argparse.ArgumentTypeError, match=r"^readout\.labels: gratitude and anger share"):
        _readout('{"labels": {"gratitude": " thanks", "anger": " thanks"}}')


def test_two_words_of_one_token_are_refused():
    class Lowercasing:  # a tokenizer that lowercases first (a normaliser): ' Anger' is the token of ' anger'
        vocab = {w: i for i, w in enumerate(LABEL_WORDS.values())}

        def encode(self, text, add_special_tokens=False):
            return [self.vocab[text.lower()]]

        def decode(self, ids):
            return next(w for w, i in self.vocab.items() if i == ids[0])

    r = Readout.from_config({"labels": {**LABEL_WORDS, "apology": " Anger"}})
    with pytest.raises(ValueError, match=r"share a token.*\['anger', 'apology'\] -> ' anger'"):
        r.label_token_ids(Lowercasing())


def test_fake_tokenizer_without_decode():
    class Pieces:  # every label word splits into two ids
        def encode(self, text, add_special_tokens=False):
            return [7, 8]

        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

    with pytest.raises(ValueError, match=r"2 tokens in this tokenizer \('t7' \+ 't8'\)"):
        DEFAULT.label_token_ids(Pieces())


def test_cli_readout_flag():
    parser = build_parser()
    base = ["--name", "m", "--settings", "{}", "--dataset", "d.jsonl", "--out", "o"]
    for command in ("organism", "activations", "readout", "residual-chunk", "screen-heads", "patch-heads"):
        extra = {"residual-chunk": ["--layers", "0-1"], "patch-heads": ["--screening", "s.json"]}.get(command, [])
        assert parser.parse_args([command, *base, *extra]).readout == DEFAULT
    a = parser.parse_args(["readout", *base, "--readout", '{"suffix": "\\nEmotion:", "labels": {"joy": " joy", '
                                                           '"fear": " fear"}}'])
    assert a.readout == Readout(suffix="\nEmotion:", labels={"joy": " joy", "fear": " fear"})
    with pytest.raises(argparse.ArgumentTypeError, match="not JSON"):
        _readout("{suffix")
    with pytest.raises(argparse.ArgumentTypeError, match="two emotions or more"):
        _readout('{"labels": {"joy": " joy"}}')


def test_organism_tokenizer_makes_the_configured_labels_single_tokens():
    from emolens.data.dataset import build_dataset
    from emolens.model.organisms import train_tokenizer

    r = Readout.from_config({"prefix": "Message: ", "labels": {**LABEL_WORDS, "anger": " wrathfulness"}})
    tok = train_tokenizer([rec["text"] for rec in build_dataset()], readout=r)
    ids = r.label_token_ids(tok)
    assert tok.encode(" wrathfulness", add_special_tokens=False) == [ids["anger"]]
