"""The 8-bit candidates on real weights: each quantised build against a full-precision one, one table, one JSON.

Builds (``--builds``): ``int8`` (weight-only int8 through torchao, the default 8-bit path), ``llm.int8``
(bitsandbytes LLM.int8), ``int8-rowwise`` (bitsandbytes without the outlier decomposition) and ``nf4``
(bitsandbytes 4-bit), each quantising every decoder linear layer of :func:`emolens.model.loading.load_model` with the
rest in ``--dtype``; ``float32`` and ``bfloat16`` unquantised. For each build, against the reference (float32 by
default) on the dataset's readout prompts (whole items, ``--max-items`` of them, seeded):

* equivalence: the ``equivalence`` rule's three largest differences (residual capture, readout, fast patching
  against the full-recompute oracle) on the first item's pair, and the batch noise (a prompt's label logits
  alone against inside a batch of 9 prompts of its length, and against a cached prefix + its last 1-3
  tokens), with the rule's verdict;
* fidelity: per residual index the relative error of the last-token residual (||build - ref|| / ||ref||, mean
  over prompts) and the same error per dimension in units of that dimension's sd across prompts (what a
  standardised probe reads: Gemma-3's norm is a few huge dimensions); the readout's agreement (argmax of the
  label logits, raw and calibrated) and KL(ref || build) of the full next-token distribution at the last
  position; at every ``--probe-every``-th index the frame-held-out probe accuracy on each build and the
  reference's probe scored on the build's activations;
* cost: seconds of the readout prompts' forwards, the loaded weights' bytes beside ``emolens plan``'s, and the
  plan's memory for ``--plan-model`` (gemma3_12b) at its batch size on a 24 GiB GPU.

    python benchmarks/int8_fidelity.py --config config/real.yaml --model gemma3_270m --out int8_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from sklearn.base import clone

from emolens import EMOTIONS
from emolens.config import load_config
from emolens.data.dataset import build_dataset
from emolens.data.readout import Readout
from emolens.engine.inputs import length_buckets, tokenize
from emolens.model.adapter import ModelAdapter
from emolens.model.architecture import known_architectures, resolve_architecture
from emolens.model.loading import QUANTIZATIONS, load_model, weight_memory
from emolens.model.plan import plan_model, weight_bytes
from emolens.phases.behaviour import readout_report
from emolens.phases.equivalence import identities
from emolens.phases.vectors import probe_accuracy
from emolens.stats.probes import probe_model
from emolens.stats.resampling import frame_groups, grouped_folds

BUILDS = ["float32", "bfloat16", *QUANTIZATIONS]  # unquantised in that dtype, or quantised with the rest in --dtype
FOLDS = 5  # frame-held-out probe folds, as the vectors phase's subspace.probe_folds default


@torch.inference_mode()
def run_build(adapter: ModelAdapter, tokens: list[list[int]], label_ids: list[int],
              batch_size: int) -> dict[str, np.ndarray]:
    """Last-token residuals [N, L+1, d] (float32), label logits [N, 4] and full next-token log-probs [N, V]."""
    n, sites = len(tokens), adapter.n_layers + 1
    resid = np.zeros((n, sites, adapter.d_model), dtype=np.float32)
    logprobs: list[torch.Tensor] = [torch.empty(0)] * n
    store: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def fn(x: torch.Tensor) -> None:
            store[i] = x[:, -1].float().cpu()
        return fn

    for batch in length_buckets([len(t) for t in tokens], batch_size):
        ids = torch.tensor([tokens[i] for i in batch], device=adapter.device)
        with adapter.hooks(resid={i: keep(i) for i in range(sites)}):
            out = adapter.model(input_ids=ids, logits_to_keep=1)
        resid[batch] = torch.stack([store[i] for i in range(sites)], dim=1).numpy()
        lp = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
        for row, i in enumerate(batch):
            logprobs[i] = lp[row]
    full = torch.stack(logprobs)  # [N, V]
    return {"resid": resid, "labels": full[:, label_ids].double().numpy(), "logprobs": full}


def agreement(ref: np.ndarray, new: np.ndarray) -> dict[str, float]:
    """Share of prompts whose predicted label agrees, raw and calibrated (each build's own mean label logit)."""
    raw = float(np.mean(ref.argmax(1) == new.argmax(1)))
    cal = float(np.mean((ref - ref.mean(0)).argmax(1) == (new - new.mean(0)).argmax(1)))
    return {"raw": raw, "calibrated": cal}


def probes(ref: np.ndarray, new: np.ndarray, labels: np.ndarray, frames: list[str], seed: int) -> dict[str, float]:
    """Frame-held-out probe accuracy on the reference, on the build, and the reference's probe on the build."""
    fold, crossed = grouped_folds(frames, FOLDS), np.empty(len(labels), dtype=object)
    for k in np.unique(fold):
        fitted = clone(probe_model(seed)).fit(ref[fold != k], labels[fold != k])
        crossed[fold == k] = fitted.predict(new[fold == k])
    return {"reference": probe_accuracy(ref, labels, frames, FOLDS, seed),
            "build": probe_accuracy(new, labels, frames, FOLDS, seed),
            "reference_probe_on_build": float((crossed == labels).mean())}


def compare(ref: dict[str, Any], new: dict[str, Any], labels: np.ndarray, frames: list[str], probe_at: list[int],
            seed: int) -> dict[str, Any]:
    """Every fidelity number of one build against the reference."""
    delta = new["resid"] - ref["resid"]  # [N, L+1, d]
    rel = (np.linalg.norm(delta, axis=-1) / np.maximum(np.linalg.norm(ref["resid"], axis=-1), 1e-30)).mean(axis=0)
    # the same error in the units a standardised probe reads: each dimension over its sd across prompts
    sd = ref["resid"].std(axis=0)  # [L+1, d]
    typical = np.linalg.norm(ref["resid"], axis=-1).mean(axis=0) / np.sqrt(sd.shape[-1])  # [L+1] rms per dimension
    kept = sd > 1e-3 * typical[:, None]  # dimensions all but constant across prompts (index 0's last token) left out
    standardised = np.array([np.sqrt(np.mean((delta[:, i, k] / sd[i, k]) ** 2)) if k.any() else np.nan
                             for i, k in enumerate(kept)])
    kl = (ref["logprobs"].exp() * (ref["logprobs"] - new["logprobs"])).sum(-1).clamp_min(0).double().numpy()
    return {"relative_error": rel.tolist(),
            "standardised_error": [None if np.isnan(v) else v for v in standardised.tolist()],
            "agreement": agreement(ref["labels"], new["labels"]),
            "kl": {"mean": float(kl.mean()), "median": float(np.median(kl)), "max": float(kl.max())},
            "finite": bool(np.isfinite(new["resid"]).all() and np.isfinite(new["labels"]).all()),
            "probe": {str(i): probes(ref["resid"][:, i], new["resid"][:, i], labels, frames, seed)
                      for i in probe_at}}


def build_settings(settings: dict[str, Any], build: str, dtype: str) -> dict[str, Any]:
    """A model's settings as one build loads them: unquantised in that dtype, or quantised with the rest in dtype."""
    if build in QUANTIZATIONS:
        return {**settings, "dtype": dtype, "quantization": build}
    return {**settings, "dtype": build, "quantization": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/real.yaml")
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--reference", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--builds", nargs="+", default=list(QUANTIZATIONS), choices=BUILDS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="compute dtype of the quantised builds (bfloat16 as the baseline on a GPU)")
    parser.add_argument("--max-items", type=int, default=None, help="whole items, a seeded choice (default all)")
    parser.add_argument("--probe-every", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plan-model", default="gemma3_12b", help="a baseline model planned in each quantisation")
    parser.add_argument("--plan-config", default="config/config.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="int8_fidelity.json")
    a = parser.parse_args()
    config, baseline = load_config(a.config), load_config(a.plan_config)
    settings, readout = config["models"][a.model], Readout.from_config(config.get("readout"))
    records = build_dataset()
    items = sorted({r["item_id"] for r in records})
    if a.max_items:
        keep = set(np.random.default_rng(a.seed).choice(items, a.max_items, replace=False))
        records = [r for r in records if r["item_id"] in keep]
    labels, frames = np.asarray([r["emotion"] for r in records]), frame_groups(records)
    known = known_architectures()
    arch = resolve_architecture(a.model, settings, known)[0]
    results: dict[str, Any] = {"model": a.model, "reference": a.reference, "dtype": a.dtype,
                               "n_prompts": len(records), "builds": {}}
    runs = {}
    for build in dict.fromkeys([a.reference, *a.builds]):
        started = time.perf_counter()
        build_set = build_settings(settings, build, a.dtype)
        adapter = load_model(build_set, name=f"{a.model}:{build}", device=a.device)
        loaded = time.perf_counter()
        ids = readout.label_token_ids(adapter.tokenizer)
        label_ids = [ids[e] for e in EMOTIONS]
        tokens = tokenize(adapter, [r["text"] for r in records], readout)
        runs[build] = run_build(adapter, tokens, label_ids, a.batch_size)
        forwards = time.perf_counter() - loaded
        quant = build_set["quantization"]
        planned = plan_model(a.plan_model, {**baseline["models"][a.plan_model], "quantization": quant,
                                            **({"dtype": build} if quant is None else {})},
                             baseline["gpu_memory_gib"], known)
        results["builds"][build] = {
            "seconds_load": loaded - started, "seconds_forwards": forwards,
            "readout_accuracy_calibrated": readout_report(runs[build]["labels"], labels)["accuracy_calibrated"],
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in adapter.model.parameters()}),
            "weight_bytes": weight_memory(adapter.model),
            "weight_bytes_plan": weight_bytes(arch, build_set["dtype"], quant),
            "equivalence": identities(adapter, records, tokens, label_ids),
            "plan": {k: planned.get(k) for k in ("model", "dtype", "quantization", "weights_gib", "total_gib",
                                                 "batch_used", "gpu_gib", "fits")}}
        n_sites = adapter.n_layers + 1
        del adapter
    probe_at = sorted({*range(0, n_sites, a.probe_every), n_sites - 1})
    for build in a.builds:
        if build != a.reference:
            results["builds"][build] |= compare(runs[a.reference], runs[build], labels, frames, probe_at, a.seed)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    print_tables(results, a.reference)


def print_tables(results: dict[str, Any], reference: str) -> None:
    """The candidates table (one row a build), then each build's fidelity per residual index."""
    builds = results["builds"]
    print(f"{results['model']}: {results['n_prompts']} readout prompts, each build against {reference}\n")
    print("| build | batch noise: in a batch / cached split | fast patching vs oracle | tolerance | equivalence "
          "| readout agreement raw / calibrated | KL mean / max | calibrated accuracy | probe (mean over indices) "
          f"| {reference} probe on it | forwards s | weights MB (plan) | {PLAN_NOTE} |")
    print("|" + "---|" * 13)
    for build, r in builds.items():
        eq, plan = r["equivalence"], r["plan"]
        noise = " / ".join("n/a" if v is None else f"{v:.2g}" for v in eq["batch_noise"].values())
        fid = ["", "", ""] if "agreement" not in r else [
            f"{r['agreement']['raw']:.3f} / {r['agreement']['calibrated']:.3f}",
            f"{r['kl']['mean']:.4f} / {r['kl']['max']:.3f}", ""]
        probes = r.get("probe", {})
        build_probe = np.mean([p["build"] for p in probes.values()]) if probes else np.nan
        crossed = np.mean([p["reference_probe_on_build"] for p in probes.values()]) if probes else np.nan
        print(f"| {build} | {noise} | {eq['max_difference']['patching']:.2g} | {eq['tolerance']:.3g} | "
              f"{'FAILS' if eq['failed'] else 'passes'} | {fid[0]} | {fid[1]} | {r['readout_accuracy_calibrated']:.3f} "
              f"| {build_probe:.3f} | {crossed:.3f} | {r['seconds_forwards']:.0f} | {r['weight_bytes'] / 1e6:.0f} "
              f"({r['weight_bytes_plan'] / 1e6:.0f}) | {plan['weights_gib']:.1f} / {plan['total_gib']:.1f} GiB at "
              f"batch {plan['batch_used']}, {'fits' if plan['fits'] else 'does NOT fit'} |")
    for build, r in builds.items():
        if "agreement" not in r:
            continue
        print(f"\n{build}: fidelity per residual index\n| index | relative error | standardised error (sd) | probe "
              f"{reference} | probe {build} | {reference} probe on {build} |\n|---|---|---|---|---|---|")
        for i, (rel, sd) in enumerate(zip(r["relative_error"], r["standardised_error"], strict=True)):
            p = r["probe"].get(str(i))
            cells = [f"{p['reference']:.3f}", f"{p['build']:.3f}", f"{p['reference_probe_on_build']:.3f}"] if p \
                else [""] * 3
            print(f"| {i} | {rel:.4f} | {'n/a' if sd is None else f'{sd:.3f}'} | " + " | ".join(cells) + " |")


PLAN_NOTE = "plan: gemma3_12b weights / total on 24 GiB"


if __name__ == "__main__":
    main()
