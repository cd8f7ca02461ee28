"""Attention vs MLP: the sublayer sites (``attn_out``, ``mlp_out``) on two-layer models of every family.

The adapter's choice of module must be the write into the residual stream (block output - block input = attention
write + MLP write, GPT-NeoX's parallel blocks included), the fast engine must equal the full-recompute oracle at
these sites, and patching a block's input and both its writes must equal patching its output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.engine.pairs import prepare_pairs
from emolens.engine.patching import (
    SUBLAYERS,
    Donor,
    collect,
    patch_fast,
    patch_pairs,
    patch_reference,
    resid_site,
    sublayer_site,
)

FAMILIES = ("gpt2", "gpt_neox", "gpt_neo", "llama", "qwen3", "gemma3")
ATOL = 1e-4


@pytest.fixture(scope="module")
def records(varied_records):
    return varied_records[:8]  # two items, some pairs of different lengths


@pytest.mark.parametrize("family", FAMILIES)
def test_a_blocks_two_writes_add_up_to_its_output(tiny_adapters, records, family):
    adapter = tiny_adapters[family]
    pairs = prepare_pairs(adapter, records, max_pairs=4, seed=0)
    L = adapter.n_layers
    sublayers = [(kind, layer) for kind in SUBLAYERS for layer in range(L)]
    _, acts = collect(adapter, pairs.run, pairs.token_ids, offsets=(-3, -1), resid=range(L + 1), sublayers=sublayers)
    for layer in range(L):
        written = acts[("attn_out", layer)] + acts[("mlp_out", layer)]  # [N, n_offsets, d_model]
        np.testing.assert_allclose(acts[("resid", layer + 1)] - acts[("resid", layer)], written, atol=1e-5)
        assert acts[("attn_out", layer)].abs().max() > 1e-3 and acts[("mlp_out", layer)].abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_reference_at_the_sublayer_writes(tiny_adapters, records, family):
    """Every block's attention and MLP write at the last position, one at two positions, and every block's input
    with both its writes patched together, which must equal patching its output (planted: the block's output is
    its input plus its two writes, whatever the block computes in between)."""
    adapter = tiny_adapters[family]
    pairs = prepare_pairs(adapter, records, max_pairs=6, seed=3)
    L = adapter.n_layers
    single = [(sublayer_site(kind, layer),) for layer in range(L) for kind in SUBLAYERS]
    whole = [(resid_site(layer), sublayer_site("attn_out", layer), sublayer_site("mlp_out", layer))
             for layer in range(L)]
    output = [(resid_site(layer + 1),) for layer in range(L)]
    variants = [*single, (sublayer_site("mlp_out", 0, (-2, -1)),), *whole, *output]
    fast, ld_run, ld_donor = patch_pairs(adapter, pairs, variants, batch_size=4)
    ref = patch_pairs(adapter, pairs, variants, method="reference", batch_size=4)[0]
    np.testing.assert_allclose(fast, ref, atol=ATOL)
    np.testing.assert_allclose(fast[:, 2 * L + 1:3 * L + 1], fast[:, 3 * L + 1:], atol=ATOL)
    assert np.abs(fast[:, :2 * L] - ld_run[:, None]).max() > 1e-3  # the writes move the readout
    np.testing.assert_allclose(fast[:, -1], ld_donor, atol=ATOL)  # the last block's output: the donor's readout


@pytest.mark.parametrize("family", ("llama", "gpt_neox"))
def test_every_block_started_apart_equals_the_reference(tiny_adapters, records, family):
    """The fast path's shortcut (each block's variants start at that block from its clean input) at the writes."""
    adapter = tiny_adapters[family]
    pairs = prepare_pairs(adapter, records, max_pairs=2, seed=1)
    L = adapter.n_layers
    variants = [(sublayer_site(kind, layer),) for layer in range(L) for kind in SUBLAYERS] + [()]
    sublayers = [(kind, layer) for kind in SUBLAYERS for layer in range(L)]
    _, acts = collect(adapter, pairs.donor, pairs.token_ids, offsets=(-1,), sublayers=sublayers)
    index = torch.from_numpy(pairs.ld_index)
    for i in range(len(pairs)):
        run, donor = torch.tensor([pairs.run[i]]), Donor((-1,), {k: a[i:i + 1] for k, a in acts.items()})
        fast = patch_fast(adapter, run, donor, variants, pairs.token_ids, index[i:i + 1], every_block_apart=True)
        ref = patch_reference(adapter, run, donor, variants, pairs.token_ids, index[i:i + 1])
        np.testing.assert_allclose(fast.numpy(), ref.numpy(), atol=ATOL)


def test_a_block_without_a_write_is_refused(tiny_adapters):
    adapter = tiny_adapters["llama"]
    with pytest.raises(IndexError, match="block 2 of llama has no mlp_out site"):
        with adapter.hooks(mlp_out={2: lambda x: None}):
            pass


def test_the_phase_writes_every_blocks_two_effects_and_its_identity(tiny_adapters, records, tmp_path):
    from emolens import layout
    from emolens.data.readout import Readout
    from emolens.io import load_pickle, save_pickle
    from emolens.phases import sublayers
    from emolens.report import attention_mlp
    from emolens.report.findings import _table

    adapter = tiny_adapters["gpt_neox"]  # parallel attention and MLP
    out = layout.sublayers(tmp_path, "neox")
    sublayers.run(adapter, records, out, max_pairs=12, message_positions=1, min_separation=0.0, n_resamples=50,
                  n_perm=50, readout=Readout(suffix=" is"))
    result = load_pickle(out, schema=sublayers.SCHEMA)
    L, P = adapter.n_layers, len(result["pairs"])
    assert result["effect"].shape == (P, 2, L) and result["summary"].shape == (2, L)
    assert np.isfinite(result["summary"]).all() and result["block_identity"] < 1e-4 and result["sublayer_sum"] < 1e-5
    assert ((result["ci_low"] <= result["summary"] + 1e-9) & (result["summary"] <= result["ci_high"] + 1e-9)).all()
    np.testing.assert_allclose(result["attention_minus_mlp_difference"], result["summary"][0] - result["summary"][1],
                               atol=1e-9)
    assert ((result["attention_minus_mlp_p_perm"] > 0) & (result["attention_minus_mlp_p_perm"] <= 1)).all()
    ok, message = attention_mlp.check(out, L)  # the report reads it: the check, the findings section, the figure
    assert ok, message
    broken = result | {"block_identity": 0.5}
    save_pickle(broken, tmp_path / "broken.pkl")
    assert not attention_mlp.check(tmp_path / "broken.pkl", L)[0]
    lines = attention_mlp.section(tmp_path, ["neox", "absent"], _table)
    assert lines[0].startswith("## Attention or MLP?") and sum(line.startswith("| neox | ") for line in lines) == 1 + L
    attention_mlp.attention_vs_mlp({"neox": out}, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_a_model_whose_blocks_scale_their_writes_gets_a_file_that_says_why(tokenizer, tmp_path):
    from emolens import layout
    from emolens.data.dataset import build_dataset
    from emolens.io import load_pickle
    from emolens.model import tiny
    from emolens.model.adapter import ModelAdapter
    from emolens.phases import sublayers
    from emolens.report import attention_mlp
    from emolens.report.findings import _table

    adapter = ModelAdapter(tiny.tiny_model("minicpm3", len(tokenizer)), tokenizer, name="scaled")
    out = layout.sublayers(tmp_path, "scaled")
    sublayers.run(adapter, build_dataset()[:4], out, message_positions=1)
    result = load_pickle(out, schema=sublayers.SCHEMA)
    assert not result["applicable"] and "residual multipliers" in result["reason"] and "effect" not in result
    assert attention_mlp.check(out, adapter.n_layers)[0]
    assert any("not measured" in line for line in attention_mlp.section(tmp_path, ["scaled"], _table))
    attention_mlp.attention_vs_mlp({"scaled": out}, tmp_path / "figure.png")


@pytest.mark.parametrize(("model_type", "attn", "mlp"), [
    ("mistral", ["self_attn"], ["mlp"]),  # post_attention_layernorm is the norm before the MLP: not a write
    ("olmo2", ["post_attention_layernorm"], ["post_feedforward_layernorm"]),  # post-norms only
    ("glm4", ["post_self_attn_layernorm"], ["post_mlp_layernorm"]),
    ("qwen3_next", ["linear_attn", "self_attn"], ["mlp"]),  # hybrid: the mixer's output in linear-attention blocks
    ("jamba", ["mamba", "self_attn"], ["feed_forward"]),
])
def test_structure_finds_the_writes_of_types_outside_the_table(tokenizer, model_type, attn, mlp):
    from emolens.model import tiny
    from emolens.model.adapter import ModelAdapter
    from emolens.phases.equivalence import sublayer_sum_difference

    adapter = ModelAdapter(tiny.tiny_model(model_type, len(tokenizer)), name=model_type)
    assert adapter.sublayer_paths == {"attn_out": attn, "mlp_out": mlp}
    assert sublayer_sum_difference(adapter, torch.tensor([list(range(5, 17))])) < 1e-5
