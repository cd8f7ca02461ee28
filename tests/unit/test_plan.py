"""The memory plan: parameter counts against published numbers and real (tiny) Hugging Face models,
quantised weight memory against the loaded model (torchao, bitsandbytes), the patching KV cache against the
buffers the engine allocates, batch halving, and the table."""

import copy
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from emolens.config import load_config
from emolens.model import architecture as A
from emolens.model import plan as P
from emolens.model.tiny import ORGANISM_VOCAB

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3


@pytest.fixture(scope="module")
def baseline_config():
    return load_config(ROOT / "config/config.yaml")


@pytest.fixture(scope="module")
def baseline(baseline_config):
    return {r["model"]: r for r in P.plan(baseline_config)}


@pytest.fixture(scope="module")
def demo_config():
    return load_config(ROOT / "config/demo.yaml")


def _hf_param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def test_gemma3_12b_int8_fits_24gib_at_its_batch_size(baseline, baseline_config):
    row = baseline["gemma3_12b"]
    assert row["quantization"] == "int8" and row["gpu_gib"] == 24
    assert row["fits"] is True
    assert row["batch_used"] == row["batch_size"] == baseline_config["models"]["gemma3_12b"]["batch_size"]
    assert row["total_gib"] <= 24 * (1 - P.SAFETY_MARGIN)
    # int8 roughly halves bf16 weights: embeddings stay bf16, so a bit over half of 2 bytes x 12.2e9.
    bf16 = (row["params"] + row["vision_params"]) * 2 / GIB
    assert 0.5 * bf16 < row["weights_gib"] < 0.6 * bf16


def test_every_baseline_model_fits_at_its_configured_batch(baseline):
    for name, row in baseline.items():
        assert row["source"] == "architectures.json", name
        assert row["fits"] is True and row["batch_used"] == row["batch_size"], name


def test_llama3_8b_bf16_weights_are_about_16_gb(baseline):
    row = baseline["llama3_8b"]
    assert row["params"] == pytest.approx(8.03e9, rel=0.02)
    assert row["weights_gib"] * GIB == pytest.approx(16.06e9, rel=0.02)
    assert row["weights_gib"] * GIB == 2 * row["params"]


@pytest.mark.parametrize(("model", "published", "rel"), [
    ("gpt2_small", 124.44e6, 0.02),
    ("pythia-160m", 162.32e6, 0.02),
    ("gpt-neo-125m", 125.20e6, 0.02),
    ("qwen3_8b", 8.19e9, 0.03),
    ("gemma3_12b", 11.77e9, 0.05),  # text tower only
])
def test_parameter_counts_match_published(baseline, model, published, rel):
    assert baseline[model]["params"] == pytest.approx(published, rel=rel)


def test_gemma3_vision_tower_is_counted_apart(baseline):
    row = baseline["gemma3_12b"]
    assert row["vision_params"] == pytest.approx(0.42e9, rel=0.05)  # SigLIP-So400m + projector
    assert baseline["llama3_8b"]["vision_params"] == 0


def test_host_pickle_is_two_float32_arrays_at_every_width(baseline):
    assert baseline["gemma3_12b"]["host_pickle_gib"] * GIB == 2 * 900 * 49 * 3840 * 4
    assert baseline["gpt2_small"]["host_pickle_gib"] * GIB == 2 * 900 * 13 * 768 * 4


def test_kv_cache_formula_and_prompt_tokens_override(baseline_config):
    arch = A.from_hf_config(A.known_architectures()["llama3_8b"])
    assert P.kv_cache_bytes(arch, "bfloat16", batch=32, tokens=24) == 2 * 32 * 8 * 128 * 24 * 2 * 32
    short = {r["model"]: r for r in P.plan(baseline_config, tokens=24)}
    long = {r["model"]: r for r in P.plan(baseline_config, tokens=48)}
    # every chunk row holds a whole-prompt cache and a chunk has batch x T / (T - p) rows: about T^2
    assert long["gpt2_small"]["batch_used"] == short["gpt2_small"]["batch_used"]
    assert 3 * short["gpt2_small"]["kv_gib"] < long["gpt2_small"]["kv_gib"] <= 4 * short["gpt2_small"]["kv_gib"]
    assert long["llama3_8b"]["batch_used"] < short["llama3_8b"]["batch_used"]  # 48 tokens: halved to fit


def test_head_screening_kv_is_about_t_times_a_batch_of_prompts():
    """The gemma3_12b head sweep: batch x T rows of T tokens, the clean suffix pass's batch still held when the
    buffers grow to them, and the prefix: about T + 2 = 26 times one batch of prompt caches."""
    arch = A.from_hf_config(A.known_architectures()["gemma3_12b"])
    groups = P.sweep_groups(arch, tokens=24, positions=11, layer_chunk=17, top_k=8)["head screening"]
    ratio = P.patching_kv_bytes(arch, "bfloat16", 16, 24, groups) / P.kv_cache_bytes(arch, "bfloat16", 16, 24)
    assert ratio == pytest.approx(26, rel=0.05)


def _patching_kv_measured(monkeypatch, adapter, n: int, tokens: int, variants) -> int:
    """Peak bytes of the KV caches patch_fast holds: prefix cache + the storage of every live chunk cache.

    Measured at each expand_cache, when the new chunk's cache exists and the previous chunk's copy is
    still held by the engine: the storages (deduplicated) of every cache copy not yet collected and
    of the reused buffers. Storages, not tensors: in inference mode a view does not keep its base
    tensor object, only its storage.
    """
    from emolens import EMOTIONS
    from emolens.engine import patching as engine

    copies, peak = [], 0
    real_expand = engine.expand_cache

    def expand(cache, index, room, buffers, first_block=0):
        nonlocal peak
        new = real_expand(cache, index, room, buffers, first_block)
        tensors = [t for c in [ref() for ref in copies] + [new] if c is not None
                   for layer in c.layers for t in (layer.keys, layer.values)] + list(buffers.values())
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        prefix = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        peak = max(peak, sum(storages.values()) + prefix)
        copies.append(weakref.ref(new))
        return new

    monkeypatch.setattr(engine, "expand_cache", expand)
    rng = np.random.default_rng(0)
    ids = rng.integers(10, adapter.model.config.get_text_config().vocab_size, size=(2 * n, tokens)).tolist()
    pairs = engine.Pairs(ids=[(f"s{i}", f"t{i}") for i in range(n)], run=ids[:n], donor=ids[n:],
                         ld_index=np.array([[0, 1]] * n), label_token_ids={e: i for i, e in enumerate(EMOTIONS)},
                         direction="denoising")
    engine.patch_pairs(adapter, pairs, variants, batch_size=n)  # n pairs of distinct prompts: one engine call
    return peak


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("sweep", ["head screening", "residual chunk", "head patching"])
def test_patching_kv_plan_equals_the_engines_buffers(monkeypatch, tiny_adapters, family, sweep):
    """Plan vs the cache buffers patch_fast allocates: an upper bound, within 2x where every layer caches the whole
    prompt (Llama); looser where sliding-window layers keep fewer tokens (the Gemma-3 organism's window 8)."""
    from emolens.engine.patching import head_site, resid_site

    adapter = tiny_adapters[family]
    arch = A.from_hf_config(adapter.model.config.to_dict())
    n, T, positions, chunk, top_k = 4, 12, 4, 3, 2
    offsets = [-(k + 1) for k in range(positions)]
    heads = [(layer, h) for layer in range(adapter.n_layers) for h in range(adapter.n_heads)]
    variants = {
        "head screening": [(head_site(layer, h),) for layer, h in heads],
        "residual chunk": [(resid_site(layer, (o,)),) for o in offsets for layer in range(chunk)],
        "head patching": [(head_site(*heads[k], offsets),) for k in range(top_k)]
                         + [tuple(head_site(*heads[k], offsets) for k in range(top_k))],
    }[sweep]
    groups = P.sweep_groups(arch, T, positions, chunk, top_k)[sweep]
    planned = P.patching_kv_bytes(arch, "float32", n, T, groups)
    with torch.inference_mode():
        measured = _patching_kv_measured(monkeypatch, adapter, n, T, variants)
    assert measured <= planned
    if family == "llama":  # not loose: variants that start at different blocks run apart, in smaller chunks
        assert planned <= 2 * measured


def test_batch_is_halved_until_the_plan_fits(baseline_config):
    config = copy.deepcopy(baseline_config)
    config["gpu_memory_gib"] = 3
    config["models"] = {"gpt2_small": {**config["models"]["gpt2_small"], "batch_size": 4096}}
    (row,) = P.plan(config)
    assert row["fits"] is True and row["batch_used"] < 4096
    assert 4096 % row["batch_used"] == 0  # reached by halving
    known = A.known_architectures()
    doubled = P.plan_model("gpt2_small", {**config["models"]["gpt2_small"], "batch_size": 2 * row["batch_used"]},
                           3, known)
    assert doubled["batch_used"] == row["batch_used"]  # twice the batch does not fit
    assert "lower it to" in row["note"]


def test_a_model_that_cannot_fit_at_batch_1_is_reported(baseline_config):
    config = copy.deepcopy(baseline_config)
    config["models"] = {"llama3_8b": {**config["models"]["llama3_8b"], "dtype": "float32"}}
    (row,) = P.plan(config)
    assert row["fits"] is False and row["batch_used"] == 1
    assert row["weights_gib"] > 24 and "int8" in row["note"]
    assert "NO" in P.format_plan([row])


def test_offload_caps_the_weights_on_the_gpu(baseline_config):
    settings = {**baseline_config["models"]["llama3_8b"], "dtype": "float32",
                "offload": {"max_memory": {0: "18GiB", "cpu": "64GiB"}}}
    row = P.plan_model("llama3_8b", settings, 24, A.known_architectures())
    assert row["gpu_weights_gib"] == pytest.approx(18) and row["fits"] is True
    assert "offload" in row["note"]


def test_demo_plans_from_organism_settings(demo_config):
    rows = P.plan(demo_config)
    assert [r["model"] for r in rows] == list(demo_config["models"])
    for row in rows:
        org = demo_config["models"][row["model"]]["organism"]
        assert row["source"] == "organism"
        assert row["family"] == org["family"] and row["d_model"] == org["d_model"]
        assert row["n_layers"] == org["n_layers"] and row["params"] < 2e6
        assert row["fits"] is True


def test_organism_counts_equal_the_built_models(demo_config):
    """The counting formulas of all six families, exact against Hugging Face models."""
    from emolens.model.organisms import build_organism

    for name, settings in demo_config["models"].items():
        org = dict(settings["organism"])
        arch = A.from_organism(org)
        model = build_organism(org.pop("family"), vocab_size=ORGANISM_VOCAB, **org)
        assert A.n_params(arch) + sum(A.vision_params(arch)) == _hf_param_count(model), name


def test_local_config_json_is_read_for_unknown_models(tmp_path):
    """A multimodal Gemma-3 checkpoint's config.json: text_config plus its own vision_config."""
    from emolens.model.organisms import build_organism

    model = build_organism("gemma3", d_model=64, n_layers=2, n_heads=4, d_head=16, vocab_size=300)
    model.config.save_pretrained(tmp_path)
    row = P.plan_model("mine", {"path": str(tmp_path), "dtype": "float32", "batch_size": 8}, 24,
                       A.known_architectures())
    assert row["source"] == "config.json" and row["family"] == "gemma3"
    assert row["params"] + row["vision_params"] == _hf_param_count(model)


@pytest.mark.parametrize("model_type", ["mistral", "opt", "falcon", "phi3", "qwen3_moe", "mixtral"])
def test_any_config_json_is_planned_within_two_percent(tmp_path, model_type):
    """A config.json of a type outside the six families: the plan's count within 2% of the built model's (biases
    and norms of other types are not counted: a share that falls with the width, 1/256 here)."""
    from emolens.model.tiny import tiny_model

    model = tiny_model(model_type, vocab_size=ORGANISM_VOCAB, d_model=256, n_heads=4)
    model.config.save_pretrained(tmp_path)
    row = P.plan_model("mine", {"path": str(tmp_path), "dtype": "float32", "batch_size": 8}, 24,
                       A.known_architectures())
    assert row["source"] == "config.json" and row["family"] == model_type
    assert row["params"] == pytest.approx(_hf_param_count(model), rel=0.02)


def test_a_config_without_a_size_names_the_missing_field(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "mystery", "hidden_size": 64, "vocab_size": 100}')
    row = P.plan_model("mine", {"path": str(tmp_path), "batch_size": 8}, 24, A.known_architectures())
    assert row["fits"] is None
    assert "a mystery config without its depth (num_hidden_layers / n_layer / num_layers), heads" in row["note"]


@pytest.mark.parametrize("quantization", ["int8", "llm.int8", "nf4"])
def test_quantised_weights_match_the_loaded_model(tmp_path, quantization):
    """On CPU: the plan's quantised bytes (codes + row scales, the rest in float32) within 5% of what the loaded
    model holds (torchao's inner tensors, bitsandbytes' scales), and under half the float32 weights."""
    from emolens.model.loading import load_model, weight_memory
    from emolens.model.organisms import build_organism

    org = {"family": "gemma3", "d_model": 96, "n_layers": 6, "n_heads": 4, "d_head": 32}
    model = build_organism(vocab_size=ORGANISM_VOCAB, **org)
    model.save_pretrained(tmp_path)
    measured = weight_memory(load_model({"path": str(tmp_path), "quantization": quantization}, device="cpu").model)
    assert P.weight_bytes(A.from_organism(org), "float32", quantization) == pytest.approx(measured, rel=0.05)
    assert P.weight_bytes(A.from_organism(org), "float32", None) > 2 * measured


def test_unknown_architecture_is_a_row_not_an_error(baseline_config):
    config = copy.deepcopy(baseline_config)
    config["models"]["mystery"] = {"hf_id": "someone/mystery-7b", "dtype": "bfloat16", "batch_size": 8}
    config["models"]["missing_local"] = {"path": "/nonexistent/model", "batch_size": 8}
    rows = {r["model"]: r for r in P.plan(config)}
    assert rows["mystery"]["fits"] is None and "unknown architecture" in rows["mystery"]["note"]
    assert "unknown architecture" in rows["missing_local"]["note"]
    assert "unknown architecture" in P.format_plan(list(rows.values()))


def test_unsupported_model_type_in_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    row = P.plan_model("m", {"path": str(tmp_path)}, 24, A.known_architectures())
    assert row["fits"] is None and "mamba" in row["note"]


def test_format_plan_lists_every_model(baseline, demo_config):
    text = P.format_plan(list(baseline.values()))
    lines = text.splitlines()
    for name in baseline:
        assert sum(line.startswith(name + " ") for line in lines) == 1, name
    assert "int8" in text and "LLM.int8" in text and str(P.PROMPT_TOKENS) in text
    demo_text = P.format_plan(P.plan(demo_config))
    assert all(name in demo_text for name in demo_config["models"])


def test_run_prints_the_table(capsys):
    rows = P.run(ROOT / "config/config.yaml")
    out = capsys.readouterr().out
    assert len(rows) == 6 and "gemma3_12b" in out and "model" in out.splitlines()[0]


def test_a_cached_hub_config_is_planned(tmp_path, monkeypatch):
    """A hub model whose config.json is in the Hugging Face cache (any type) is planned from it."""
    from emolens.model.tiny import tiny_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--someone--tiny-mistral" / "snapshots" / ("0" * 40)
    model = tiny_model("mistral", vocab_size=ORGANISM_VOCAB, d_model=256, n_heads=4)
    model.config.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someone--tiny-mistral" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-mistral" / "refs" / "main").write_text("0" * 40)
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    row = P.plan_model("mine", {"hf_id": "someone/tiny-mistral", "batch_size": 8}, 24, A.known_architectures())
    assert row["source"] == "cached config.json" and row["family"] == "mistral"
    assert row["params"] == pytest.approx(_hf_param_count(model), rel=0.02)
