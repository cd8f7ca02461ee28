"""Real-shape benchmark: every GPU phase on a randomly initialised model of a baseline architecture.

Builds the model from its published numbers (``emolens/architectures.json``; no weights), with a
tokenizer trained on the dataset, and times at the baseline's size (900 prompts of about 24 tokens,
12 ordered pairs per item) every GPU phase: the readout, activation extraction, the residual
last-position sweep, the all-heads last-position sweep, one attribution pass, the top-heads patching
and a steering batch (``--steer`` directions at the middle index on 64 prompts). Prints wall time,
tokens per second and, on CUDA, the fraction of the GPU's dense bf16 peak the forward FLOPs
(2 x parameters x tokens) reach, and the peak GPU memory beside the plan's prediction for the same
setting (``emolens plan``, config/config.yaml's row); ``--json`` writes all of it to one file.

    python benchmarks/real_shape.py --model gpt2_small                      # CPU: fp32, subsampled pairs
    python benchmarks/real_shape.py --model llama3_8b --dtype bfloat16      # one GPU
    python benchmarks/real_shape.py --model gemma3_12b --int8               # one GPU, weight-only int8 (torchao)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from emolens.config import load_config
from emolens.data.dataset import build_dataset
from emolens.data.readout import prompt
from emolens.engine.attribution import attribute_heads
from emolens.engine.edits import prepare_prompts, run_edits
from emolens.engine.pairs import prepare_pairs
from emolens.engine.patching import head_site, patch_pairs, resid_site
from emolens.model.adapter import ModelAdapter
from emolens.model.architecture import known_architectures
from emolens.model.organisms import train_tokenizer
from emolens.model.plan import plan_model
from emolens.phases.activations import extract
from emolens.phases.behaviour import label_logits
from emolens.phases.heads import exact_last_position

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12, "A10": 125e12}


def hf_config(name: str) -> Any:
    """A transformers config of the real architecture (text tower for Gemma-3), from architectures.json."""
    arch = dict(json.loads(resources.files("emolens").joinpath("architectures.json").read_text())[name])
    model_type = arch.pop("text_model_type", arch.pop("model_type"))
    for key in ("hf_id", "layer_pattern"):
        arch.pop(key, None)
    if model_type == "gpt_neo":
        arch["attention_types"] = [[["global", "local"], arch["num_layers"] // 2]]
    return AutoConfig.for_model(model_type, **{k: v for k, v in arch.items() if v is not None})


def random_model(name: str, dtype: torch.dtype, device: str, int8: bool) -> torch.nn.Module:
    """Randomly initialised weights of the real shape, created on the device (int8: the default 8-bit path,
    weight-only int8 through torchao on every decoder linear layer, as ``quantization: int8`` loads it)."""
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(name), dtype=dtype)
    if int8:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and not fqn.startswith("lm_head"))
    return model.eval()


PHASES: dict[str, dict[str, float]] = {}  # label -> wall seconds, tokens/s, fraction of bf16 peak


def timed(label: str, fn: Callable[[], Any], tokens: int, flops_per_token: float, peak: float | None) -> Any:
    """Run ``fn`` once, print (and keep in PHASES) wall time, tokens/s and, on CUDA, the fraction of bf16 peak."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    PHASES[label] = {"seconds": wall, "tokens_per_s": tokens / wall}
    line = f"{label:<34} {wall:9.2f} s  {tokens / wall:12.0f} tok/s"
    if peak:
        PHASES[label]["bf16_peak_fraction"] = flops_per_token * tokens / wall / peak
        line += f"  {PHASES[label]['bf16_peak_fraction']:6.1%} of bf16 peak"
    print(line, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2_small")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--int8", action="store_true", help="weight-only int8 decoder weights (torchao)")
    parser.add_argument("--max-pairs", type=int, default=None, help="subsample the 2700 pairs (CPU default 64)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steer", type=int, default=64, help="directions of the steering batch")
    parser.add_argument("--json", default=None, help="write the measurements to this file")
    a = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, a.dtype or ("bfloat16" if device == "cuda" else "float32"))
    max_pairs = a.max_pairs if a.max_pairs is not None else (None if device == "cuda" else 64)
    peak = next((v for k, v in BF16_PEAK.items() if k in torch.cuda.get_device_name()), None) \
        if device == "cuda" else None

    records = build_dataset()
    tokenizer = train_tokenizer([prompt(r["text"]) for r in records])
    start = time.perf_counter()
    model = random_model(a.model, dtype, device, a.int8)
    n_params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{a.model}: {n_params / 1e9:.2f}B parameters, {dtype}{' + int8' if a.int8 else ''} on {where}, "
          f"built in {time.perf_counter() - start:.1f} s")
    adapter = ModelAdapter(model, tokenizer, name=a.model, quantization="int8" if a.int8 else None)
    flops = 2.0 * n_params
    texts = [r["text"] for r in records]
    n_tokens = sum(len(tokenizer(prompt(t))["input_ids"]) for t in texts)
    timed(f"readout ({len(texts)} prompts)", lambda: label_logits(adapter, texts, batch_size=a.batch_size),
          n_tokens, flops, peak)
    timed(f"activations ({len(texts)} prompts)", lambda: extract(adapter, texts, a.batch_size), n_tokens, flops, peak)

    pairs = prepare_pairs(adapter, records, max_pairs=max_pairs)
    variants = [(resid_site(layer, (-1,)),) for layer in range(adapter.n_layers + 1)]
    timed(f"residual sweep ({len(pairs)} pairs x {len(variants)})",
          lambda: patch_pairs(adapter, pairs, variants, batch_size=a.batch_size),
          len(pairs) * len(variants), flops, peak)
    n_heads = adapter.n_layers * adapter.n_heads
    scores = timed(f"all-heads sweep ({len(pairs)} pairs x {n_heads})",
                   lambda: exact_last_position(adapter, pairs, a.batch_size),
                   len(pairs) * n_heads, flops, peak)
    run_tokens = sum(len(t) for t in pairs.run)
    timed(f"attribution ({len(pairs)} pairs)",
          lambda: attribute_heads(adapter, pairs, offsets=(-1,), batch_size=a.batch_size),
          run_tokens, 3 * flops, peak)
    patched, ld_run, _ = scores  # [P, L, H], [P]: the top 8 heads by mean effect go to 6b
    top = np.argsort(-np.abs((patched - ld_run[:, None, None]).mean(axis=0).reshape(-1)))[:8]
    heads = [head_site(int(i) // adapter.n_heads, int(i) % adapter.n_heads, range(-9, 0)) for i in top]
    timed(f"top-heads patching ({len(pairs)} pairs x {len(heads) + 1})",
          lambda: patch_pairs(adapter, pairs, [(h,) for h in heads] + [tuple(heads)], batch_size=a.batch_size),
          len(pairs) * (len(heads) + 1) * 9, flops, peak)
    steer = prepare_prompts(adapter, records[:64])
    directions = np.random.default_rng(0).normal(size=(a.steer, adapter.d_model)).astype(np.float32)
    timed(f"steering ({a.steer} directions x 64 prompts)",
          lambda: run_edits(adapter, steer, adapter.n_layers // 2, add=directions, batch_size=a.batch_size),
          a.steer * sum(len(t) for t in steer.tokens), flops, peak)
    result: dict[str, Any] = {"model": a.model, "dtype": str(dtype).removeprefix("torch."), "int8": a.int8,
                              "device": where, "params": n_params, "phases": dict(PHASES)}
    if device == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory {result['peak_gib']:.1f} GiB")
    settings = load_config("config/config.yaml")["models"].get(a.model)
    if settings:
        row = plan_model(a.model, {**settings, "batch_size": a.batch_size}, 24, known_architectures())
        result["plan"] = {k: row.get(k) for k in ("weights_gib", "total_gib", "batch_used", "fits")}
        print(f"plan (config/config.yaml, batch {a.batch_size}): weights {row['weights_gib']:.1f} GiB, "
              f"total {row['total_gib']:.1f} GiB on 24 GiB, fits {row['fits']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
