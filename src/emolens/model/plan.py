"""The memory plan: what each model needs on the GPU and the host, and the batch size it will run at.

Method. Nothing is loaded or measured. From each model's architecture numbers and parameter counts
(:mod:`emolens.model.architecture`) we estimate, per batch:

* weights: every parameter in the model's dtype; with ``quantization: int8`` (torchao weight-only int8,
  the default) or ``llm.int8`` (bitsandbytes) the decoder's linear layers are stored as int8 (plus one
  scale per output row) while embeddings, lm_head, norms, biases and a vision side stay in the compute
  dtype (``dtype``);
* KV cache of the prefix-cached patching, as :func:`emolens.engine.patching.patch_fast` builds it
  (:func:`patching_kv_bytes`): the prefix cache of the batch's run prompts, plus the cache copies of
  one chunk of (variant, prompt) rows: a group of variants patched from position p runs in chunks
  of batch x T / (T - p) rows (at most variants x batch), each row with its own T-token cache, in
  buffers reused from chunk to chunk and remade larger when a later group needs more rows (old and
  new live together for that moment). The peak over the three sweeps counts: head screening (every
  head at the last position, p = T - 1), a residual chunk (``layer_chunk`` indices at each of the
  readout positions, p from T - positions to T - 1) and head patching (top-K heads, all positions);
  positions = the readout suffix's :data:`SUFFIX_TOKENS` + ``patching.message_positions``. Every
  layer is counted with the full T tokens (a sliding-window layer shorter than the prompt keeps
  fewer: an upper bound there);
* activations: the residual stream [batch, tokens, d_model] of every layer kept for extraction,
  plus the largest transient tensor (attention scores or the MLP hidden);
* a fixed allowance for the CUDA context and allocator fragmentation.

A model fits when the sum stays under ``gpu_memory_gib`` less a safety margin. The configured
``batch_size`` is halved (as the CUDA out-of-memory backoff does at run time) until it fits; a model
whose weights alone do not fit is reported as not fitting at batch size 1. The host memory line is
the activation pickle: N prompts x (L+1) x d_model x 2 arrays ("last" and "mean") in float32.

Inputs: a validated config (:func:`emolens.config.load_config`). Output: one row (dict) per model,
and a plain-text table of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emolens.config import load_config
from emolens.model.architecture import (
    Architecture,
    known_architectures,
    linear_params,
    linear_rows,
    n_params,
    other_params,
    resolve_architecture,
    vision_params,
)

PROMPT_TOKENS = 24  # typical readout prompt length (text + suffix) with the real tokenizers; not measured
SUFFIX_TOKENS = 7  # "\nThe emotion of this message is" in the real tokenizers: the positions every prompt shares
N_PROMPTS = 900  # prompts in the phase-1 dataset
CUDA_OVERHEAD_GIB = 1.0  # CUDA context, cuBLAS workspace and allocator fragmentation
SAFETY_MARGIN = 0.10  # fraction of gpu_memory_gib left unplanned
GIB = 1024**3

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# --- memory -----------------------------------------------------------------------------------------
# Bytes per quantised weight (NF4: half a byte plus a float32 absmax per block of 64) and per output row of a
# quantised linear map (bitsandbytes: a float32 scale; NF4's scales are in its absmax).
QUANT_BYTES = {"int8": 1.0, "llm.int8": 1.0, "int8-rowwise": 1.0, "nf4": 0.5 + 4 / 64}
ROW_SCALE_BYTES = {"llm.int8": 4, "int8-rowwise": 4, "nf4": 0}


def weight_bytes(a: Architecture, dtype: str, quantization: str | None) -> int:
    """Weights on the device: quantised decoder linears (int8 or 4-bit codes plus their scales), everything
    else (embeddings, lm_head, norms, a vision side, all left out of quantisation) in ``dtype``."""
    b = _BYTES[dtype]
    rest = (other_params(a) + sum(vision_params(a))) * b
    if quantization is None:
        return linear_params(a) * b + rest
    # torchao's int8 (the default) keeps a scale in the compute dtype and an int8 zero point per row
    row = b + 1 if quantization == "int8" else ROW_SCALE_BYTES[quantization]
    return int(linear_params(a) * QUANT_BYTES[quantization]) + linear_rows(a) * row + rest


def kv_cache_bytes(a: Architecture, dtype: str, batch: int, tokens: int) -> int:
    """Keys and values of every layer for ``batch`` copies of a ``tokens``-long prefix."""
    return 2 * a.n_layers * a.n_kv_heads * a.d_head * tokens * _BYTES[dtype] * batch


def patching_kv_bytes(a: Architecture, dtype: str, batch: int, tokens: int, groups: list[tuple[int, int]]) -> int:
    """Peak KV bytes of one :func:`~emolens.engine.patching.patch_fast` call on ``batch`` run prompts, ``tokens`` long.

    ``groups``: (p, variants) in the order the engine runs them (p ascending), p the first patched
    position. The prefix cache holds p tokens of each prompt; the clean suffix pass copies it once per prompt
    (``batch`` rows), then a chunk holds at most min(variants x batch, batch x T // (T - p)) rows (fewer where
    the variants start at different blocks, which run apart), each a copy of the whole T-token cache, in
    buffers that grow to the largest chunk so far; when they grow, the old ones are still held by the previous
    chunk's cache. An upper bound: equal when a group's variants all start at one block.
    """
    peak, rows_held = 0, 0
    for start, variants in groups:
        for rows in (batch, min(variants * batch, batch * tokens // (tokens - start))):
            live = rows_held + rows if rows > rows_held else rows_held
            rows_held = max(rows_held, rows)
            peak = max(peak, kv_cache_bytes(a, dtype, live, tokens) + kv_cache_bytes(a, dtype, batch, start))
    return peak


def sweep_groups(a: Architecture, tokens: int, positions: int, layer_chunk: int,
                 top_k: int) -> dict[str, list[tuple[int, int]]]:
    """(p, variants) groups of the three patching sweeps, the unpatched run riding along the last group."""
    T, n_pos = tokens, max(1, min(positions, tokens - 1))
    chunk = min(layer_chunk, a.n_layers + 1)
    return {
        "head screening": [(T - 1, a.n_layers * a.n_heads + 1)],  # every head at the last position
        "residual chunk": [(T - k, chunk) for k in range(n_pos, 1, -1)] + [(T - 1, chunk + 1)],
        "head patching": [(T - n_pos, top_k + 2)],  # K heads alone and jointly, all positions at once
    }


def activation_bytes(a: Architecture, dtype: str, batch: int, tokens: int) -> int:
    """Residual stream of every layer kept for extraction, plus the largest transient tensor."""
    b = _BYTES[dtype]
    kept = (a.n_layers + 1) * batch * tokens * a.d_model * b  # L+1 x [batch, tokens, d_model]
    scores = batch * a.n_heads * tokens * tokens * b  # [batch, heads, tokens, tokens]
    mlp = (3 if a.gated else 2) * batch * tokens * a.d_mlp * b  # [batch, tokens, d_mlp]: gate/up/act
    return kept + max(scores, mlp)


def pickle_bytes(a: Architecture, n_prompts: int) -> int:
    """Host memory of the activation pickle: "last" and "mean", each [N, L+1, d_model] float32."""
    return 2 * n_prompts * (a.n_layers + 1) * a.d_model * 4


def _gpu_weight_cap(offload: dict[str, Any] | None) -> float | None:
    """Bytes of weights accelerate keeps on GPU 0 under an ``offload.max_memory`` budget, if any."""
    budget = (offload or {}).get("max_memory") or {}
    for key in (0, "0", "cuda:0", "cuda"):
        if key in budget:
            text = str(budget[key]).strip().upper().replace("IB", "B")
            units = {"GB": GIB, "MB": 1024**2, "KB": 1024, "B": 1}
            for unit, scale in units.items():
                if text.endswith(unit):
                    return float(text[: -len(unit)]) * scale
            return float(text)
    return None


def plan_model(name: str, settings: dict[str, Any], gpu_gib: float, known: dict[str, dict[str, Any]],
               tokens: int = PROMPT_TOKENS, n_prompts: int = N_PROMPTS, positions: int = SUFFIX_TOKENS + 4,
               top_k: int = 8) -> dict[str, Any]:
    """One model's row: parameters, memory at the batch size it will use, and whether it fits.

    ``positions``: readout positions of the patching sweeps; ``top_k``: heads of head patching.
    """
    dtype, quant = settings.get("dtype", "float32"), settings.get("quantization")
    batch = settings.get("batch_size", 16)
    row: dict[str, Any] = {"model": name, "dtype": dtype, "quantization": quant, "batch_size": batch,
                           "batch_used": batch, "gpu_gib": gpu_gib, "fits": None, "note": ""}
    arch, source = resolve_architecture(name, settings, known)
    row["source"] = source if arch else "unknown"
    if arch is None:
        row["note"] = source
        return row
    weights = weight_bytes(arch, dtype, quant)
    cap = _gpu_weight_cap(settings.get("offload"))
    gpu_weights = min(weights, cap) if cap is not None else weights
    budget = gpu_gib * (1 - SAFETY_MARGIN) * GIB

    sweeps = sweep_groups(arch, tokens, positions, settings.get("layer_chunk", 8), top_k)

    def need(b: int) -> tuple[int, int, float]:
        kv = max(patching_kv_bytes(arch, dtype, b, tokens, groups) for groups in sweeps.values())
        act = activation_bytes(arch, dtype, b, tokens)
        return kv, act, gpu_weights + kv + act + CUDA_OVERHEAD_GIB * GIB

    used = batch
    while need(used)[2] > budget and used > 1:
        used = max(1, used // 2)
    kv, act, total = need(used)
    vis_linear, vis_other = vision_params(arch)
    row.update({
        "family": arch.family, "n_layers": arch.n_layers, "d_model": arch.d_model,
        "params": n_params(arch), "vision_params": vis_linear + vis_other,
        "weights_gib": weights / GIB, "gpu_weights_gib": gpu_weights / GIB,
        "kv_gib": kv / GIB, "activations_gib": act / GIB, "total_gib": total / GIB,
        "host_pickle_gib": pickle_bytes(arch, n_prompts) / GIB,
        "batch_used": used, "fits": total <= budget,
    })
    notes = []
    if cap is not None and weights > cap:
        notes.append(f"offload: {(weights - cap) / GIB:.1f} GiB of weights on CPU")
    if not row["fits"]:
        notes.append("does not fit even at batch size 1: use quantization: int8, offload, or a larger GPU")
    elif used < batch:
        notes.append(f"batch_size {batch} does not fit; lower it to {used}")
    if vis_linear + vis_other:
        notes.append(f"+{_count(vis_linear + vis_other)} vision tower params in weights")
    row["note"] = "; ".join(notes)
    return row


def plan(config: dict[str, Any], tokens: int = PROMPT_TOKENS, n_prompts: int = N_PROMPTS) -> list[dict[str, Any]]:
    """One row per model of a validated config, in config order."""
    known = known_architectures()
    gpu_gib = config.get("gpu_memory_gib", 24)
    patching = config.get("patching", {})
    positions = SUFFIX_TOKENS + patching.get("message_positions", 4)
    return [plan_model(name, settings, gpu_gib, known, tokens=tokens, n_prompts=n_prompts, positions=positions,
                       top_k=patching.get("top_k_heads", 8))
            for name, settings in config["models"].items()]


# --- output -----------------------------------------------------------------------------------------
def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _gib(x: float) -> str:
    return f"{x:.2f}" if x >= 0.01 else f"{x:.4f}"


def format_plan(rows: list[dict[str, Any]], tokens: int = PROMPT_TOKENS, n_prompts: int = N_PROMPTS) -> str:
    """A plain-text table of the plan rows, with the assumptions underneath."""
    header = ["model", "arch", "params", "weights", "GiB", "KV", "act/batch", "total", "GPU", "fits",
              "batch", "host pickle", "note"]
    table = [header]
    for r in rows:
        batch = str(r["batch_size"]) if r["batch_used"] == r["batch_size"] else f"{r['batch_size']}->{r['batch_used']}"
        if r["fits"] is None:
            table.append([r["model"], r["source"], "?", r["dtype"], "?", "?", "?", "?", f"{r['gpu_gib']:g}", "?",
                          batch, "?", r["note"]])
            continue
        weights = f"{r['quantization']}+{r['dtype']}" if r["quantization"] else r["dtype"]
        table.append([r["model"], r["source"], _count(r["params"]), weights, _gib(r["weights_gib"]),
                      _gib(r["kv_gib"]), _gib(r["activations_gib"]), _gib(r["total_gib"]), f"{r['gpu_gib']:g}",
                      "yes" if r["fits"] else "NO", batch, _gib(r["host_pickle_gib"]), r["note"]])
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in table]
    lines.insert(1, "-" * len(lines[0].rstrip()))
    lines += [
        "",
        f"Memory in GiB. KV and act/batch at the batch size used; {tokens} tokens per prompt "
        f"(PROMPT_TOKENS, not measured); total adds {CUDA_OVERHEAD_GIB:g} GiB CUDA overhead and must stay "
        f"under GPU x {1 - SAFETY_MARGIN:.2f}.",
        "KV = the patching engine's peak: the prefix cache plus one chunk of batch x T / (T - p) rows, each "
        "with a T-token cache copy (head screening, residual chunks or head patching, whichever is largest).",
        "int8 = weight-only int8 (torchao), llm.int8 = bitsandbytes LLM.int8: decoder linear layers in int8 "
        "with a scale per row; embeddings, lm_head and norms stay in the compute dtype.",
        f"host pickle = activations file in host memory: {n_prompts} prompts x (L+1) x d_model x 2 arrays "
        "in float32.",
    ]
    return "\n".join(line.rstrip() for line in lines)


def run(configfile: str | Path, tokens: int = PROMPT_TOKENS) -> list[dict[str, Any]]:
    """Load and validate the config, print the plan table, and return its rows."""
    rows = plan(load_config(configfile), tokens=tokens)
    print(format_plan(rows, tokens=tokens))
    return rows
