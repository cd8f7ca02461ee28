"""Phase 6 on two-layer models of every family: head screening, attribution patching, head patching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from emolens.data.dataset import build_dataset
from emolens.engine.attribution import attribute_heads
from emolens.engine.pairs import prepare_pairs
from emolens.engine.patching import clean_ld, collect, head_site, patch_pairs
from emolens.io import ResultFileError, load_pickle
from emolens.model.loading import load_model
from emolens.phases.heads import exact_last_position, run_head_patching, run_screening, top_heads
from emolens.stats.resampling import frame_split

FAMILIES = ("gpt2", "gpt_neox", "gpt_neo", "llama", "qwen3", "gemma3")

# What makes LD exactly linear in the last layer's head activations: the final norm (and Gemma-3's
# norm on the attention output) become identities and the last block's MLP writes zeros, so the
# path from a last-layer head to the label logits is o_proj, then the unembedding: linear maps.
LINEARISE = {  # family -> (modules replaced by identity, linear layers zeroed)
    "gpt2": (["transformer.ln_f"], ["transformer.h.1.mlp.c_proj"]),
    "gpt_neox": (["gpt_neox.final_layer_norm"], ["gpt_neox.layers.1.mlp.dense_4h_to_h"]),
    "gpt_neo": (["transformer.ln_f"], ["transformer.h.1.mlp.c_proj"]),
    "llama": (["model.norm"], ["model.layers.1.mlp.down_proj"]),
    "qwen3": (["model.norm"], ["model.layers.1.mlp.down_proj"]),
    "gemma3": (["model.language_model.norm", "model.language_model.layers.1.post_attention_layernorm"],
               ["model.language_model.layers.1.mlp.down_proj"]),
}


@pytest.fixture(scope="module")
def records(varied_records):
    return varied_records[:16]  # four items, 48 pairs (some of different lengths): two items (24 pairs) in each half


def _linearised(path):
    """A fresh copy of a tiny checkpoint whose LD is linear in the last layer's head inputs."""
    adapter = load_model({"path": str(path), "dtype": "float32"}, device="cpu")
    identities, zeroed = LINEARISE[adapter.config.model_type]
    for name in identities:
        parent, _, child = name.rpartition(".")
        setattr(adapter.model.get_submodule(parent), child, nn.Identity())
    with torch.no_grad():
        for name in zeroed:
            for p in adapter.model.get_submodule(name).parameters():
                p.zero_()
        adapter.attn_out[-1].weight.mul_(100.0)  # still linear; lifts effects well above fp32 noise
    return adapter


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_is_exact_when_ld_is_linear(tiny_checkpoints, records, family):
    adapter = _linearised(tiny_checkpoints[family])
    assert adapter.softcap is None
    pairs = prepare_pairs(adapter, records)
    assert (~pairs.same_length).any()  # prompts of different lengths line up by role
    ld_patched, ld_run, _ = exact_last_position(adapter, pairs, batch_size=16)
    exact = ld_patched[:, -1] - ld_run[:, None]  # [P, H], LD_patched - LD_run of the last layer's heads
    atp = attribute_heads(adapter, pairs, offsets=(-3, -2, -1), batch_size=16)  # [P, L, H, 3]
    assert np.abs(exact).max() > 1e-2  # the heads do move the metric
    tol = {"atol": 1e-4 * np.abs(exact).max(), "rtol": 1e-4}
    np.testing.assert_allclose(atp[:, -1, :, -1], exact, **tol)
    # Earlier positions of the last layer reach the last position through nothing: zero.
    np.testing.assert_allclose(atp[:, -1, :, :-1], 0.0, atol=tol["atol"])


def test_attribution_is_not_exact_in_general(tiny_adapters, records):
    """Control: through the nonlinear layers the estimate differs from the exact effect."""
    adapter = tiny_adapters["llama"]
    pairs = prepare_pairs(adapter, records)
    ld_patched, ld_run, _ = exact_last_position(adapter, pairs, batch_size=16)
    atp = attribute_heads(adapter, pairs, batch_size=16)[..., -1]
    assert np.abs(atp - (ld_patched - ld_run[:, None, None])).max() > 1e-6


@pytest.fixture(scope="module")
def screenings(tiny_adapters, records, tmp_path_factory):
    folder = tmp_path_factory.mktemp("screening")
    out = {}
    for family in FAMILIES:
        out[family] = folder / f"head_scores_{family}.json"
        run_screening(tiny_adapters[family], records, out[family], top_k=3, max_pairs=24, batch_size=16,
                      seed=0, message_positions=2, min_separation=0.0, settings={"dtype": "float32"})
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_run_screening(tiny_adapters, records, screenings, family):
    adapter = tiny_adapters[family]
    result = json.loads(screenings[family].read_text())
    L, H = adapter.n_layers, adapter.n_heads
    for key in ("exact_last_position", "attribution", "attribution_last_position"):
        assert np.array(result[key], dtype=float).shape == (L, H), key
    assert result["n_pairs"] == 24 and 0 < result["n_pairs_included"] < 24  # random weights: some pairs kept
    assert sum(c["pairs"] for c in result["contrast_counts"].values()) == 24
    assert -1 <= result["spearman"] <= 1 and -1 <= result["spearman_all_positions"] <= 1
    exact = np.array(result["exact_last_position"], dtype=float)
    assert result["top_heads"] == top_heads(exact, 3) and len(result["top_heads"]) == 3
    assert abs(exact[tuple(result["top_heads"][0])]) == np.abs(exact).max()
    # the saved exact effects are the reference engine's on the selection half, a ratio of sums over kept pairs
    pairs = prepare_pairs(adapter, frame_split(records, 0)[0], max_pairs=24, seed=0)
    ld_run, ld_donor = clean_ld(adapter, pairs)
    kept = ld_donor - ld_run >= 0.0
    variants = [(head_site(layer, h),) for layer in range(L) for h in range(H)]
    ref = patch_pairs(adapter, pairs, variants, method="reference")[0]
    ratio = (ref[kept] - ld_run[kept, None]).sum(0) / (ld_donor - ld_run)[kept].sum()
    np.testing.assert_allclose(exact.ravel(), ratio, atol=1e-4, rtol=0)
    assert result["provenance"]["settings"] == {"dtype": "float32"}


@pytest.mark.parametrize("family", FAMILIES)
def test_run_head_patching(tiny_adapters, records, screenings, family, tmp_path):
    adapter = tiny_adapters[family]
    out = tmp_path / f"{family}_head_patching.pkl"
    run_head_patching(adapter, records, screenings[family], out, max_pairs=24, batch_size=16, seed=0,
                      n_resamples=200, message_positions=2, min_separation=-np.inf)  # both items kept
    res = load_pickle(out, schema="emolens.head_patching/1")
    heads = json.loads(screenings[family].read_text())["top_heads"]
    assert res["heads"] == heads
    P, K = len(res["pairs"]), len(heads)
    assert P == 24  # every pair, whatever its lengths
    assert res["effect_single"].shape == (P, K) and res["effect_joint"].shape == (P,)
    assert res["summary_single"].shape == (K,) and res["ci_single"].shape == (K, 2) and res["ci_joint"].shape == (2,)
    assert (res["ci_single"][:, 0] <= res["summary_single"] + 1e-9).all()
    assert res["ci_joint"][0] <= res["summary_joint"] <= res["ci_joint"][1]
    assert res["position_roles"][-2:] == ["message -1", "message -2"]
    # against the full-recompute reference on the confirmation half, every readout position patched
    pairs = prepare_pairs(adapter, frame_split(records, 0)[1], max_pairs=24, seed=0)
    assert not set(res["items"]) & set(json.loads(screenings[family].read_text())["items"])  # 6a never saw them
    sites = [head_site(layer, h, res["positions"]) for layer, h in heads]
    ref = patch_pairs(adapter, pairs, [(s,) for s in sites] + [tuple(sites)], method="reference")[0]
    np.testing.assert_allclose(res["ld_patched"], ref, atol=1e-4, rtol=0)


def test_frame_split_is_disjoint_by_frame_and_stratified_by_register():
    records = build_dataset()
    selection, confirmation = frame_split(records, seed=0)
    sel, conf = ({r["frame"] for r in half} for half in (selection, confirmation))
    assert not sel & conf and len(sel) + len(conf) == 64 and abs(len(sel) - len(conf)) <= 1  # whole frames
    assert len(selection) + len(confirmation) == 900 and len(selection) % 4 == 0  # whole items
    for register in ("explicit", "implicit"):
        n = [len({r["frame"] for r in half if r["register"] == register}) for half in (selection, confirmation)]
        assert abs(n[0] - n[1]) <= 1, (register, n)
    assert frame_split(records, seed=0) == (selection, confirmation) and frame_split(records, seed=1) != (
        selection, confirmation)


def test_head_patching_refuses_bad_screening(tiny_adapters, records, tmp_path):
    adapter = tiny_adapters["gpt2"]
    missing = tmp_path / "head_scores_gpt2.json"
    with pytest.raises(ResultFileError, match=f"{missing}: head screening file not found"):
        run_head_patching(adapter, records, missing, tmp_path / "out.pkl")
    missing.write_text('{"top_heads": [[0, 1]')
    with pytest.raises(ResultFileError, match="truncated or corrupt JSON"):
        run_head_patching(adapter, records, missing, tmp_path / "out.pkl")
    missing.write_text(json.dumps({"top_heads": [[0, 1], [7, 0]]}))
    with pytest.raises(ResultFileError, match=r"head \(7, 0\) does not exist"):
        run_head_patching(adapter, records, missing, tmp_path / "out.pkl")
    assert not (tmp_path / "out.pkl").exists()


def _ld_with_head_shift(adapter, run: list[int], ld_index: np.ndarray, token_ids, layer: int, head: int,
                        shift: torch.Tensor) -> float:
    """LD of the run prompt with ``shift`` [d_head] added to one head's input at the last position."""
    def hook(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x.view(*x.shape[:2], adapter.n_heads, -1)[:, -1, head] += shift.to(x.dtype)
        return x

    with torch.no_grad(), adapter.hooks(head_inputs={layer: hook}):
        hidden = adapter.forward_final(torch.tensor([run]), use_cache=False).last_hidden_state
        labels = adapter.label_logits(hidden[:, -1], token_ids)[0]
    return float(labels[ld_index[0]] - labels[ld_index[1]])


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_is_the_derivative_of_the_exact_patch(tiny_checkpoints, records, family):
    """In float64, AtP of every head equals the central difference of LD along (donor - run): the
    estimate is the patch's first-order term, however nonlinear the full patch is."""
    adapter = load_model({"path": str(tiny_checkpoints[family]), "dtype": "float32"}, device="cpu")
    adapter.model.double()
    pairs = prepare_pairs(adapter, records)
    subset = np.arange(0, len(pairs), 6)
    atp = attribute_heads(adapter, pairs, subset=subset, batch_size=16)[..., -1]  # [S, L, H]
    layers = list(range(adapter.n_layers))
    eps, worst, scale = 1e-2, 0.0, 0.0  # float32 RMSNorm inside llama-like blocks limits smaller steps
    for s, i in enumerate(subset):
        _, run = collect(adapter, [pairs.run[i]], pairs.token_ids, offsets=(-1,), heads=layers, batch_size=1)
        _, donor = collect(adapter, [pairs.donor[i]], pairs.token_ids, offsets=(-1,), heads=layers, batch_size=1)
        for layer in layers:
            delta = (donor[("head", layer)] - run[("head", layer)])[0, 0].view(adapter.n_heads, -1)
            for h in range(adapter.n_heads):
                up, down = (_ld_with_head_shift(adapter, pairs.run[i], pairs.ld_index[i], pairs.token_ids, layer, h,
                                                sign * eps * delta[h]) for sign in (1, -1))
                worst = max(worst, abs((up - down) / (2 * eps) - atp[s, layer, h]))
                scale = max(scale, abs(atp[s, layer, h]))
    assert scale > 1e-3 and worst < 3e-4 * scale, (worst, scale)


def test_verification_requires_the_top_heads_by_exact_effect(tiny_adapters, screenings, tmp_path):
    from emolens.report.checks import check_screening

    path = screenings["llama"]
    assert check_screening(path, tiny_adapters["llama"].n_layers)[0]
    scores = json.loads(path.read_text())
    scores["top_heads"] = scores["top_heads"][::-1]  # no longer the largest first
    (tmp_path / "s.json").write_text(json.dumps(scores))
    assert not check_screening(tmp_path / "s.json", tiny_adapters["llama"].n_layers)[0]
