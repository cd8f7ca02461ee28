"""The check before a model's long jobs: prompts within the context, then the adapter's identities on its weights."""

from __future__ import annotations

import json

import pytest

from emolens import equivalence
from emolens.config import ModelLoadError
from emolens.dataset import DatasetError, build_dataset
from emolens.models import load_model


def _write(records: list[dict], path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def dataset(tmp_path) -> str:
    return _write(build_dataset()[:8], tmp_path / "data.jsonl")


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_a_model_whose_identities_hold_passes_with_its_numbers(tiny_checkpoints, dataset, tmp_path, family):
    out = tmp_path / "eq.json"
    equivalence.run({"path": str(tiny_checkpoints[family])}, dataset, out, name=family, device="cpu")
    found = json.loads(out.read_text())
    assert all(v <= 1e-4 for v in found["max_difference"].values()), found
    assert found["prompts"] == ["i000_gratitude", "i000_anger"] and found["longest_prompt"] <= found["context"]


def test_a_readout_the_adapter_gets_wrong_stops_the_run_with_the_numbers(tiny_checkpoints, dataset, tmp_path,
                                                                         monkeypatch):
    def misread(settings, name, device):  # a logit transform the adapter does not know about
        adapter = load_model(settings, name=name, device=device)
        adapter.logit_multiplier = 2.0
        return adapter

    monkeypatch.setattr(equivalence, "load_model", misread)
    with pytest.raises(ModelLoadError, match=r"models.m: the adapter's identities fail on its own weights \(readout "
                                             r"differs by [0-9.e+-]+ > 0.0001"):
        equivalence.run({"path": str(tiny_checkpoints["llama"])}, dataset, tmp_path / "eq.json", name="m",
                        device="cpu")
    assert not (tmp_path / "eq.json").exists()


def test_a_prompt_longer_than_the_context_is_refused_with_its_line_tokens_and_limit(tiny_checkpoints, tmp_path):
    records = build_dataset()[:8]
    records[5]["text"] = " ".join(["We met at the station on Monday and talked for a while."] * 30)
    path = _write(records, tmp_path / "long.jsonl")
    with pytest.raises(DatasetError) as e:
        equivalence.run({"path": str(tiny_checkpoints["gpt2"])}, path, tmp_path / "eq.json", name="gpt2",
                        device="cpu")
    assert str(e.value).startswith(f"{path}:6: prompt 'i001_anger' is ")
    assert "tokens (prefix + text + suffix), longer than models.gpt2's context of 128 (max_position_embeddings)" \
        in str(e.value)
    assert not (tmp_path / "eq.json").exists()
