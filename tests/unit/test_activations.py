"""Phase 2: batched extraction equals Hugging Face hidden_states, and its label logits the model's, for every family."""

import numpy as np
import pytest
import torch

from emolens.data.dataset import build_dataset
from emolens.data.readout import DEFAULT
from emolens.engine.inputs import length_buckets, tokenize
from emolens.phases.activations import extract

FAMILIES = ["gpt2", "gpt_neox", "gpt_neo", "llama", "qwen3", "gemma3"]


def test_length_buckets_cover_once():
    lengths = [5, 3, 5, 7, 3, 5, 5]
    batches = length_buckets(lengths, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len({lengths[i] for i in b}) == 1 and len(b) <= 2 for b in batches)


@pytest.mark.parametrize("family", FAMILIES)
def test_extract_equals_hf_hidden_states(tiny_adapters, family):
    adapter = tiny_adapters[family]
    texts = [r["text"] for r in build_dataset()[:12]]
    got = extract(adapter, texts, batch_size=4)
    L = adapter.n_layers
    assert got["last"].shape == (12, L + 1, adapter.d_model)
    label_ids = list(DEFAULT.label_token_ids(adapter.tokenizer).values())
    for i, ids in enumerate(tokenize(adapter, texts)):
        with torch.no_grad():
            out = adapter.model(torch.tensor([ids]), output_hidden_states=True)
        np.testing.assert_allclose(got["labels"][i], out.logits[0, -1, label_ids].numpy(), atol=1e-4)
        hs = torch.stack(out.hidden_states[:L], dim=1)[0]  # [L, pos, d]
        np.testing.assert_allclose(got["last"][i, :L], hs[:, -1].numpy(), atol=1e-5)
        np.testing.assert_allclose(got["mean"][i, :L], hs.mean(1).numpy(), atol=1e-5)
        # index L is the last block's output: the model's final norm of it is HF's last hidden state
        final_norm = adapter.body.norm if hasattr(adapter.body, "norm") else (
            getattr(adapter.body, "ln_f", None) or adapter.body.final_layer_norm)
        normed = final_norm(torch.from_numpy(got["last"][i, L]))
        np.testing.assert_allclose(normed.detach().numpy(), out.hidden_states[L][0, -1].numpy(), atol=1e-5)
