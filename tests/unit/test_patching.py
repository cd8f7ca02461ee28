"""The patching engine and phase 5 on two-layer models of every family.

The fast prefix-cached path must equal the full-recompute reference; the identity checks of the
design must hold; run_chunk + merge must round-trip and refuse bad chunks by name.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from emolens.data.dataset import build_dataset
from emolens.engine.chunks import chunk_name, chunk_ranges
from emolens.engine.pairs import make_pairs, prepare_pairs
from emolens.engine.patching import (
    Donor,
    clean_ld,
    collect,
    head_site,
    normalised,
    patch_fast,
    patch_pairs,
    patch_reference,
    resid_site,
)
from emolens.engine.shortcuts import expand_cache
from emolens.io import ResultFileError, load_pickle
from emolens.phases.residual import merge, run_chunk

FAMILIES = ("gpt2", "gpt_neox", "gpt_neo", "llama", "qwen3", "gemma3")
ABSOLUTE_POSITIONS = {"gpt2", "gpt_neo"}  # learned position embeddings; the others are rotary
ATOL = 1e-4


def items(n: int, first: int = 0) -> list[dict]:
    """The records of n consecutive items of the built-in dataset (4 prompts each, 12 pairs)."""
    records = build_dataset()
    return records[4 * first:4 * (first + n)]


@pytest.fixture(scope="module")
def records(varied_records):
    return varied_records[:12]  # three items, some pairs of different lengths


def _close_effects(ld_a, ld_b, ld_run, ld_donor):
    """Patched LDs agree, and so do normalised effects wherever the denominator is not tiny."""
    np.testing.assert_allclose(ld_a, ld_b, atol=ATOL, rtol=0)
    ok = np.broadcast_to(np.abs(ld_donor - ld_run) > 1e-2, np.shape(ld_a))
    np.testing.assert_allclose(normalised(ld_a, ld_run, ld_donor)[ok], normalised(ld_b, ld_run, ld_donor)[ok],
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_reference_residual(tiny_adapters, records, family):
    adapter = tiny_adapters[family]
    pairs = prepare_pairs(adapter, records)
    assert (~pairs.same_length).any() and min(map(len, pairs.run)) > 8  # prompts exceed the windows
    ld_run, ld_donor = clean_ld(adapter, pairs)
    L = adapter.n_layers
    last = [(resid_site(layer),) for layer in range(L + 1)]
    earlier = [(resid_site(layer, (o,)),) for layer in range(L + 1) for o in (-2, -4)]
    for variants, subset in ((last, None), (earlier, None)):  # every pair, whatever its lengths
        kw = {"subset": subset, "batch_size": 5}
        fast, fast_run, fast_donor = patch_pairs(adapter, pairs, variants, **kw)
        ref, ref_run, ref_donor = patch_pairs(adapter, pairs, variants, method="reference", **kw)
        idx = slice(None) if subset is None else subset
        for got in (fast_run, ref_run):  # the engines' own unpatched runs agree with a plain forward
            np.testing.assert_allclose(got, ld_run[idx], atol=1e-5, rtol=0)
        for got in (fast_donor, ref_donor):
            np.testing.assert_allclose(got, ld_donor[idx], atol=1e-5, rtol=0)
        _close_effects(fast, ref, ld_run[idx, None], ld_donor[idx, None])


@pytest.mark.parametrize("family", FAMILIES)
def test_starting_at_the_first_patched_block_equals_the_reference(tiny_adapters, records, family, monkeypatch):
    """Every block's variants run from that block (the blocks below return their input): residual indices and
    heads at the last position and at two positions, against full recompute; the shortcut really ran."""
    import emolens.engine.patching as engine

    adapter = tiny_adapters[family]
    pairs = prepare_pairs(adapter, records, max_pairs=8, seed=2)
    starts = []
    real = engine.skipping_blocks
    monkeypatch.setattr(engine, "skipping_blocks",
                        lambda a, first, clean: starts.append(first) or real(a, first, clean))
    L, H = adapter.n_layers, adapter.n_heads
    variants = [(resid_site(layer),) for layer in range(L + 1)] + [(head_site(layer, h),) for layer in range(L)
                                                                   for h in range(H)]
    variants += [(resid_site(L - 1, (-2, -1)),), ()]
    _, acts = collect(adapter, pairs.donor, pairs.token_ids, offsets=(-2, -1), resid=range(L + 1), heads=range(L))
    index = torch.from_numpy(pairs.ld_index)
    for i in range(len(pairs)):  # one pair a call: the rows of a run prompt have one length
        run, donor = torch.tensor([pairs.run[i]]), Donor((-2, -1), {k: a[i:i + 1] for k, a in acts.items()})
        fast = patch_fast(adapter, run, donor, variants, pairs.token_ids, index[i:i + 1], every_block_apart=True)
        ref = patch_reference(adapter, run, donor, variants, pairs.token_ids, index[i:i + 1])
        np.testing.assert_allclose(fast.numpy(), ref.numpy(), atol=ATOL)
    # every block but the first started from its clean input; GPT-Neo's blocks also return their attention
    # weights, which the engine cannot tell from a state the next block needs: it runs every block
    assert set(starts) == (set() if family == "gpt_neo" else set(range(1, L))), starts


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_reference_heads(tiny_adapters, records, family):
    adapter = tiny_adapters[family]
    pairs = prepare_pairs(adapter, records, max_pairs=24, seed=1)
    ld_run, ld_donor = clean_ld(adapter, pairs)
    L, H = adapter.n_layers, adapter.n_heads
    last = [(head_site(layer, h),) for layer in range(L) for h in range(H)]
    earlier = [(head_site(layer, h, (-3,)),) for layer in range(L) for h in range(H)]
    n = min(len(t) for t in pairs.run + pairs.donor)
    span = range(-n, 0)  # every position of the shortest prompts: no prefix left to cache
    joint = [(head_site(0, 1, (-5, -2)), head_site(L - 1, H - 1, (-5,)), resid_site(1, (-4,)))]
    for variants, subset in ((last, None), (earlier, None), (joint, None)):
        fast = patch_pairs(adapter, pairs, variants, subset=subset, batch_size=6)[0]
        ref = patch_pairs(adapter, pairs, variants, subset=subset, method="reference", batch_size=6)[0]
        idx = slice(None) if subset is None else subset
        _close_effects(fast, ref, ld_run[idx, None], ld_donor[idx, None])
    short = [i for i in range(len(pairs)) if len(pairs.run[i]) == n]
    whole = [(head_site(layer, h, span),) for layer in range(L) for h in (0, H - 1)]
    fast = patch_pairs(adapter, pairs, whole, subset=short)[0]
    ref = patch_pairs(adapter, pairs, whole, subset=short, method="reference")[0]
    _close_effects(fast, ref, ld_run[short, None], ld_donor[short, None])


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_chunks_share_a_growing_prefix_cache(tiny_adapters, records, family):
    """Many row chunks and several patch positions reuse one prefix cache without corrupting it."""
    adapter = tiny_adapters[family]
    pairs = prepare_pairs(adapter, records)
    lengths = [len(r) for r in pairs.run]
    length = max(set(lengths), key=lengths.count)
    idx = [i for i, n in enumerate(lengths) if n == length][:6]  # run prompts repeat across these pairs
    _, acts = collect(adapter, [pairs.donor[i] for i in idx], pairs.token_ids, offsets=(-3, -1),
                      resid=range(adapter.n_layers + 1), heads=range(adapter.n_layers))
    donor = Donor((-3, -1), acts)
    L, H = adapter.n_layers, adapter.n_heads
    variants = ([(resid_site(layer, (-1,)),) for layer in range(L + 1)] + [()]
                + [(head_site(layer, h, (-3,)),) for layer in range(L) for h in range(H)]
                + [(resid_site(0, (-1,)), head_site(L - 1, 0, (-3, -1)))])
    run_ids = torch.tensor([pairs.run[i] for i in idx])
    index = torch.from_numpy(pairs.ld_index[idx])
    ref = patch_reference(adapter, run_ids, donor, variants, pairs.token_ids, index)
    for batch_size in (1, 100):  # 1: chunks of `length` one-token rows, so several per position
        fast = patch_fast(adapter, run_ids, donor, variants, pairs.token_ids, index, batch_size=batch_size)
        torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # full layers; sliding-window layers past their window
@torch.inference_mode()
def test_expand_cache_gathers_rows_into_reused_buffers(tiny_adapters, records, family):
    """Copies hold the chosen rows, reuse one buffer per layer, and leave the prefix cache as it was."""
    adapter = tiny_adapters[family]
    ids = torch.tensor([t[:10] for t in prepare_pairs(adapter, records).run[:3]])
    cache = adapter.forward_final(ids, use_cache=True).cache
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    index, buffers = torch.tensor([2, 0, 2, 1]), {}
    first = expand_cache(cache, index, 1, buffers)
    second = expand_cache(cache, index[:3], 1, buffers)
    for layer, copy1, copy2, (keys, values) in zip(cache.layers, first.layers, second.layers, before, strict=True):
        torch.testing.assert_close(copy1.keys, keys[index], atol=0, rtol=0)
        torch.testing.assert_close(copy2.values, values[index[:3]], atol=0, rtol=0)
        assert copy1.keys.data_ptr() == copy2.keys.data_ptr()  # the second copy reuses the first's buffer
        assert torch.equal(layer.keys, keys) and layer.keys.shape[0] == 3  # the prefix cache is untouched
    new_keys = torch.ones_like(first.layers[0].keys[:, :, :1])
    full_keys, _ = second.layers[0].update(new_keys[:3], new_keys[:3])
    assert full_keys.shape[-2] == before[0][0].shape[-2] + 1 and torch.equal(full_keys[:, :, -1:], new_keys[:3])


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_checks(tiny_adapters, records, family):
    """Index L at the last position gives 1; layer 0 gives 0 where the last tokens embed alike."""
    adapter = tiny_adapters[family]
    pairs = prepare_pairs(adapter, records)
    assert all(r[-1] == d[-1] for r, d in zip(pairs.run, pairs.donor, strict=True))  # both end in the suffix's "is"
    ld_run, ld_donor = clean_ld(adapter, pairs)
    ld = patch_pairs(adapter, pairs, [(resid_site(adapter.n_layers),), (resid_site(0),)])[0]
    np.testing.assert_allclose(ld[:, 0], ld_donor, atol=1e-5, rtol=0)
    ok = np.abs(ld_donor - ld_run) > 1e-3
    np.testing.assert_allclose(normalised(ld[:, 0], ld_run, ld_donor)[ok], 1.0, atol=1e-3)
    alike = pairs.same_length if family in ABSOLUTE_POSITIONS else np.ones(len(pairs), bool)
    np.testing.assert_allclose(ld[alike, 1], ld_run[alike], atol=1e-5, rtol=0)
    np.testing.assert_allclose(normalised(ld[:, 1], ld_run, ld_donor)[alike & ok], 0.0, atol=1e-3)
    if family in ABSOLUTE_POSITIONS:  # the check is not vacuous: other lengths move the last position
        assert np.abs(ld[~alike, 1] - ld_run[~alike]).max() > 1e-4


def test_make_pairs_and_subsample():
    recs = items(5)
    pairs = make_pairs(recs)
    assert len(pairs) == 5 * 12
    assert all(s["item_id"] == t["item_id"] and s["emotion"] != t["emotion"] for s, t in pairs)
    assert len({(s["id"], t["id"]) for s, t in pairs}) == 60
    sub = make_pairs(recs, max_pairs=10, seed=3)
    assert [(s["id"], t["id"]) for s, t in sub] == [(s["id"], t["id"]) for s, t in make_pairs(recs, 10, 3)]
    assert len(sub) == 10 and sub != make_pairs(recs, 10, 4)


def test_direction_swaps_run_and_donor(tiny_adapters):
    adapter = tiny_adapters["llama"]
    den = prepare_pairs(adapter, items(1))
    noi = prepare_pairs(adapter, items(1), direction="noising")
    assert den.ids == noi.ids and den.run == noi.donor and den.donor == noi.run
    assert (den.ld_index == noi.ld_index).all()  # LD is always source label minus target label
    with pytest.raises(ValueError, match="direction"):
        prepare_pairs(adapter, items(1), direction="sideways")


def test_chunk_ranges_and_names():
    assert chunk_ranges(2, 2) == [(0, 1), (2, 2)]
    assert chunk_ranges(32, 8) == [(0, 7), (8, 15), (16, 23), (24, 31), (32, 32)]
    assert sum(b - a + 1 for a, b in chunk_ranges(11, 5)) == 12
    assert chunk_name(8, 15) == "layers_08-15.pkl"


@pytest.fixture(scope="module")
def chunks(tiny_adapters, records, tmp_path_factory):
    """Two chunks of the gemma3 sweep (indices 0-1 and 2) and their folder."""
    adapter = tiny_adapters["gemma3"]
    folder = tmp_path_factory.mktemp("chunks") / "gemma3"
    paths = []
    for a, b in chunk_ranges(adapter.n_layers, 2):
        paths.append(folder / chunk_name(a, b))
        run_chunk(adapter, records, range(a, b + 1), paths[-1], message_positions=2, max_pairs=30, batch_size=8,
                  seed=0, settings={"dtype": "float32"})
    return adapter, paths


def test_run_chunk_and_merge(chunks, tmp_path):
    adapter, paths = chunks
    first = load_pickle(paths[0], schema="emolens.residual_chunk/1")
    n_pos = len(first["positions"])
    roles = first["position_roles"]
    assert first["layers"] == [0, 1] and first["positions"] == [-(k + 1) for k in range(n_pos)]
    assert roles[0] == "suffix ' is'" and roles[-2:] == ["message -1", "message -2"]  # the suffix, then the message
    assert first["effect"].shape == (30, 2, n_pos) and len(first["pairs"]) == 30
    assert first["direction"] == "denoising" and first["suffix"].startswith("\n")
    assert "config_hash" in first["provenance"]
    out = tmp_path / "gemma3_residual_sweep.pkl"
    merge(paths, out, adapter.n_layers, n_resamples=200, min_separation=-np.inf)
    sweep = load_pickle(out, schema="emolens.residual_sweep/1")
    effect = sweep["effect"]
    assert sweep["layers"] == [0, 1, 2] and effect.shape == (30, 3, n_pos)
    assert sweep["summary"].shape == sweep["ci_low"].shape == sweep["ci_high"].shape == (3, n_pos)
    assert not np.isnan(effect).any()  # every pair at every position, whatever its lengths
    assert (~sweep["same_length"]).any()
    ok = np.abs(sweep["ld_clean_donor"] - sweep["ld_clean_run"]) > 1e-3
    np.testing.assert_allclose(effect[ok, 2, 0], 1.0, atol=1e-3)  # index L at the last position
    np.testing.assert_allclose(sweep["summary"][2, 0], 1.0, atol=1e-6)
    assert (sweep["ci_low"] <= sweep["summary"] + 1e-9).all() and (sweep["summary"] <= sweep["ci_high"] + 1e-9).all()
    assert sum(c["pairs"] for c in sweep["contrast_counts"].values()) == 30


def test_merge_excludes_pairs_below_the_separation_and_sums_ratios(chunks, tmp_path):
    adapter, paths = chunks
    out = tmp_path / "sweep.pkl"
    raw = load_pickle(paths[0])
    separation = raw["ld_clean_donor"] - raw["ld_clean_run"]
    threshold = float(np.median(separation))
    merge(paths, out, adapter.n_layers, n_resamples=200, min_separation=threshold)
    sweep = load_pickle(out)
    kept = separation >= threshold
    assert 0 < kept.sum() < len(kept)
    assert (sweep["included"] == kept).all() and sweep["n_pairs_included"] == kept.sum()
    counts = sweep["contrast_counts"]
    assert sum(c["excluded"] for c in counts.values()) == (~kept).sum()
    for name, c in counts.items():  # counted per contrast, by hand
        mine = np.array([x == name for x in sweep["contrasts"]])
        assert c == {"pairs": mine.sum(), "included": (mine & kept).sum(), "excluded": (mine & ~kept).sum()}
    # the summary is the ratio of sums over the kept pairs, by hand
    gain = sweep["ld_patched"][kept] - sweep["ld_clean_run"][kept, None, None]
    np.testing.assert_allclose(sweep["summary"], gain.sum(0) / separation[kept].sum(), rtol=1e-10)
    assert sweep["n_items"] == len({i for i, k in zip(sweep["items"], kept, strict=True) if k})


def test_merge_refuses_missing_chunk(chunks, tmp_path):
    adapter, paths = chunks
    with pytest.raises(ResultFileError, match=r"residual indices 2-2 are in no chunk.*layers_02-02\.pkl") as e:
        merge(paths[:1], tmp_path / "out.pkl", adapter.n_layers)
    assert "snakemake -R" in str(e.value) and not (tmp_path / "out.pkl").exists()
    gone = tmp_path / "layers_02-02.pkl"
    with pytest.raises(ResultFileError, match=rf"{gone}: file not found; rebuild it with: snakemake -R {gone}"):
        merge([paths[0], gone], tmp_path / "out.pkl", adapter.n_layers)


def test_merge_refuses_truncated_chunk(chunks, tmp_path):
    adapter, paths = chunks
    bad = tmp_path / paths[1].name
    bad.write_bytes(paths[1].read_bytes()[:200])
    with pytest.raises(ResultFileError, match=rf"{bad}: .*truncated.*; rebuild it with: snakemake -R {bad}"):
        merge([paths[0], bad], tmp_path / "out.pkl", adapter.n_layers)


def test_merge_refuses_foreign_chunk(chunks, tiny_adapters, records, tmp_path):
    adapter, paths = chunks
    foreign = tmp_path / paths[1].name  # same layers, other pairs (another max_pairs)
    run_chunk(adapter, records, [2], foreign, message_positions=2, max_pairs=20, batch_size=8)
    with pytest.raises(ResultFileError, match=rf"{foreign}: foreign chunk \(its pairs differ.*snakemake -R"):
        merge([paths[0], foreign], tmp_path / "out.pkl", adapter.n_layers)
    other = load_pickle(paths[1])
    other["schema"] = "emolens.something_else/1"
    wrong = tmp_path / "wrong" / paths[1].name
    wrong.parent.mkdir()
    wrong.write_bytes(pickle.dumps(other))
    with pytest.raises(ResultFileError, match=rf"{wrong}: schema is 'emolens.something_else/1'"):
        merge([paths[0], wrong], tmp_path / "out.pkl", adapter.n_layers)
    with pytest.raises(ResultFileError, match="residual index 0 is in both"):
        merge([paths[0], paths[0], paths[1]], tmp_path / "out.pkl", adapter.n_layers)
