"""Int8 fidelity on real weights: a model loaded as gemma3_12b's setting loads it, against a full-precision build.

The int8 build is bitsandbytes LLM.int8 on every decoder linear layer, everything else in bfloat16
(``quantization: int8, dtype: bfloat16``, :func:`emolens.models.load_model`); a bfloat16 build
without int8 tells the cost of 16-bit compute from that of the int8 weights. On the dataset's readout
prompts (whole items, ``--max-items`` of them, seeded) each build is compared with the reference
(float32 by default): per residual index, the relative error of the last-token residual
(||build - ref|| / ||ref||, mean over prompts) and the same error per dimension in units of that
dimension's sd across prompts (what a standardised probe reads: Gemma-3's norm is a few huge
dimensions, so a small relative error can be large in the others); the readout's agreement (argmax of the four label
logits, raw and calibrated) and KL(ref || build) of the full next-token distribution at the last
position; and at every ``--probe-every``-th index the frame-held-out probe accuracy on each build
and the reference's probe scored on the build's activations. Writes one JSON and prints the table.

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
from emolens.activations import length_buckets, tokenize
from emolens.behaviour import readout_report
from emolens.config import load_config
from emolens.dataset import build_dataset, frame_groups
from emolens.models import ModelAdapter, load_model
from emolens.probes import probe_model
from emolens.readout import Readout
from emolens.resampling import grouped_folds
from emolens.vectors import probe_accuracy

BUILDS = {"float32": {"dtype": "float32"}, "bfloat16": {"dtype": "bfloat16"},
          "int8": {"dtype": "bfloat16", "quantization": "int8"}}  # int8 as config/config.yaml's gemma3_12b
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/real.yaml")
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--reference", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--builds", nargs="+", default=["bfloat16", "int8"], choices=sorted(BUILDS))
    parser.add_argument("--max-items", type=int, default=None, help="whole items, a seeded choice (default all)")
    parser.add_argument("--probe-every", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="int8_fidelity.json")
    a = parser.parse_args()
    config = load_config(a.config)
    settings, readout = config["models"][a.model], Readout.from_config(config.get("readout"))
    records = build_dataset()
    items = sorted({r["item_id"] for r in records})
    if a.max_items:
        keep = set(np.random.default_rng(a.seed).choice(items, a.max_items, replace=False))
        records = [r for r in records if r["item_id"] in keep]
    labels, frames = np.asarray([r["emotion"] for r in records]), frame_groups(records)
    results: dict[str, Any] = {"model": a.model, "reference": a.reference, "n_prompts": len(records), "builds": {}}
    runs = {}
    for build in [a.reference, *a.builds]:
        started = time.perf_counter()
        adapter = load_model({**settings, "quantization": None, **BUILDS[build]}, name=f"{a.model}:{build}",
                             device=a.device)
        ids = readout.label_token_ids(adapter.tokenizer)
        runs[build] = run_build(adapter, tokenize(adapter, [r["text"] for r in records], readout),
                                [ids[e] for e in EMOTIONS], a.batch_size)
        results["builds"][build] = {
            "seconds": time.perf_counter() - started,
            "readout_accuracy_calibrated": readout_report(runs[build]["labels"], labels)["accuracy_calibrated"],
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in adapter.model.parameters()})}
        n_sites = adapter.n_layers + 1
        del adapter
    probe_at = sorted({*range(0, n_sites, a.probe_every), n_sites - 1})
    for build in a.builds:
        results["builds"][build] |= compare(runs[a.reference], runs[build], labels, frames, probe_at, a.seed)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"{a.model}: {len(records)} readout prompts, each build against {a.reference}")
    for build in a.builds:
        r, ref_acc = results["builds"][build], results["builds"][a.reference]["readout_accuracy_calibrated"]
        print(f"\n{build} ({', '.join(r['dtypes'])}; {r['seconds']:.0f} s): readout agreement "
              f"{r['agreement']['raw']:.3f} raw, {r['agreement']['calibrated']:.3f} calibrated; KL mean "
              f"{r['kl']['mean']:.4f} median {r['kl']['median']:.4f} max {r['kl']['max']:.4f} nats; calibrated "
              f"accuracy {r['readout_accuracy_calibrated']:.3f} ({a.reference} {ref_acc:.3f})")
        print("| index | relative error | standardised error (sd) | probe " + a.reference + " | probe " + build
              + " | " + a.reference + " probe on " + build + " |\n|---|---|---|---|---|---|")
        for i, (rel, sd) in enumerate(zip(r["relative_error"], r["standardised_error"], strict=True)):
            p = r["probe"].get(str(i))
            cells = [f"{p['reference']:.3f}", f"{p['build']:.3f}", f"{p['reference_probe_on_build']:.3f}"] if p \
                else [""] * 3
            print(f"| {i} | {rel:.4f} | {'n/a' if sd is None else f'{sd:.3f}'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
