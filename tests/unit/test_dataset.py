"""Phase 1: the dataset contract (v3: minimal quadruples, frames, registers, stems and formulae) and the checks on a
user's JSONL."""

import json
from collections import Counter, defaultdict

import pytest

from emolens import EMOTIONS
from emolens.data.dataset import (
    MAX_SURFACE_ACCURACY,
    REGISTERS,
    DatasetError,
    _check_built,
    build_dataset,
    cue_hits,
    emotion_cues,
    load_dataset,
    stem,
    surface_accuracy,
    write_dataset,
)
from emolens.data.readout import LABEL_WORDS
from emolens.data.surface import length_match, words
from emolens.stats.resampling import frame_groups

FIELDS = {"id", "emotion", "text", "item_id", "frame", "register"}


def _quadruples(records):
    quads = defaultdict(list)
    for r in records:
        quads[r["item_id"]].append(r)
    return quads


def test_dataset_contract(tmp_path):
    records = build_dataset()
    assert len(records) == 900
    assert Counter(r["emotion"] for r in records) == {e: 225 for e in EMOTIONS}
    assert len({r["text"] for r in records}) == 900
    assert len({r["id"] for r in records}) == 900
    assert all(set(r) == FIELDS for r in records)
    quads = _quadruples(records)
    assert sorted(quads) == [f"i{k:03d}" for k in range(225)]
    for item, quad in quads.items():
        assert [r["emotion"] for r in quad] == list(EMOTIONS)
        assert [r["id"] for r in quad] == [f"{item}_{e}" for e in EMOTIONS]
        assert len({r["frame"] for r in quad}) == 1 and len({r["register"] for r in quad}) == 1
    assert [r["item_id"] for r in records] == sorted(r["item_id"] for r in records)
    assert max(len(r["text"]) for r in records) <= 160
    path = tmp_path / "d.jsonl"
    write_dataset(records, path)
    assert load_dataset(path) == records
    bom = tmp_path / "bom.jsonl"  # saved by a spreadsheet: UTF-8 with a byte-order mark
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_dataset(bom) == records


def test_frames_are_many_and_balanced():
    records = build_dataset()
    for emotion in EMOTIONS:
        assert len({r["frame"] for r in records if r["emotion"] == emotion}) >= 64
    per_frame = defaultdict(Counter)
    for r in records:
        per_frame[r["frame"]][r["emotion"]] += 1
    for counts in per_frame.values():
        assert len({counts[e] for e in EMOTIONS}) == 1 and counts[EMOTIONS[0]] >= 2
    registers = {}
    for r in records:
        assert registers.setdefault(r["frame"], r["register"]) == r["register"], "register belongs to the frame"
    assert Counter(registers.values()) == {"explicit": 32, "implicit": 32}


def test_registers_half_and_half():
    records = build_dataset()
    per_item = Counter(quad[0]["register"] for quad in _quadruples(records).values())
    assert set(per_item) == set(REGISTERS) and abs(per_item["explicit"] - per_item["implicit"]) <= 1
    assert Counter(r["register"] for r in records) == {"explicit": 452, "implicit": 448}


def test_implicit_texts_have_no_stem_or_formula_and_explicit_ones_name_the_emotion():
    records = build_dataset()
    implicit = [r["text"] for r in records if r["register"] == "implicit"]
    assert [t for t in implicit if cue_hits(t)] == []
    cued = [r["text"] for r in records if r["register"] == "explicit" and r["emotion"] != "neutral"]
    assert all(cue_hits(t) for t in cued)
    assert [r["text"] for r in records if r["emotion"] == "neutral" and cue_hits(r["text"])] == []


def test_cue_hits_find_stems_and_formulae():
    assert cue_hits("I am so sorry") == ["sorry"]
    assert cue_hits("Thanks, and I APOLOGISE.") == ["thank", "apolog"]
    assert cue_hits("It makes me mad") == ["mad"]
    assert cue_hits("Angry words") == ["ang"]
    assert cue_hits("She made a trip to Madrid on a nomadic whim") == []
    assert cue_hits("The triangle and the ingrate") == []
    assert cue_hits("Unbelievable. I owe you one.") == ["unbelievable", "owe you"]
    assert cue_hits("You should have asked; it will not happen again.") == ["should have", "happen again"]
    assert cue_hits("How dare you") == ["how dare"] and cue_hits("Cheers, mate") == ["cheers"]
    assert cue_hits("The shower head was owed for repair") == []


def test_the_four_texts_of_an_item_are_minimal_and_matched_in_length():
    records = build_dataset()
    items = [r["item_id"] for r in records]
    assert length_match([len(words(r["text"])) for r in records], items)["items_within_one"] == 1.0
    for quad in _quadruples(records).values():  # one scenario sentence, then one clause per emotion
        first = {r["text"].split(". ")[0] for r in quad}
        assert len(first) == 1, first


def test_token_lengths_match_under_every_organism_tokenizer():
    """The demo organisms' tokenizers (byte-level BPE trained on the dataset, one per vocab size the demo uses)."""
    import yaml

    from emolens.data.surface import token_counts
    from emolens.model.organisms import train_tokenizer
    from emolens.model.tiny import ORGANISM_VOCAB

    demo = yaml.safe_load(open("config/demo.yaml"))
    sizes = {m.get("organism", {}).get("vocab_size", ORGANISM_VOCAB) for m in demo["models"].values()}
    records = build_dataset()
    texts = [r["text"] for r in records]
    for size in sorted(sizes):
        match = length_match(token_counts(texts, train_tokenizer(texts, vocab_size=size)),
                             [r["item_id"] for r in records])
        print(f"\nvocab {size}: equal token length in {match['equal_pairs']:.3f} of pairs")
        assert match["beyond"] == {} and match["equal_pairs"] >= 0.9, (size, match)


def test_surface_baseline_stays_near_chance_and_the_gate_can_fail():
    records = build_dataset()
    accuracy = surface_accuracy(records)
    assert set(accuracy) == {"all", *REGISTERS} and max(accuracy.values()) <= MAX_SURFACE_ACCURACY, accuracy
    leaky = [r | {"text": r["text"][:-1] + " today."} if r["emotion"] == "neutral" else r
             for r in records]  # neutral one word longer, with a time word: the audit's v2 cue, planted within +-1
    assert surface_accuracy(leaky)["all"] > 0.45
    with pytest.raises(DatasetError, match="surface baseline"):
        _check_built(leaky)


def test_more_items_on_request():
    records = build_dataset(n_items=400)
    assert len(records) == 1600 and len({r["text"] for r in records}) == 1600


def _write(path, records, raw_line=None):
    lines = [json.dumps(r) for r in records]
    if raw_line is not None:
        lines.insert(2, raw_line)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("added, message", [(" I am so sorry.", "emotion stem 'sorry'"),
                                            (" It will not happen again.", "emotion formula 'happen again'")])
def test_planted_stem_or_formula_in_implicit_record_rejected(tmp_path, added, message):
    records = build_dataset()[:8]
    assert records[6]["register"] == "implicit" and records[6]["emotion"] == "apology"
    records[6] = {**records[6], "text": records[6]["text"] + added}
    path = tmp_path / "my.jsonl"
    _write(path, records)
    with pytest.raises(DatasetError, match=rf"{path}:7: implicit text contains the {message}"):
        load_dataset(path)
    records[6]["register"] = "explicit"  # the same text is fine when it is marked explicit
    _write(path, records)
    assert len(load_dataset(path)) == 8


def test_frame_and_register_are_optional(tmp_path):
    records = [{k: r[k] for k in ("id", "emotion", "text", "item_id")} for r in build_dataset()[:8]]
    path = tmp_path / "plain.jsonl"
    _write(path, records)
    loaded = load_dataset(path)
    assert loaded == records
    assert frame_groups(loaded) == ["i000"] * 4 + ["i001"] * 4
    built = build_dataset()[:8]
    assert frame_groups(built) == [r["frame"] for r in built] == ["x00"] * 4 + ["m00"] * 4
    mixed = [built[0], records[1]]
    assert frame_groups(mixed) == ["x00", "i000"]


def test_build_is_deterministic(tmp_path):
    write_dataset(build_dataset(), tmp_path / "a.jsonl")
    write_dataset(build_dataset(), tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda rs: rs.__setitem__(5, {**rs[5], "emotion": "joy"}), ":6: unknown emotion label 'joy'"),
    (lambda rs: rs.pop(), "unbalanced classes"),
    (lambda rs: rs.__setitem__(1, {**rs[1], "text": rs[0]["text"]}), ":2: duplicate text"),
    (lambda rs: rs[3].pop("item_id"), ":4: missing field(s) ['item_id']"),
    (lambda rs: rs.__setitem__(4, {**rs[4], "register": "subtle"}), ":5: unknown register 'subtle'"),
    (lambda rs: rs.__setitem__(2, {**rs[2], "frame": ""}), ":3: frame must be a non-empty string"),
    (lambda rs: rs.__setitem__(7, {**rs[7], "text": "Neutral note: nothing to add."}),
     ":8: implicit text contains the emotion stem 'neutral'"),
])
def test_bad_dataset_named(tmp_path, mutate, message):
    records = build_dataset()[:8]
    mutate(records)
    path = tmp_path / "bad.jsonl"
    _write(path, records)
    with pytest.raises(DatasetError, match=f"{path}.*" if message.startswith(":") else message) as e:
        load_dataset(path, EMOTIONS)  # the run's emotions: the default readout's
    assert message in str(e.value)


def test_malformed_line_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write(path, build_dataset()[:8], raw_line='{"id": "x", ')
    with pytest.raises(DatasetError, match=rf"{path}:3: not valid JSON"):
        load_dataset(path)


def test_permuted_dataset_moves_labels_by_frame_or_within_items():
    from emolens.data.dataset import build_dataset, permuted

    records = build_dataset()
    for by in ("frame", "item"):
        null = permuted(records, by, seed=0)
        assert [r["text"] for r in null] == [r["text"] for r in records]  # the texts stay, the labels move
        moved = sum(a["emotion"] != b["emotion"] for a, b in zip(records, null, strict=True))
        assert 450 < moved < 900
        for item in {r["item_id"] for r in records}:  # every item keeps one prompt per emotion
            assert sorted(r["emotion"] for r in null if r["item_id"] == item) == sorted(EMOTIONS)
    by_frame = permuted(records, "frame", seed=0)
    mapping: dict[tuple[str, str], str] = {}
    for old, new in zip(records, by_frame, strict=True):  # one permutation per frame, all its items alike
        assert mapping.setdefault((old["frame"], old["emotion"]), new["emotion"]) == new["emotion"]


# --- any label set: the dataset's emotions are the run's ---------------------------------------------------
def _relabelled(records, names):
    """The built-in records with the built-in four renamed (gratitude -> names[0], ...), the texts kept."""
    rename = dict(zip(EMOTIONS, names, strict=True))
    return [{**r, "emotion": rename[r["emotion"]], "id": f"{r['item_id']}_{rename[r['emotion']]}"} for r in records]


def _synthetic(names, n_items=6):
    """A small dataset of any emotions: n_items items, one explicit text per emotion each, plain words."""
    return [{"id": f"i{i}_{e}", "emotion": e, "text": f"Item {i} is about the {e} of person {i}.", "item_id": f"i{i}",
             "register": "explicit"} for i in range(n_items) for e in names]


def test_a_dataset_whose_emotions_differ_from_the_readouts_is_refused_naming_both_sets(tmp_path):
    path = tmp_path / "data.jsonl"
    write_dataset(_synthetic(["joy", "sadness", "fear"]), path)
    with pytest.raises(DatasetError) as e:
        load_dataset(path, EMOTIONS)
    assert str(e.value) == (f"{path}:1: unknown emotion label 'joy'; the dataset's emotions ['fear', 'joy', 'sadness'] "
                            "differ from readout.labels' ['anger', 'apology', 'gratitude', 'neutral']")
    with pytest.raises(DatasetError) as e:  # a missing emotion: no stray label, both sets named
        load_dataset(path, {"joy": " joy", "sadness": " sad", "fear": " fear", "calm": " calm"})
    assert str(e.value) == (f"{path}: the dataset's emotions ['fear', 'joy', 'sadness'] differ from readout.labels' "
                            "['calm', 'fear', 'joy', 'sadness']")
    assert len(load_dataset(path, {"fear": " fear", "joy": " joy", "sadness": " sad"})) == 18  # the same set: any order
    assert len(load_dataset(path)) == 18  # no readout given: the dataset's own emotions


@pytest.mark.parametrize("names", [("joy", "sadness"), ("joy", "sadness", "fear"),
                                   ("trust", "joy", "fear", "surprise", "sadness", "disgust", "anger", "anticipation")])
def test_two_to_eight_emotions_load_balanced_and_unbalanced_ones_are_refused(tmp_path, names):
    path = tmp_path / "data.jsonl"
    records = _synthetic(names)
    write_dataset(records, path)
    assert load_dataset(path, {e: f" {e}" for e in names}) == records
    write_dataset(records[:-1], path)
    with pytest.raises(DatasetError, match=rf"{path}: unbalanced classes .*'{names[-1]}': 5"):
        load_dataset(path, names)


def test_one_emotion_is_no_dataset(tmp_path):
    path = tmp_path / "data.jsonl"
    write_dataset(_synthetic(["joy"]), path)
    with pytest.raises(DatasetError, match="one emotion label only"):
        load_dataset(path)


def test_implicit_texts_of_other_emotions_are_checked_against_their_label_words_stems(tmp_path):
    assert [stem(w) for w in (" Sadness", "fear", " surprise", " anticipation", " joy")] == \
        ["sad", "fear", "surpris", "anticip", "joy"]
    labels = {"joy": " happy", "sadness": " sadness"}
    cues = emotion_cues(labels)
    assert sorted(cues) == ["happy", "joy", "sad"]  # the names' and the label words' stems
    assert cue_hits("She was sad all day", cues) == ["sad"] and cue_hits("He was happy", cues) == ["happy"]
    assert cue_hits("I am so sorry", cues) == []  # the built-in stems belong to the built-in four
    assert emotion_cues(EMOTIONS) == emotion_cues(LABEL_WORDS) and cue_hits("I am so sorry", emotion_cues(EMOTIONS))
    records = _synthetic(["joy", "sadness"], n_items=2)
    records[3] = {**records[3], "register": "implicit", "text": "The rain kept falling; she sat there, saddened."}
    path = tmp_path / "data.jsonl"
    write_dataset(records, path)
    with pytest.raises(DatasetError, match=rf"{path}:4: implicit text contains the emotion stem 'sad'"):
        load_dataset(path, labels)
    records[3]["text"] = "The rain kept falling; she sat there, sorry and alone."  # a built-in stem: fine here
    write_dataset(records, path)
    assert len(load_dataset(path, labels)) == 4


def test_the_built_in_texts_under_other_names_are_another_runs_dataset(tmp_path):
    path = tmp_path / "data.jsonl"
    write_dataset(_relabelled(build_dataset(n_items=8), ["thanks", "rage", "regret", "calm"]), path)
    records = load_dataset(path, {"thanks": " thanks", "rage": " rage", "regret": " regret", "calm": " calm"})
    assert Counter(r["emotion"] for r in records) == {"thanks": 8, "rage": 8, "regret": 8, "calm": 8}
