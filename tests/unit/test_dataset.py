"""Phase 1: the dataset contract and the checks on a user's JSONL."""

import json
from collections import Counter

import pytest

from emolens import EMOTIONS
from emolens.dataset import DatasetError, build_dataset, load_dataset, write_dataset


def test_dataset_contract(tmp_path):
    records = build_dataset()
    assert len(records) == 900
    assert Counter(r["emotion"] for r in records) == {e: 225 for e in EMOTIONS}
    assert len({r["text"] for r in records}) == 900
    assert len({r["id"] for r in records}) == 900
    items = Counter(r["item_id"] for r in records)
    assert len(items) == 225 and set(items.values()) == {4}
    for item in {r["item_id"] for r in records}:
        quad = [r for r in records if r["item_id"] == item]
        assert sorted(r["emotion"] for r in quad) == sorted(EMOTIONS)
        assert len({r["template"] for r in quad}) == 1
    path = tmp_path / "d.jsonl"
    write_dataset(records, path)
    assert load_dataset(path) == records


def test_build_is_deterministic(tmp_path):
    write_dataset(build_dataset(), tmp_path / "a.jsonl")
    write_dataset(build_dataset(), tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def _write(path, records, raw_line=None):
    lines = [json.dumps(r) for r in records]
    if raw_line is not None:
        lines.insert(2, raw_line)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("mutate, message", [
    (lambda rs: rs.__setitem__(5, {**rs[5], "emotion": "joy"}), ":6: unknown emotion label 'joy'"),
    (lambda rs: rs.pop(), "unbalanced classes"),
    (lambda rs: rs.__setitem__(1, {**rs[1], "text": rs[0]["text"]}), ":2: duplicate text"),
    (lambda rs: rs[3].pop("item_id"), ":4: missing field(s) ['item_id']"),
])
def test_bad_dataset_named(tmp_path, mutate, message):
    records = build_dataset()[:8]
    mutate(records)
    path = tmp_path / "bad.jsonl"
    _write(path, records)
    with pytest.raises(DatasetError, match=f"{path}.*" if message.startswith(":") else message) as e:
        load_dataset(path)
    assert message in str(e.value)


def test_malformed_line_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write(path, build_dataset()[:8], raw_line='{"id": "x", ')
    with pytest.raises(DatasetError, match=rf"{path}:3: not valid JSON"):
        load_dataset(path)
