"""The dataset card and the surface features it rests on: exact counts on known texts, and a card that tells a
minimal dataset from a leaky one."""

import json

import pytest

from emolens import EMOTIONS
from emolens.cli import main
from emolens.data.card import describe, edit_distance, render
from emolens.data.dataset import build_dataset
from emolens.data.surface import counts, length_match, words


def test_counts_on_a_known_text():
    text = "Sam, I didn't see you at six o'clock on Monday; did you wait for me? No!"
    assert words(text)[:4] == ["sam", "i", "didn't", "see"]
    assert counts(text) == {"words": 16, "first_person": 2, "second_person": 2, "negation": 2, "time_words": 3,
                            "commas": 1, "question_marks": 1, "exclamation_marks": 1}


def test_edit_distance_counts_word_edits():
    assert edit_distance("you took the heavy end".split(), "you dropped the heavy end".split()) == 1
    assert edit_distance("a b c".split(), "c b a".split()) == 2
    assert edit_distance([], "a b".split()) == 2 and edit_distance("a".split(), "a".split()) == 0


def test_length_match():
    match = length_match([5, 5, 6, 5, 3, 7, 5, 5], ["a"] * 4 + ["b"] * 4)
    assert match["beyond"] == {"b": [3, 7, 5, 5]} and match["items_within_one"] == 0.5
    assert match["equal_pairs"] == pytest.approx((3 + 1) / 12)


def _leaky(records):
    """v2's cue, planted: neutral texts longer and full of times."""
    return [r | {"text": r["text"] + " See you at six tonight."} if r["emotion"] == "neutral" else r for r in records]


@pytest.mark.slow  # about 13 s: the lexical and surface baselines on 900 prompts, twice
def test_the_card_of_the_built_dataset_and_of_a_leaky_one():
    records = build_dataset()
    card = describe(records)
    assert card["n_prompts"] == 900 and card["n_frames"] == 64 and card["implicit_with_cues"] == 0
    assert card["words"]["items_within_one"] == 1.0
    assert max(card["surface_accuracy"].values()) <= 0.35
    for register in ("explicit", "implicit"):
        assert card["registers"][register]["frames"] == {e: 32 for e in EMOTIONS}
        assert card["registers"][register]["largest_difference"]["first_person"] < 0.1
    assert all(d < 0.45 for d in card["edit_distance"].values()), card["edit_distance"]
    leaky = describe(_leaky(records))
    assert leaky["words"]["items_within_one"] < 0.5 and leaky["surface_accuracy"]["all"] > 0.45
    assert leaky["registers"]["explicit"]["largest_difference"]["time_words"] > 0.9
    text = render(card)
    assert "surface baseline, frames held out: all" in text and "| implicit: words |" in text


@pytest.mark.slow  # about 10 s
def test_describe_command_prints_and_writes_the_card(tmp_path, capsys):
    out = tmp_path / "card.json"
    assert main(["dataset", "describe", "--out", str(out)]) == 0
    card = json.loads(out.read_text())
    assert card["schema"] == "emolens.dataset_card/1" and "organism BPE (2048)" in card["tokens"]
    assert "pairs of equal token length" in capsys.readouterr().out
