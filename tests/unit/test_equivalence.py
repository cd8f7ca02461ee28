"""The check before a model's long jobs: prompts within the context, then the adapter's identities on its weights."""

from __future__ import annotations

import json

import pytest

from emolens.config import ModelLoadError
from emolens.data.dataset import DatasetError, build_dataset
from emolens.model.loading import load_model
from emolens.phases import equivalence


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


@pytest.fixture
def outlier_checkpoint(tiny_checkpoints, dataset, tmp_path) -> tuple[str, list[list[int]]]:
    """The tiny Llama with Gemma-3's trouble planted: one residual dimension huge on the tokens that only the run
    prompt's batch-mates hold, so LLM.int8 computes that column in 16 bits whenever one of them shares the batch.
    Returns the checkpoint and the dataset's prompts of the first prompt's length (the run prompt first)."""
    import torch

    from emolens.data.dataset import load_dataset
    from emolens.data.readout import DEFAULT
    from emolens.engine.inputs import tokenize

    adapter = load_model({"path": str(tiny_checkpoints["llama"])}, device="cpu")
    tokens = tokenize(adapter, [r["text"] for r in load_dataset(dataset, DEFAULT.labels)], DEFAULT)
    prompts = [t for t in tokens if len(t) == len(tokens[0])]
    only_mates = sorted(set().union(*map(set, prompts[1:])) - set(prompts[0]))
    assert len(prompts) > 1 and only_mates
    with torch.no_grad():
        adapter.model.get_input_embeddings().weight[only_mates, 0] = 200.0
    adapter.model.save_pretrained(tmp_path / "outlier")
    adapter.tokenizer.save_pretrained(tmp_path / "outlier")
    return str(tmp_path / "outlier"), prompts


def test_llm_int8_moves_with_its_batch_and_weight_only_int8_does_not(outlier_checkpoint):
    path, prompts = outlier_checkpoint
    noise = {q: equivalence.batch_noise(load_model({"path": path, "quantization": q}, device="cpu"), prompts,
                                        [5, 6, 7, 8])
             for q in ("int8", "llm.int8", None)}
    floor = max(noise[None].values())  # float32's round-off
    # the outlier column in 16 bits for the whole batch, and the run prompt's other columns on a finer int8 grid
    assert min(noise["llm.int8"].values()) > 1e-4 and min(noise["llm.int8"].values()) > 100 * floor, noise
    assert max(noise["int8"].values()) < max(1e-6, 10 * floor), noise


def test_llm_int8_passes_within_twice_its_measured_noise_and_says_so(outlier_checkpoint, dataset, tmp_path):
    out = tmp_path / "eq.json"
    equivalence.run({"path": outlier_checkpoint[0], "quantization": "llm.int8"}, dataset, out, name="m",
                    device="cpu")
    found = json.loads(out.read_text())
    noise = max(v for v in found["batch_noise"].values() if v is not None)
    assert found["quantization"] == "llm.int8" and noise > 1e-4
    assert found["tolerance"] == pytest.approx(max(equivalence.TOLERANCE["int8"], 2 * noise))


def test_a_batch_invariant_build_gets_no_allowance_for_noise(tiny_adapters):
    adapter = tiny_adapters["llama"]
    loud = {"batch": 3.0, "split": 1.0}
    assert equivalence.tolerance(adapter, loud) == equivalence.TOLERANCE["float32"]
    adapter.quantization = "llm.int8"
    try:
        assert equivalence.tolerance(adapter, loud) == 6.0
        assert equivalence.tolerance(adapter, {"batch": None, "split": 1e-3}) == equivalence.TOLERANCE["int8"]
    finally:
        adapter.quantization = None
