"""Demo organisms: the tokenizer, deterministic builds, the held-out split, training and saving."""

import json

import pytest
import torch

from emolens.data.dataset import build_dataset, write_dataset
from emolens.data.readout import LABEL_WORDS, READOUT_SUFFIX, label_token_ids, prompt
from emolens.model.adapter import FAMILY_NAMES
from emolens.model.loading import load_model
from emolens.model.organisms import (
    OrganismError,
    _encode,
    _last_logits,
    build_organism,
    heldout_mask,
    run,
    train_tokenizer,
)


def test_label_words_are_single_distinct_tokens(tokenizer):
    ids = label_token_ids(tokenizer)
    assert len(set(ids.values())) == 4
    for emotion, word in LABEL_WORDS.items():
        assert tokenizer.encode(word, add_special_tokens=False) == [ids[emotion]]
        assert tokenizer.decode([ids[emotion]]) == word
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert prompt("Hi.") == "Hi." + READOUT_SUFFIX
    text = prompt(build_dataset()[0]["text"])
    assert tokenizer.decode(tokenizer.encode(text)) == text  # byte-level: lossless


def test_tokenizer_is_deterministic(tokenizer):
    again = train_tokenizer([r["text"] for r in build_dataset()])
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_label_token_ids_refuses_shared_token():
    class OneToken:
        def encode(self, text, add_special_tokens=False):
            return [7] if text == " anger" else [5]

        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

    with pytest.raises(ValueError, match="share a token"):
        label_token_ids(OneToken())


def test_build_is_deterministic_and_checks_family(tokenizer):
    a = build_organism("llama", d_model=32, n_layers=2, n_heads=4, vocab_size=len(tokenizer), seed=3)
    b = build_organism("llama", d_model=32, n_layers=2, n_heads=4, vocab_size=len(tokenizer), seed=3)
    c = build_organism("llama", d_model=32, n_layers=2, n_heads=4, vocab_size=len(tokenizer), seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.num_key_value_heads == 2  # GQA
    with pytest.raises(OrganismError, match=r"unknown organism family 'mamba': not one of the six families"):
        build_organism("mamba", d_model=32, n_layers=2, n_heads=4, vocab_size=len(tokenizer))


@pytest.mark.parametrize("family", ["mistral", "opt", "falcon", "qwen3_moe", "gemma2"])
def test_an_organism_of_another_tested_type_keeps_its_defining_features(tokenizer, family):
    model = build_organism(family, d_model=32, n_layers=2, n_heads=4, vocab_size=len(tokenizer), seed=1)
    config, default = model.config, type(model.config)()
    assert config.model_type == family and config.hidden_size == 32 and config.num_hidden_layers == 2
    for feature in ("sliding_window", "final_logit_softcapping", "parallel_attn", "norm_topk_prob"):
        assert getattr(config, feature, None) == getattr(default, feature, None), feature  # the type's own


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_features(tiny_adapters, family):
    tc = tiny_adapters[family].text_config
    if family == "gpt_neox":
        assert tc.use_parallel_residual and tc.rope_parameters["partial_rotary_factor"] == 0.25
    if family == "gpt_neo":
        assert tc.attention_layers == ["global", "local"] and tc.window_size == 8
    if family in ("llama", "qwen3", "gemma3"):
        assert tc.num_key_value_heads == tc.num_attention_heads // 2
    if family == "gemma3":
        assert tc.layer_types == ["sliding_attention", "full_attention"] and tc.sliding_window == 8
        assert tc.num_attention_heads * tc.head_dim != tc.hidden_size


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_training_logits_of_right_padded_batch_equal_unpadded_runs(tiny_adapters, tokenizer, family):
    """The training forward takes each prompt's logit at its own last token despite right padding."""
    model = tiny_adapters[family].model
    records = build_dataset()[:8]
    ids, lengths = _encode(tokenizer, records)
    assert len(set(lengths.tolist())) > 1
    with torch.no_grad():
        got = _last_logits(model, ids, lengths)
        want = torch.stack([model(ids[i:i + 1, :n]).logits[0, -1] for i, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_heldout_split_by_item():
    records = build_dataset()
    held = heldout_mask(records)
    assert sum(held) == len(records) // 5
    test_items = {r["item_id"] for r, h in zip(records, held, strict=True) if h}
    train_items = {r["item_id"] for r, h in zip(records, held, strict=True) if not h}
    assert not test_items & train_items


@pytest.mark.slow  # about 13 s: trains an organism to its accuracy and margin targets
def test_run_trains_saves_and_loads_back(tmp_path):
    data = tmp_path / "data.jsonl"
    write_dataset(build_dataset(), data)
    out = tmp_path / "models" / "neox"
    settings = {"family": "gpt_neox", "d_model": 64, "n_layers": 2, "n_heads": 4, "seed": 1, "min_steps": 25}
    summary = run(data, "neox", settings, out)
    assert summary["heldout_accuracy"] >= 0.9
    written = json.loads((out / "readout_accuracy.json").read_text())
    assert written["name"] == "neox" and written["family"] == "gpt_neox"
    assert written["heldout_accuracy"] == summary["heldout_accuracy"] and written["n_params"] > 0
    assert written["provenance"]["settings"]["organism"] == settings
    assert [p.name for p in out.parent.iterdir()] == ["neox"]  # no temporary directory left behind

    adapter = load_model({"path": str(out), "dtype": "float32"}, name="neox", device="cpu")
    assert (adapter.n_layers, adapter.d_model) == (2, 64)
    records = [r for r, h in zip(build_dataset(), heldout_mask(build_dataset()), strict=True) if h]
    label_ids = label_token_ids(adapter.tokenizer)
    correct = 0
    with torch.no_grad():
        for r in records[:40]:
            ids = torch.tensor([adapter.tokenizer.encode(prompt(r["text"]))])
            final = adapter.forward_final(ids).last_hidden_state[:, -1]
            logits = adapter.label_logits(final, list(label_ids.values()))[0]
            correct += list(label_ids)[int(logits.argmax())] == r["emotion"]
    assert correct / 40 >= 0.85


def test_run_refuses_undertrained_organism(tmp_path):
    data = tmp_path / "data.jsonl"
    write_dataset(build_dataset(), data)
    out = tmp_path / "models" / "weak"
    settings = {"family": "gpt2", "d_model": 32, "n_layers": 2, "n_heads": 4, "max_steps": 2, "min_steps": 0}
    with pytest.raises(OrganismError, match="held-out accuracy"):
        run(data, "weak", settings, out)
    assert not out.parent.exists() or not any(out.parent.iterdir())
