"""A rehearsal at real size on this machine: a baseline model in 8 bits, loaded as the workflow loads it.

A random checkpoint of the model's real shape (``emolens/architectures.json``; Gemma-3's text tower) is written
shard by shard in bfloat16 (a child process: no full-precision copy of the model is ever in memory), then loaded
through :func:`emolens.model.loading.load_model` with ``quantization: int8, dtype: bfloat16`` (weight-only int8 as the
baseline's gemma3_12b; quantised tensor by tensor on load). Then the equivalence rule's residual and readout checks
on one prompt, one forward of a batch, and the process's peak RSS (and, after the load, its anonymous and
file-backed parts: safetensors maps the shards) beside the plan's weights (``emolens plan``) and the loaded
weights' bytes. Random weights have no outlier features: this checks memory and kernels, not fidelity.

    python benchmarks/rehearse_8bit.py --model gemma3_12b --dir /tmp/gemma3_12b_random --json rehearsal.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import torch
from real_shape import hf_config
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from emolens.model.architecture import known_architectures, resolve_architecture, vision_params
from emolens.model.loading import load_model, weight_memory
from emolens.model.plan import weight_bytes
from emolens.phases.equivalence import differences

SHARD_BYTES = 2 * 2**30


def write_random_checkpoint(name: str, out: Path, seed: int = 0) -> None:
    """The model's real shape with random bfloat16 weights, one tensor at a time into ~2 GiB safetensors shards."""
    config = hf_config(name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    generator = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    total = 0

    def flush() -> None:
        file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        shard.clear()

    for key, meta in skeleton.state_dict().items():
        if key in tied:
            continue
        if meta.dim() == 1:  # norms (scale 1 in Llama's form, 1 + 0 in Gemma's) and biases
            tensor = torch.zeros(meta.shape, dtype=torch.bfloat16) if "bias" in key or "gemma" in config.model_type \
                else torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.bfloat16)
        shard[key] = tensor
        total += tensor.nbytes
        if sum(t.nbytes for t in shard.values()) >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    config.save_pretrained(out)


def resident() -> dict[str, float]:
    """The process's resident memory now, anonymous and file-backed (GiB), from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 2**20 for k in ("RssAnon", "RssFile")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3_12b")
    parser.add_argument("--dir", required=True, help="where the random checkpoint is written (kept for reruns)")
    parser.add_argument("--quantization", default="int8", choices=["int8", "llm.int8"])
    parser.add_argument("--batch", type=int, default=16, help="prompts in the one batched forward")
    parser.add_argument("--tokens", type=int, default=33, help="tokens per prompt (the readout prompts' length)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    a = parser.parse_args()
    out, result = Path(a.dir), {"model": a.model, "quantization": a.quantization, "dtype": "bfloat16"}
    if not (out / "config.json").is_file():
        started = time.perf_counter()
        writer = multiprocessing.get_context("spawn").Process(target=write_random_checkpoint, args=(a.model, out))
        writer.start()
        writer.join()
        result["seconds_write"] = time.perf_counter() - started
    settings = {"path": str(out), "dtype": "bfloat16", "quantization": a.quantization}
    started = time.perf_counter()
    adapter = load_model(settings, name=a.model, device=a.device)
    result["seconds_load"] = time.perf_counter() - started
    arch = resolve_architecture(a.model, {}, known_architectures())[0]
    result["weight_bytes"] = weight_memory(adapter.model)
    result["weight_bytes_plan"] = weight_bytes(arch, "bfloat16", a.quantization)  # with a vision side, if any
    result["vision_bytes_plan"] = sum(vision_params(arch)) * 2  # bfloat16: what the text tower here lacks
    result["rss_after_load_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    result["rss_now_gib"] = resident()  # anonymous (the model) and file-backed (safetensors' mapped pages)
    ids = torch.randint(0, adapter.text_config.vocab_size, (a.batch, a.tokens),
                        generator=torch.Generator().manual_seed(0)).tolist()
    started = time.perf_counter()
    result["max_difference"] = differences(adapter, ids[0], ids[1], [5, 6, 7, 8], patching=False)
    result["seconds_checks"] = time.perf_counter() - started
    started = time.perf_counter()
    with torch.inference_mode():
        logits = adapter.model(input_ids=torch.tensor(ids, device=adapter.device), logits_to_keep=1).logits
    result["seconds_batch"] = time.perf_counter() - started
    result["finite"] = bool(torch.isfinite(logits).all())
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    weights, plan, vision = (result[k] / 2**30 for k in ("weight_bytes", "weight_bytes_plan", "vision_bytes_plan"))
    print(f"{a.model} in {a.quantization} (bfloat16 elsewhere), random weights: loaded in "
          f"{result['seconds_load']:.0f} s; weights {weights:.2f} GiB (plan {plan:.2f} GiB, of which {vision:.2f} GiB "
          f"a vision side this text tower lacks); peak RSS {result['rss_after_load_gib']:.2f} GiB after the load "
          f"(now {result['rss_now_gib']['RssAnon']:.2f} GiB anonymous, {result['rss_now_gib']['RssFile']:.2f} GiB "
          "mapped checkpoint pages), "
          f"{result['peak_rss_gib']:.2f} GiB after the checks and a batch of {a.batch} x {a.tokens} tokens "
          f"({result['seconds_batch']:.0f} s, finite {result['finite']}); residual / readout differences "
          f"{result['max_difference']['residual']:.2g} / {result['max_difference']['readout']:.2g}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
