"""Every decoder-only causal-LM type of the installed transformers, loaded as a user's model would be.

Per tested type: a tiny random model built from the type's config class, saved with the organisms'
tokenizer and reloaded through ``load_model``, resolved by the adapter (the family table or its
structure), then residual capture equals ``hidden_states`` at every index, the label readout equals the
model's logits, fast patching (every residual index, every head, two positions) equals the full
recompute oracle; in weight-only int8 as well (float32 compute, batch-invariant: the same round-off)
where torchao loads the type. Every type in
``emolens.model.tiny.UNSUPPORTED`` must still fail, so the table's reasons stay true. Then the errors a user
meets with a model the adapter cannot resolve or with hand-given paths that do not resolve.
"""

from __future__ import annotations

import pytest
import torch

from emolens.config import ModelLoadError
from emolens.data.dataset import build_dataset
from emolens.data.readout import DEFAULT
from emolens.model import tiny
from emolens.model.adapter import ModelAdapter
from emolens.model.loading import load_model
from emolens.report import model_types

ATOL = 1e-4  # float32 compute, with float32 or int8 weights


@pytest.fixture(scope="module")
def prompts(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(run prompt, donor prompt, label token ids): two emotions of one item of the built-in dataset."""
    records = build_dataset()[:2]
    run, donor = (tokenizer.encode(DEFAULT.prompt(r["text"])) for r in records)
    return run, donor, [DEFAULT.label_token_ids(tokenizer)[e] for e in DEFAULT.labels]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", tiny.tested())
def test_every_identity_holds_on_a_tiny_model_of_the_type(model_type, tokenizer, prompts, tmp_path):
    row = model_types.check_type(model_type, tokenizer, *prompts, tmp_path)
    assert row["head_layers"], row["sites"]
    assert max(v for v in row["float32"].values() if v is not None) < ATOL, row
    assert (row["float32"]["patching"] is None) == (not row["prefix_cache"]), row  # hybrids: full recompute only
    if model_type in tiny.NOT_ADDITIVE:  # the table's reasons stay true
        assert row["sublayer_sum"] is None or not row["sublayer_sum"] < ATOL, row
    else:  # the attention (mixer) and MLP writes the adapter finds add up to every block's output
        assert row["sublayer_sum"] < ATOL, row
    if isinstance(row["int8"], dict):
        assert max(v for v in row["int8"].values() if v is not None) < ATOL, row


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(tiny.UNSUPPORTED))
def test_an_unsupported_type_still_fails(model_type, tokenizer, prompts, tmp_path):
    try:
        row = model_types.check_type(model_type, tokenizer, *prompts, tmp_path, int8=False)
    except Exception:  # noqa: BLE001 - any failure to build, load or check: the table gives the reason
        return
    assert max(v for v in row["float32"].values() if v is not None) >= ATOL, row  # else it belongs in the table


def test_structure_finds_the_sites_of_types_outside_the_table(tokenizer):
    for model_type, layers, attn_out in (("mistral", "model.layers", "self_attn.o_proj"),
                                         ("opt", "model.decoder.layers", "self_attn.out_proj"),
                                         ("falcon", "transformer.h", "self_attention.dense"),
                                         ("gptj", "transformer.h", "attn.out_proj")):
        adapter = ModelAdapter(tiny.tiny_model(model_type, len(tokenizer)), name=model_type)
        assert adapter.sites == {"layers": layers, "attn_out": [attn_out], "body": layers.rsplit(".", 1)[0]}


class NoBlocks(torch.nn.Module):
    """A causal LM whose blocks sit in a plain list, so no ModuleList of num_hidden_layers exists."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.config, self.inner = model.config, model

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()


def test_an_unresolvable_model_names_its_type_and_the_paths_tried(tokenizer):
    model = NoBlocks(tiny.tiny_model("mistral", len(tokenizer)))
    model.inner.model.layers = torch.nn.ModuleList(list(model.inner.model.layers)[:1])  # 1 block, config says 2
    with pytest.raises(ModelLoadError) as e:
        ModelAdapter(model, name="mine")
    message = str(e.value)
    assert "models.mine (model_type 'mistral', NoBlocks)" in message
    assert "inner.model.layers (1)" in message and "models.mine.layers" in message


def test_hand_given_paths_are_used_and_checked(tokenizer, tmp_path):
    path = tmp_path / "opt"
    tiny.tiny_model("opt", len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    hand = {"path": str(path), "layers": "model.decoder.layers", "attn_out": "self_attn.out_proj",
            "body": "model.decoder"}
    assert load_model(hand, name="opt", device="cpu").sites["attn_out"] == ["self_attn.out_proj"]
    with pytest.raises(ModelLoadError, match=r"models.opt.layers 'model.blocks' does not resolve"):
        load_model(hand | {"layers": "model.blocks"}, name="opt", device="cpu")
    with pytest.raises(ModelLoadError, match=r"models.opt.attn_out 'self_attn.o_proj' does not resolve in any block"):
        load_model(hand | {"attn_out": "self_attn.o_proj"}, name="opt", device="cpu")
    with pytest.raises(ModelLoadError, match=r"models.opt.attn_out 'self_attn' is not a linear map to d_model"):
        load_model(hand | {"attn_out": "self_attn"}, name="opt", device="cpu")


def test_the_schema_lists_every_organism_type_the_builder_accepts():
    from emolens.config import schema
    from emolens.model.adapter import FAMILY_NAMES

    organism = schema()["properties"]["models"]["additionalProperties"]["properties"]["organism"]
    assert organism["properties"]["family"]["enum"] == list(FAMILY_NAMES) + [
        t for t in tiny.tested() if t not in FAMILY_NAMES]


def test_a_hybrids_blocks_without_heads_are_residual_sites_only(tokenizer, tmp_path):
    """Qwen3-Next: three linear-attention blocks, then one softmax-attention block. Screening scores its heads
    only, leaves the other blocks NaN and names them; patching runs the full-recompute engine."""
    import json

    import numpy as np

    from emolens.data.readout import Readout
    from emolens.phases.heads import run_screening

    adapter = ModelAdapter(tiny.tiny_model("qwen3_next", len(tokenizer)), tokenizer, name="hybrid")
    assert adapter.head_layers == [3] and not adapter.prefix_cache
    with pytest.raises(IndexError, match="block 0 of hybrid has no attention heads"):
        with adapter.hooks(head_inputs={0: lambda x: None}):
            pass
    run_screening(adapter, build_dataset()[:24], tmp_path / "heads.json", top_k=2, message_positions=1,
                  min_separation=0.0, max_pairs=8, readout=Readout(suffix=" is"))  # one batch, 2 positions: 9 forwards
    scores = json.loads((tmp_path / "heads.json").read_text())
    exact = np.array(scores["exact_last_position"], float)
    assert scores["layers_without_heads"] == [0, 1, 2]
    assert np.isnan(exact[:3]).all() and np.isfinite(exact[3]).all()
    assert all(layer == 3 for layer, _ in scores["top_heads"])


def test_the_schema_takes_hand_given_paths_and_refuses_a_malformed_one():
    from emolens.config import ConfigError, load_config, validate

    config = load_config("config/types.yaml")
    config["models"]["opt"] |= {"layers": "model.decoder.layers", "attn_out": "self_attn.out_proj",
                                "body": "model.decoder"}
    validate(config)
    config["models"]["opt"]["attn_out"] = "self_attn..out_proj"
    with pytest.raises(ConfigError, match=r"models.opt.attn_out: 'self_attn..out_proj' does not match"):
        validate(config)
