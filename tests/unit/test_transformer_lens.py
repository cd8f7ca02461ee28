"""An independent reference: TransformerLens's TransformerBridge on the small families.

Our residual capture and our fast patching engine must agree with TransformerLens's hook points
(``blocks.l.hook_resid_pre``, ``blocks.l.attn.hook_z``, ``blocks.l.hook_attn_out``, ``blocks.l.hook_mlp_out``) on
the same checkpoint.
"""

import numpy as np
import pytest
import torch

bridge_module = pytest.importorskip("transformer_lens.model_bridge")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from emolens.data.dataset import build_dataset  # noqa: E402
from emolens.data.readout import prompt  # noqa: E402
from emolens.engine.pairs import prepare_pairs  # noqa: E402
from emolens.engine.patching import head_site, patch_pairs, resid_site  # noqa: E402
from emolens.phases.activations import extract  # noqa: E402

FAMILIES = ["gpt2", "gpt_neox", "llama"]


@pytest.fixture(scope="module")
def bridges(tiny_checkpoints):
    """A bridge per family over its own copy of the checkpoint (the bridge rewires the model it wraps)."""
    return {f: bridge_module.TransformerBridge.boot_transformers(
        str(tiny_checkpoints[f]), hf_model=AutoModelForCausalLM.from_pretrained(tiny_checkpoints[f]),
        tokenizer=AutoTokenizer.from_pretrained(tiny_checkpoints[f]), device="cpu") for f in FAMILIES}


def _records():
    return [r for r in build_dataset() if r["item_id"] in ("i000", "i001")]


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_equals_hook_resid_pre(tiny_adapters, bridges, family):
    adapter, bridge = tiny_adapters[family], bridges[family]
    texts = [r["text"] for r in _records()]
    ours = extract(adapter, texts, batch_size=4)["last"]
    for i, text in enumerate(texts):
        ids = torch.tensor([adapter.tokenizer(prompt(text))["input_ids"]])
        _, cache = bridge.run_with_cache(ids)
        for layer in range(adapter.n_layers):
            np.testing.assert_allclose(ours[i, layer], cache[f"blocks.{layer}.hook_resid_pre"][0, -1].numpy(),
                                       atol=1e-5)


def _tl_patched_ld(bridge, pairs, i, hook_name, setter):
    """Denoising patch of one pair through TransformerLens hooks; LD from its full logits."""
    run, donor = torch.tensor([pairs.run[i]]), torch.tensor([pairs.donor[i]])
    _, donor_cache = bridge.run_with_cache(donor)

    def hook(value, hook):
        setter(value, donor_cache[hook_name])
        return value

    logits = bridge.run_with_hooks(run, fwd_hooks=[(hook_name, hook)])[0, -1]
    src, tgt = (pairs.token_ids[j] for j in pairs.ld_index[i])
    return float((logits[src] - logits[tgt]).detach())


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_patching_equals_transformer_lens(tiny_adapters, bridges, family):
    adapter, bridge = tiny_adapters[family], bridges[family]
    pairs = prepare_pairs(adapter, _records(), max_pairs=4, seed=0)
    layer, head = 1, 2
    variants = [(resid_site(layer, (-1,)),), (head_site(layer, head, (-1,)),)]
    ld, _, _ = patch_pairs(adapter, pairs, variants, batch_size=4)
    for i in range(len(pairs)):
        def set_resid(value, donor):
            value[:, -1] = donor[:, -1]

        def set_head(value, donor):  # hook_z: [batch, pos, head, d_head]
            value[:, -1, head] = donor[:, -1, head]

        resid = _tl_patched_ld(bridge, pairs, i, f"blocks.{layer}.hook_resid_pre", set_resid)
        z = _tl_patched_ld(bridge, pairs, i, f"blocks.{layer}.attn.hook_z", set_head)
        np.testing.assert_allclose(ld[i], [resid, z], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_sublayer_writes_equal_hook_attn_out_and_hook_mlp_out(tiny_adapters, bridges, family):
    """Our attn_out and mlp_out sites are TransformerLens's blocks.l.hook_attn_out and blocks.l.hook_mlp_out."""
    from emolens.engine.patching import SUBLAYERS, collect

    adapter, bridge = tiny_adapters[family], bridges[family]
    prompts = [adapter.tokenizer(prompt(r["text"]))["input_ids"] for r in _records()[:2]]
    sites = [(kind, layer) for kind in SUBLAYERS for layer in range(adapter.n_layers)]
    _, acts = collect(adapter, prompts, [0], offsets=(-3, -1), sublayers=sites)
    for i, ids in enumerate(prompts):
        _, cache = bridge.run_with_cache(torch.tensor([ids]))
        for kind, layer in sites:
            hook = cache[f"blocks.{layer}.hook_{kind}"][0, [-3, -1]]  # [2, d_model]
            np.testing.assert_allclose(acts[kind, layer][i].numpy(), hook.detach().numpy(), atol=1e-5)
