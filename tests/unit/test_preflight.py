"""Pre-flight, offline (HF_HUB_OFFLINE=1: nothing touches the network): weights cached or at their path,
download sizes from the architecture numbers, gated ids, free disk, one line per problem and exit 2."""

import json
from pathlib import Path

import pytest

from emolens.cli import main
from emolens.config import load_config
from emolens.model import preflight
from emolens.model.preflight import PreflightError, cached_checkpoint, check_model, estimated_size


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own, and no network."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _cache_repo(cache: Path, hf_id: str, files: dict[str, str]) -> None:
    """Lay out ``files`` as a cached snapshot of ``hf_id``, as huggingface_hub's downloads do."""
    repo = cache / f"models--{hf_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, text in files.items():
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_baseline_offline_names_every_missing_model_with_its_download(capsys, monkeypatch):
    models = load_config("config/config.yaml")["models"]
    monkeypatch.setattr(preflight, "free_bytes", lambda path: 10**15)  # the disk is not this test's (its own below)
    with pytest.raises(PreflightError) as info:
        preflight.run(models=models)
    lines = str(info.value).splitlines()
    assert len(lines) == len(models)
    for (name, settings), line in zip(models.items(), lines, strict=True):
        assert line.startswith(f"models.{name}: {settings['hf_id']!r} is not cached and HF_HUB_OFFLINE is set")
        assert f"hf download {settings['hf_id']} --include" in line
    gated = {name for name, line in zip(models, lines, strict=True) if "it is gated: accept its licence" in line}
    assert gated == {"llama3_8b", "gemma3_12b"}
    assert "hf auth login" in lines[3] and "https://huggingface.co/meta-llama/Meta-Llama-3-8B" in lines[3]
    table = capsys.readouterr().out
    assert "~16.1 GB" in table and "~24.4 GB" in table and "still to download" in table


def test_sizes_come_from_the_architecture_numbers_and_published_dtype():
    size, how = estimated_size("llama3_8b", {"hf_id": "meta-llama/Meta-Llama-3-8B"})
    assert how == "architecture numbers x bfloat16" and size == pytest.approx(16.06e9, rel=0.01)  # 8.03B x 2
    size, how = estimated_size("gpt2_small", {"hf_id": "openai-community/gpt2"})
    assert how == "architecture numbers x float32" and size == pytest.approx(124.4e6 * 4, rel=0.01)
    size, _ = estimated_size("gemma3_12b", {"hf_id": "google/gemma-3-12b-pt"})  # the vision tower included
    assert size == pytest.approx(24.4e9, rel=0.02)


def test_cached_checkpoint_needs_every_weight_file(offline_cache):
    _cache_repo(offline_cache, "org/small", {"config.json": "{}", "model.safetensors": "w"})
    assert cached_checkpoint("org/small") == (True, "cached")
    index = json.dumps({"weight_map": {"a": "model-00001.safetensors", "b": "model-00002.safetensors"}})
    _cache_repo(offline_cache, "org/sharded", {"config.json": "{}", "model.safetensors.index.json": index,
                                                "model-00001.safetensors": "w"})
    assert cached_checkpoint("org/sharded") == (False, "partly cached (1 of 2 weight files)")
    _cache_repo(offline_cache, "org/config-only", {"config.json": "{}"})
    assert cached_checkpoint("org/config-only") == (False, "partly cached (config.json but no weights)")
    assert cached_checkpoint("org/absent") == (False, "not cached")


def test_cached_hub_model_organism_gguf_and_local_path_pass(offline_cache, tmp_path):
    _cache_repo(offline_cache, "openai-community/gpt2", {"config.json": "{}", "model.safetensors": "w"})
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "config.json").write_text("{}")
    (local / "model.safetensors").write_text("w")
    models = {
        "gpt2_small": {"hf_id": "openai-community/gpt2"},
        "org": {"path": "results/demo/models/org", "organism": {"family": "gpt2", "d_model": 8, "n_layers": 1,
                                                                "n_heads": 2}},
        "gguf": {"path": "results/real/gguf", "gguf_file": "package:x"},
        "local": {"path": str(local)},
    }
    out = tmp_path / "preflight.json"
    report = preflight.run(models=models, out=out)
    assert not report["problems"] and report["need_bytes"] == 0
    assert json.loads(out.read_text())["models"][0]["state"] == "cached"


def test_local_path_without_a_checkpoint_is_a_problem(tmp_path):
    hub = preflight.Hub()
    row = check_model("m", {"path": str(tmp_path / "nowhere")}, hub)
    assert not row.present and row.problems == [
        f"models.m.path: {str(tmp_path / 'nowhere')!r} is not a directory; point it at a checkpoint directory "
        "(save_pretrained output) or set hf_id instead"]
    (tmp_path / "empty").mkdir()
    assert "holds no config.json" in check_model("m", {"path": str(tmp_path / "empty")}, hub).problems[0]


def test_too_little_disk_is_a_problem(monkeypatch):
    monkeypatch.setattr(preflight, "free_bytes", lambda path: 10**9)
    report = preflight.preflight({"llama3_8b": {"hf_id": "meta-llama/Meta-Llama-3-8B"}})
    assert report["problems"][-1].startswith("disk: the models not yet downloaded need ~16.1 GB but ")
    assert "1.00 GB free" in report["problems"][-1] and "HF_HOME" in report["problems"][-1]


def test_cli_exits_2_with_one_line_per_problem(tmp_path, capsys):
    models = {"a": {"hf_id": "org/a"}, "b": {"path": str(tmp_path / "missing")}}
    code = main(["preflight", "--models", json.dumps(models), "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2 and not (tmp_path / "p.json").exists()
    assert err[0].startswith("emolens preflight: error: models.a: 'org/a' is not cached")
    assert err[1].startswith("emolens preflight: error: models.b.path: ")
