"""Benchmark: prefix-cached patching against full recompute, on a GPT-2-small-shaped model.

Setup: a randomly initialised GPT-2 small (12 layers, d_model 768, 12 heads, vocabulary 50257), fp32
on CPU with 2 threads; 32 (source, target) pairs of 64 distinct random prompts, all 20 tokens long
(so no prompt is shared between pairs: the fast path's worst case; the real dataset's quadruples
share every prompt between 3 pairs, which the fast path deduplicates).

All sides do the whole job of a sweep: the donor prompts' clean pass (activations and LD), the
run prompts' clean LD, and every patch variant, and each side normalises with its own clean LDs.
- reference: for every variant, one full forward of the whole run prompt, batched over the 32
  prompts, full-vocabulary logits at every position (as TransformerLens's patching utilities do);
- last-logits reference: the same full recompute, but the model computes the logits of the last
  position only (``logits_to_keep=1``): the fair reference, without the unembedding of the 19
  positions nobody reads;
- fast: the run prompts' 19-token prefix once with the KV cache, then one token per (variant, pair)
  with the cache copied along the batch, label-token logits only.
- TransformerLens 4 (``--transformer-lens``): the same weights in a ``TransformerBridge``, the run
  prompts as one batch per variant as its patching utilities run them, two ways: its own utility
  (``patching.generic_activation_patch`` with the last position in ``index_df``) and a plain loop of
  ``run_with_hooks``, one per variant, with a hook that writes the donor's last position from the
  clean cache (``run_with_cache`` on the donors, outside the timing, as ours). Its residual sweep
  patches ``hook_resid_pre`` 0..11 (12 variants: ours also patches index 12, the last block's output).
Two sweeps: residual indices 0..12 at the last position (13 variants) and every head at the last
position (144 variants). Prints the times, the fast path's ratio to each reference (the first mixes
the prefix cache with the skipped unembedding, the second is the prefix cache alone) and the largest
differences of each reference from the fast path. The machine may be shared: the references
(minutes) run once, which averages the load over their run; the fast path (seconds) is the median
of three runs, so one burst of someone else's work does not decide it.

Run: ``python benchmarks/bench_patching.py --transformer-lens`` (about ten minutes on 2 cores, mostly the references).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from emolens import EMOTIONS
from emolens.engine.pairs import Pairs
from emolens.engine.patching import ENGINES, Donor, collect, head_site, normalised, patch_reference, resid_site
from emolens.model.adapter import ModelAdapter

MIN_DENOMINATOR = 0.05
TOLERANCE = 1e-4  # largest |LD| difference from the fast path that counts as equal (fp32, 12 layers)
# name -> engine; the references run once, the fast path is the median of --repeats runs
METHODS = {
    "reference": ENGINES["reference"],
    "last-logits reference": partial(patch_reference, logits_to_keep=1),
    "fast": ENGINES["fast"],
}


def make_pairs(n_pairs: int, length: int, vocab: int, seed: int) -> Pairs:
    """n_pairs pairs of distinct random prompts of ``length`` tokens, random distinct labels."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(vocab, size=len(EMOTIONS), replace=False)
    tokens = rng.integers(0, vocab, size=(2 * n_pairs, length)).tolist()
    ld_index = np.array([rng.choice(len(EMOTIONS), size=2, replace=False) for _ in range(n_pairs)])
    return Pairs(ids=[(f"s{i}", f"t{i}") for i in range(n_pairs)], run=tokens[1::2], donor=tokens[0::2],
                 ld_index=ld_index, label_token_ids={e: int(t) for e, t in zip(EMOTIONS, labels, strict=True)},
                 direction="denoising")


def transformer_lens(model: GPT2LMHeadModel, pairs: Pairs, sweeps: list[str]) -> dict[str, dict[str, float]]:
    """Seconds of each sweep through TransformerLens 4, by its patching utility and by a plain hook loop."""
    import pandas as pd
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    from emolens.model.organisms import train_tokenizer

    with tempfile.TemporaryDirectory() as d:  # the bridge boots from a checkpoint with a tokenizer (ids given here)
        model.save_pretrained(d)
        train_tokenizer(["a patching benchmark"]).save_pretrained(d)
        bridge = TransformerBridge.boot_transformers(d, hf_model=copy.deepcopy(model), device="cpu",
                                                     tokenizer=AutoTokenizer.from_pretrained(d))
    bridge.eval()
    run, donor = torch.tensor(pairs.run), torch.tensor(pairs.donor)
    rows = torch.arange(len(run))
    labels = torch.tensor([[pairs.token_ids[j] for j in ld] for ld in pairs.ld_index])  # [pairs, 2]

    def metric(logits: torch.Tensor) -> torch.Tensor:  # mean LD at the last position
        last = logits[:, -1]
        return (last[rows, labels[:, 0]] - last[rows, labels[:, 1]]).mean()

    with torch.inference_mode():
        _, cache = bridge.run_with_cache(donor)
    last, n_layers, n_heads = run.shape[1] - 1, bridge.cfg.n_layers, bridge.cfg.n_heads
    setups = {  # sweep -> (activation, its hook per layer, TransformerLens's setter, index rows (layer, pos[, head]))
        sweeps[0]: ("resid_pre", "blocks.{}.hook_resid_pre", patching.layer_pos_patch_setter,
                    [(layer, last) for layer in range(n_layers)]),
        sweeps[1]: ("z", "blocks.{}.attn.hook_z", patching.layer_pos_head_vector_patch_setter,
                    [(layer, last, h) for layer in range(n_layers) for h in range(n_heads)]),
    }
    times: dict[str, dict[str, float]] = {}
    for name, (activation, hook, setter, index) in setups.items():
        columns = ["layer", "pos", "head"][:len(index[0])]
        start = time.perf_counter()
        with torch.inference_mode():
            patching.generic_activation_patch(bridge, run, cache, metric, setter, activation,
                                              index_df=pd.DataFrame(index, columns=columns))
        utility = time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            for idx in index:
                point = hook.format(idx[0])

                def patch(x: torch.Tensor, hook: object, idx: tuple = idx, point: str = point,
                          setter: Callable = setter) -> torch.Tensor:
                    return setter(x, idx, cache[point])

                metric(bridge.run_with_hooks(run, fwd_hooks=[(point, patch)]))
        times[name] = {"utility": utility, "hook loop": time.perf_counter() - start}
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per forward, both paths")
    parser.add_argument("--transformer-lens", action="store_true",
                        help="also time both sweeps through TransformerLens 4 on the same weights")
    parser.add_argument("--skip-references", action="store_true",
                        help="time the fast path alone (no equality check against the full-recompute references)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fast-path runs (median); the long reference runs once, which averages out load")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    model = GPT2LMHeadModel(config).float().eval()
    adapter = ModelAdapter(model, name="gpt2-small-random")
    pairs = make_pairs(args.pairs, args.length, config.vocab_size, seed=0)
    L, H = adapter.n_layers, adapter.n_heads
    run_ids = torch.tensor(pairs.run)  # [pairs, pos]: one length, one batch
    index = torch.from_numpy(pairs.ld_index)
    print(f"GPT-2 small shape, random init, fp32, CPU, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; {len(pairs)} pairs of distinct random prompts, {args.length} tokens each")
    start = time.perf_counter()
    donor_logits, acts = collect(adapter, pairs.donor, pairs.token_ids, resid=range(L + 1), heads=range(L),
                                 batch_size=args.batch_size)
    t_donor = time.perf_counter() - start
    ld_donor = (donor_logits.gather(1, index[:, :1]) - donor_logits.gather(1, index[:, 1:])).squeeze(1).numpy()
    print(f"donors' clean pass (shared input of both paths, as TransformerLens's clean cache): {t_donor:.2f} s")
    sweeps = {
        "residual last position": [(resid_site(layer),) for layer in range(L + 1)],
        "all heads last position": [(head_site(layer, h),) for layer in range(L) for h in range(H)],
    }
    tl_times = transformer_lens(model, pairs, list(sweeps)) if args.transformer_lens else {}
    methods = {m: e for m, e in METHODS.items() if m == "fast" or not args.skip_references}
    failed = []
    for name, variants in sweeps.items():
        times, effects, lds = {}, {}, {}
        for method, engine in methods.items():
            runs = []
            for _ in range(args.repeats if method == "fast" else 1):
                start = time.perf_counter()
                ld = engine(adapter, run_ids, Donor((-1,), acts), [*variants, ()], pairs.token_ids, index,
                            batch_size=args.batch_size).double().numpy()  # variants, then unpatched
                runs.append(time.perf_counter() - start)
            times[method] = float(np.median(runs))
            lds[method], effects[method] = ld, normalised(ld[:, :-1], ld[:, -1], ld_donor)
        t_fast = times["fast"]
        # A random model gives some pairs LD_donor ~ LD_run, where the normalisation divides fp32 noise
        # by ~0: compare effects on the pairs whose denominator is not degenerate.
        ok = np.abs(ld_donor - lds["fast"][:, -1]) > MIN_DENOMINATOR
        print(f"{name} ({len(variants)} variants + the unpatched run), fast {t_fast:.2f} s; "
              f"{ok.sum()} pairs with |LD_donor - LD_run| > {MIN_DENOMINATOR} for effects:")
        for way, t_tl in tl_times.get(name, {}).items():
            print(f"  vs TransformerLens {way} {t_tl:.2f} s: ratio {t_tl / t_fast:.1f}x")
        for method in [m for m in methods if m != "fast"]:
            t_ref = times[method]
            ld_diff = np.abs(lds["fast"] - lds[method]).max()
            equal = ld_diff <= TOLERANCE
            failed += [] if equal else [f"{name}, {method}"]
            print(f"  vs {method} {t_ref:.2f} s: ratio {t_ref / t_fast:.1f}x (with the donors' pass on both "
                  f"sides {(t_ref + t_donor) / (t_fast + t_donor):.1f}x); max |LD diff| {ld_diff:.1e} "
                  f"({'equal' if equal else 'NOT equal'} within {TOLERANCE:g}), max |effect diff| "
                  f"{np.abs(effects['fast'] - effects[method])[ok].max():.1e}")
        if not args.skip_references:
            print(f"  last-logits reference vs full-vocabulary reference: "
                  f"{times['reference'] / times['last-logits reference']:.2f}x faster")
    if failed:
        raise SystemExit(f"fast path differs from: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
