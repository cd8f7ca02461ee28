"""Attribution patching (AtP; Nanda 2023, Kramar et al. 2024): every head's patching effect to first order.

One forward and backward of the clean run prompt gives the gradient of the logit difference with
respect to each head's input to the attention output projection; its dot product with (donor - run)
estimates LD_patched - LD_run. It is the derivative of the exact patch along (donor - run), so it
misses effects that are nonlinear in the patch; head screening compares it with exact patching.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from emolens.engine.inputs import length_buckets
from emolens.engine.pairs import Pairs
from emolens.engine.patching import collect, keep_input, logit_difference
from emolens.model.adapter import ModelAdapter


def attribute_heads(adapter: ModelAdapter, pairs: Pairs, *, offsets: Sequence[int] = (-1,),
                    subset: Sequence[int] | None = None, batch_size: int = 32,
                    desc: str = "attribution") -> np.ndarray:
    """Attribution patching (gradient x activation difference) of every head: [len(subset), L, H, len(offsets)].

    For each pair, one forward and backward of the clean run prompt gives dLD/d(o_proj input); the
    estimate for head h of layer l at an offset from the end is that gradient's d_head slice dotted
    with (donor - run) at the same offset from each prompt's end, so prompts of any lengths line up
    by role. It estimates LD_patched - LD_run: divide by (LD_donor - LD_run) to compare with
    normalised effects.
    """
    subset = np.arange(len(pairs)) if subset is None else np.asarray(subset, dtype=int)
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    layers = adapter.head_layers  # a hybrid's other blocks stay NaN
    offsets = tuple(offsets)
    out = np.full((len(subset), n_layers, n_heads, len(offsets)), np.nan)
    device = adapter.device
    for batch in tqdm(length_buckets([len(pairs.run[i]) for i in subset], batch_size), desc=desc, leave=False):
        idx = subset[batch]
        length = len(pairs.run[idx[0]])
        _, donor = collect(adapter, [pairs.donor[i] for i in idx], pairs.token_ids, offsets=offsets,
                           heads=layers, batch_size=batch_size)
        run_ids = torch.tensor([pairs.run[i] for i in idx], device=device)  # [batch, pos]
        captured: dict[int, torch.Tensor] = {}

        def leaf(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]: gradients start here
            return x.detach().requires_grad_(True)

        keep = {layer: keep_input(captured, layer) for layer in layers}
        with torch.enable_grad(), adapter.hooks(resid={0: leaf}, head_inputs=keep):
            hidden = adapter.forward_final(run_ids, use_cache=False).last_hidden_state
            labels = adapter.label_logits(hidden[:, -1], pairs.token_ids)  # [batch, n_labels]
            ld = logit_difference(labels, torch.from_numpy(pairs.ld_index[idx]).to(device))
            grads = torch.autograd.grad(ld.sum(), [captured[layer] for layer in layers], allow_unused=True)
        pos = torch.tensor(offsets, dtype=torch.long, device=device) + length
        for layer, g in zip(layers, grads, strict=True):
            g = torch.zeros_like(captured[layer]) if g is None else g  # a head the readout never sees
            run_act = captured[layer].detach()[:, pos].float()  # [batch, n_off, n_heads * d_head]
            delta = donor[("head", layer)].float() - run_act
            score = (g[:, pos].float() * delta).unflatten(-1, (n_heads, -1)).sum(-1)  # [batch, n_off, head]
            out[batch, layer] = score.permute(0, 2, 1).cpu().double().numpy()
    return out
