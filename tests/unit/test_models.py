"""The model seam: residual and head sites, label readout, int8, and loads that must be refused."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from emolens.config import ModelLoadError
from emolens.data.dataset import build_dataset
from emolens.data.readout import label_token_ids, prompt
from emolens.model.adapter import FAMILY_NAMES
from emolens.model.loading import load_model
from emolens.model.organisms import build_organism

# The final norm of each family, for checking residual index L (test-only knowledge of the layout).
FINAL_NORM = {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm", "gpt_neo": "transformer.ln_f",
              "llama": "model.norm", "qwen3": "model.norm", "gemma3": "model.language_model.norm"}


def _get(obj, path):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _batch(tokenizer, n=3):
    """n readout prompts of one token length (> 8, so GPT-Neo's local window matters): [n, T]."""
    encoded = [tokenizer.encode(prompt(r["text"])) for r in build_dataset()]
    length = max({len(e) for e in encoded}, key=lambda n_: sum(len(e) == n_ for e in encoded))
    assert length > 8
    return torch.tensor([e for e in encoded if len(e) == length][:n])


def _capture(adapter, ids):
    """Residual stream at every index 0..L via adapter hooks: {l: [batch, pos, d]}."""
    got = {}
    fns = {i: (lambda x, i=i: got.__setitem__(i, x.detach().clone())) for i in range(adapter.n_layers + 1)}
    with torch.no_grad(), adapter.hooks(resid=fns):
        adapter.forward_final(ids)
    return got


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_residual_sites_equal_hf_hidden_states(tiny_adapters, tokenizer, family):
    adapter = tiny_adapters[family]
    ids = _batch(tokenizer)
    got = _capture(adapter, ids)
    with torch.no_grad():
        hs = adapter.model(ids, output_hidden_states=True).hidden_states
    L = adapter.n_layers
    assert len(hs) == L + 1
    for layer in range(L):
        torch.testing.assert_close(got[layer], hs[layer], atol=1e-5, rtol=0)
    with torch.no_grad():
        normed = _get(adapter.model, FINAL_NORM[family])(got[L])
    torch.testing.assert_close(normed, hs[L], atol=1e-5, rtol=0)
    assert not torch.allclose(got[L], hs[L], atol=1e-3)  # index L is before the final norm


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_label_logits_equal_full_logits(tiny_adapters, tokenizer, family):
    adapter = tiny_adapters[family]
    ids = _batch(tokenizer)
    label_ids = list(label_token_ids(tokenizer).values())
    with torch.no_grad():
        final = adapter.forward_final(ids).last_hidden_state[:, -1]  # [batch, d]
        got = adapter.label_logits(final, label_ids)  # [batch, 4]
        full = adapter.model(ids).logits[:, -1, label_ids]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_geometry_and_head_site_width(tiny_adapters, tiny_settings, tokenizer, family):
    adapter = tiny_adapters[family]
    spec = tiny_settings[family]
    d_head = spec.get("d_head", spec["d_model"] // spec["n_heads"])
    assert (adapter.n_layers, adapter.n_heads, adapter.d_head, adapter.d_model) == (
        spec["n_layers"], spec["n_heads"], d_head, spec["d_model"])
    assert len(adapter.attn_out) == adapter.n_layers
    widths = {}
    fns = {i: (lambda x, i=i: widths.__setitem__(i, x.shape[-1])) for i in range(adapter.n_layers)}
    with torch.no_grad(), adapter.hooks(head_inputs=fns):
        adapter.forward_final(_batch(tokenizer))
    assert widths == {i: adapter.n_heads * adapter.d_head for i in range(adapter.n_layers)}


def test_hooks_reject_out_of_range_index(tiny_adapters):
    adapter = tiny_adapters["gpt2"]
    with pytest.raises(IndexError), adapter.hooks(resid={adapter.n_layers + 1: lambda x: None}):
        pass


def _codes(p: torch.Tensor) -> torch.dtype:
    """The dtype a parameter stores: torchao's int8 codes (qdata) behind the dtype it presents, else its own."""
    return p.qdata.dtype if hasattr(p, "qdata") else p.dtype


def _int8_linears(model: torch.nn.Module) -> set[str]:
    """Names of the linear layers whose weights are stored as int8 (torchao or bitsandbytes)."""
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and _codes(m.weight) == torch.int8}


@pytest.mark.parametrize("quantization", ["int8", "llm.int8"])
def test_int8_gemma3_loads_quantised_and_runs(tiny_checkpoints, tiny_adapters, tokenizer, quantization):
    adapter = load_model({"path": str(tiny_checkpoints["gemma3"]), "quantization": quantization}, name="g8",
                         device="cpu")
    assert adapter.quantization == quantization
    assert type(adapter.model).__name__ == "Gemma3ForConditionalGeneration"
    assert "language_model.layers.0.self_attn.o_proj" in {n.removeprefix("model.") for n in
                                                          _int8_linears(adapter.model)}
    assert _codes(adapter.attn_out[0].weight) == torch.int8
    ids = _batch(tokenizer)
    q, ref = _capture(adapter, ids), _capture(tiny_adapters["gemma3"], ids)
    L = adapter.n_layers
    torch.testing.assert_close(q[0], ref[0])  # embeddings are not quantised
    rel = ((q[L] - ref[L]).norm() / ref[L].norm()).item()
    assert 0 < rel < 0.1, rel


@pytest.mark.parametrize("quantization", ["int8", "llm.int8"])
def test_int8_gemma3_keeps_every_unquantised_module_out_of_float16(tiny_checkpoints, quantization):
    """gemma3_12b's setting (int8, bfloat16): every linear layer of the text model is int8 but the unembedding,
    and every other parameter and floating buffer is bfloat16 (bitsandbytes' float16 default breaks Gemma)."""
    adapter = load_model({"path": str(tiny_checkpoints["gemma3"]), "quantization": quantization,
                          "dtype": "bfloat16"}, name="g8", device="cpu")
    model = adapter.model
    int8 = _int8_linears(model)
    text_linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "language_model" in n}
    assert int8 == text_linears and int8  # every text-model linear layer, nothing of the vision side
    assert not any(n.startswith("lm_head") for n in int8)
    params = {n: p.dtype for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in int8}
    assert params and set(params.values()) == {torch.bfloat16}, {n: d for n, d in params.items()
                                                                  if d != torch.bfloat16}
    buffers = {n: b.dtype for n, b in model.named_buffers() if b.is_floating_point()}
    assert set(buffers.values()) <= {torch.bfloat16, torch.float32}, buffers  # rotary frequencies stay float32
    assert {_codes(p) for n, p in model.named_parameters() if n.rsplit(".", 1)[0] in int8} == {torch.int8}


def test_float16_gemma3_is_refused_by_name(tiny_checkpoints):
    with pytest.raises(ModelLoadError, match=r"models\.g16\.dtype: float16 .*bfloat16 or float32"):
        load_model({"path": str(tiny_checkpoints["gemma3"]), "dtype": "float16"}, name="g16", device="cpu")


def test_multimodal_gemma3_loads_saved_weights(tiny_checkpoints, tiny_adapters):
    saved = load_file(tiny_checkpoints["gemma3"] / "model.safetensors")  # legacy key names on disk
    adapter = tiny_adapters["gemma3"]
    assert type(adapter.model).__name__ == "Gemma3ForConditionalGeneration"
    pairs = [(adapter.attn_out[1].weight, "language_model.model.layers.1.self_attn.o_proj.weight"),
             (adapter.model.get_input_embeddings().weight, "language_model.model.embed_tokens.weight"),
             (adapter.model.model.vision_tower.embeddings.patch_embedding.weight,
              "vision_tower.embeddings.patch_embedding.weight"),
             (adapter.model.model.multi_modal_projector.mm_input_projection_weight,
              "multi_modal_projector.mm_input_projection_weight")]
    for param, key in pairs:
        torch.testing.assert_close(param, saved[key], atol=0, rtol=0)


def test_missing_weights_refused(tiny_checkpoints, tmp_path, tokenizer):
    src = tiny_checkpoints["gemma3"]
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    dropped = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.weight"))
    del tensors[dropped]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="uninitialised"):
        load_model({"path": str(tmp_path), "dtype": "float32"}, name="tampered", device="cpu")


def test_text_only_weights_under_multimodal_config_refused(tiny_settings, tmp_path, tokenizer):
    """A text-only Gemma-3 checkpoint read as the multimodal class leaves the vision tower random."""
    from transformers import Gemma3ForCausalLM

    multimodal = build_organism("gemma3", vocab_size=len(tokenizer), **tiny_settings["gemma3"])
    text_only = Gemma3ForCausalLM(multimodal.config.text_config)
    text_only.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    multimodal.config.save_pretrained(tmp_path)  # config.json now says gemma3 (multimodal)
    with pytest.raises(ModelLoadError, match="uninitialised"):
        load_model({"path": str(tmp_path)}, name="text_as_mm", device="cpu")


def test_missing_local_path_names_setting(tmp_path):
    with pytest.raises(ModelLoadError, match=r"models\.mine\.path"):
        load_model({"path": str(tmp_path / "nope")}, name="mine", device="cpu")


@pytest.mark.parametrize("offline", ["1", "true", "ON"])  # the values huggingface_hub reads as true
def test_offline_uncached_hub_id_names_path_setting(monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    with pytest.raises(ModelLoadError, match=r"models\.remote\.path"):
        load_model({"hf_id": "emolens-tests/no-such-model-anywhere"}, name="remote", device="cpu")


def test_bad_dtype_names_setting(tiny_checkpoints):
    with pytest.raises(ModelLoadError, match=r"models\.x\.dtype"):
        load_model({"path": str(tiny_checkpoints["gpt2"]), "dtype": "float8"}, name="x", device="cpu")
