"""Effect sizes, tests, BH pooling and power match their definitions, with frames as the unit;
run_* write the promised JSON; k is rank-aware and never fails on null or degenerate input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from emolens import EMOTIONS
from emolens.io import save_pickle
from emolens.phases.aligned_dims import k_axis_scores, run_k
from emolens.phases.emotion_structure import EmotionGrams
from emolens.phases.statistics import frame_tests, run_effect, run_power
from emolens.stats import families
from emolens.stats.geometry import emotion_vectors
from emolens.stats.power import detectable_d, required_n
from emolens.stats.resampling import ratio_of_sums, sign_flip_pvalue


def test_prospective_power_reproduces_cohens_table():
    assert required_n(0.5, 0.05, 0.8) == 34  # one-sample / paired
    assert required_n(0.2, 0.05, 0.8) == 199 and required_n(0.8, 0.05, 0.8) == 15
    d = detectable_d(34, 0.05, 0.8)
    assert 0.49 < d < 0.5 and TTestPower().power(d, 34, 0.05) == pytest.approx(0.8, abs=1e-4)


def test_ratio_of_sums_is_the_hand_computation_and_resamples_items():
    rng = np.random.default_rng(0)
    items = np.repeat([f"i{k:02d}" for k in range(20)], 6)  # 20 items (each its own frame here), 6 pairs each
    den = rng.uniform(1, 3, 120)
    item_effect = rng.normal(0.5, 1.0, (20, 3))  # pairs of one item share their item's effect
    num = den[:, None] * (np.repeat(item_effect, 6, 0) + rng.normal(0, 0.1, (120, 3)))
    num[:, 2] = 2 * den  # every pair at ratio 2: a constant cell has a point CI
    ratio, low, high = ratio_of_sums(num, den, items, items, 500, seed=0)
    np.testing.assert_allclose(ratio, num.sum(0) / den.sum(), rtol=1e-12)
    assert (low[:2] < ratio[:2]).all() and (ratio[:2] < high[:2]).all() and low[2] == high[2] == 2.0
    # items, not pairs, are resampled: duplicating every pair of an item leaves the CI as wide
    wide = ratio_of_sums(np.repeat(num, 2, 0), np.repeat(den, 2), np.repeat(items, 2), np.repeat(items, 2), 500,
                         seed=0)
    assert wide[2][0] - wide[1][0] == pytest.approx(high[0] - low[0], rel=0.25)
    pairs = np.array([f"p{k:03d}" for k in range(120)])
    pairs_as_units = ratio_of_sums(num, den, pairs, pairs, 500, seed=0)
    assert pairs_as_units[2][0] - pairs_as_units[1][0] < high[0] - low[0]  # correlated pairs: narrower, wrongly


def test_frame_tests_match_their_definitions():
    rng = np.random.default_rng(1)
    items = np.repeat([f"i{k:02d}" for k in range(60)], 4)  # 60 items of 4 pairs, 2 items per frame
    frames = np.repeat([f"f{k:02d}" for k in range(30)], 8)
    sep = rng.uniform(1, 2, 240)
    gain = sep[:, None] * rng.normal([0.6, 0.0], 0.5, (240, 2))
    out = frame_tests(gain, sep, items, frames, 300, 2000, seed=0)
    g = np.add.reduceat(gain, np.arange(0, 240, 8))  # frames are consecutive and sorted here
    r = g / np.add.reduceat(sep, np.arange(0, 240, 8))[:, None]
    d = r.mean(0) / r.std(0, ddof=1)
    np.testing.assert_allclose(out["cohen_d"], d)
    np.testing.assert_allclose(out["hedges_g"], d * (1 - 3 / (4 * 29 - 1)))
    assert out["n_frames"].tolist() == [30, 30] and out["n_items"].tolist() == [60, 60]
    assert out["n_pairs"].tolist() == [240, 240] and out["p_perm"][0] < 0.01 and out["p_perm"][1] > 0.01


def test_frame_tests_with_no_kept_pair_report_nothing_to_test():
    """A model that separates no pair cleanly: NaN statistics and zero counts, not a crash."""
    out = frame_tests(np.zeros((0, 3)), np.zeros(0), [], [], 100, 100, seed=0)
    assert all(np.isnan(out[k]).all() for k in ("effect", "ci_low", "p_perm", "cohen_d"))
    assert out["n_pairs"].tolist() == out["n_frames"].tolist() == [0, 0, 0]


def test_frame_sign_flip_agrees_with_a_mixed_model():
    """The frame-level sign-flip test against statsmodels' MixedLM with frame and item random effects
    (intercept's Wald p) on pair data with frame effects: the same decisions and ordered p-values."""
    import pandas as pd
    import statsmodels.formula.api as smf
    from scipy.stats import spearmanr

    rng = np.random.default_rng(11)
    flips, mixed = [], []
    for effect in np.repeat([0.0, 0.15, 0.3], 6):
        frames = np.repeat(np.arange(24), 16)  # 24 frames x 4 items x 4 pairs
        items = np.repeat(np.arange(96), 4)
        r = effect + rng.normal(0, 0.3, 24)[frames] + rng.normal(0, 0.1, 96)[items] + rng.normal(0, 0.1, 384)
        sep = np.ones(384)
        flips.append(frame_tests(r[:, None], sep, items.astype(str), frames.astype(str), 100, 2000, 0)["p_perm"][0])
        data = pd.DataFrame({"r": r, "frame": frames, "item": items})
        fit = smf.mixedlm("r ~ 1", data, groups="frame", vc_formula={"item": "0 + C(item)"}).fit(reml=True)
        mixed.append(float(fit.pvalues["Intercept"]))
    flips, mixed = np.array(flips), np.array(mixed)
    assert spearmanr(flips, mixed).statistic > 0.8
    assert ((flips <= 0.05) == (mixed <= 0.05)).mean() >= 0.85


def test_sign_flip_pvalue_separates_effect_from_null():
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 30), np.zeros(30)])
    p = sign_flip_pvalue(x, 2000, rng)
    assert p[0] < 0.01 and p[1] > 0.05 and p[2] == 1.0


def test_bh_pools_layers_and_heads_into_one_family():
    rng = np.random.default_rng(5)
    residual = {"p_perm": rng.uniform(0, 0.1, (3, 4))}
    heads = {"p_perm": rng.uniform(0, 0.1, 5)}
    joint = {"p_perm": np.array(0.001)}
    residual["p_perm"][0, 0] = np.nan
    n_significant = families.pool([residual, heads, joint], 0.05)
    flat = np.concatenate([residual["p_perm"].ravel(), heads["p_perm"], [0.001]])
    expected = multipletests(flat[~np.isnan(flat)], method="fdr_bh")[1]
    got = np.concatenate([residual["p_bh"].ravel(), heads["p_bh"], [joint["p_bh"]]])
    assert np.isnan(got[0]) and got[1:] == pytest.approx(expected)
    assert residual["p_bh"].shape == (3, 4) and heads["significant"].dtype == bool
    assert n_significant == int((expected < 0.05).sum())


def _write_effects(tmp_path, name, rng):
    n_items, per_item = 12, 4
    items = [f"i{k:02d}" for k in range(n_items) for _ in range(per_item)]
    frames = [f"f{k // 2:02d}" for k in range(n_items) for _ in range(per_item)]  # 6 frames of 2 items
    P = len(items)
    run, sep = rng.normal(0, 1, P), rng.uniform(0.5, 3, P)  # a few pairs below min_separation 1
    ld = run[:, None, None] + sep[:, None, None] * rng.normal(0.3, 0.5, (P, 3, 2))  # [P, layers, positions]
    ld[:, 2, 0] = run + sep  # the identity cell: every pair moves to the donor
    sweep, heads = tmp_path / f"{name}_residual_sweep.pkl", tmp_path / f"{name}_head_patching.pkl"
    common = {"items": items, "frames": frames, "ld_clean_run": run, "ld_clean_donor": run + sep, "separation": sep,
              "included": sep >= 1.0, "provenance": {}}
    save_pickle({"schema": "emolens.residual_sweep/1", "layers": [0, 1, 2], "positions": [-1, -2],
                 "position_roles": ["suffix ' is'", "message -1"], "ld_patched": ld, **common}, sweep)
    save_pickle({"schema": "emolens.head_patching/1", "heads": [(0, 1), (1, 0)],
                 "ld_patched": run[:, None] + sep[:, None] * rng.normal(0.2, 0.3, (P, 3)), **common}, heads)
    return sweep, heads


def test_run_effect_and_run_power_write_promised_keys(tmp_path):
    sweep, heads = _write_effects(tmp_path, "tiny", np.random.default_rng(6))
    run_effect([sweep], [heads], tmp_path / "effect.json", seed=0, n_boot=200, n_perm=500)
    effect = json.loads((tmp_path / "effect.json").read_text())
    tables = effect["models"]["tiny"]
    for key in ("effect", "cohen_d", "hedges_g", "ci_low", "ci_high", "p_perm", "p_bh", "significant", "n_frames",
                "n_items", "n_pairs"):
        assert np.shape(tables["residual"][key]) == (3, 2) and np.shape(tables["heads"][key]) == (2,)
        assert key in tables["joint"]
    res = tables["residual"]
    assert res["effect"][2][0] == pytest.approx(1.0) and res["cohen_d"][2][0] is None  # every frame at 1
    assert res["p_perm"][2][0] is None and res["p_perm"][0][0] is None  # identity cells are not tests
    assert tables["family"]["tests"] == 4 + 2 + 1 and effect["unit"].startswith("frame")
    assert res["n_frames"][1][1] <= 6 and res["n_items"][1][1] <= 12 and "provenance" in effect
    register_of = {f"i{k:02d}": "explicit" if k < 6 else "implicit" for k in range(12)}  # frames 0-2 / 3-5
    run_effect([sweep], [heads], tmp_path / "by_register.json", seed=0, n_boot=200, n_perm=500,
               register_of=register_of)
    by = json.loads((tmp_path / "by_register.json").read_text())["models"]["tiny"]["by_register"]
    assert set(by) == {"explicit", "implicit"}
    frames = [by[g]["residual_last"]["n_frames"][0] for g in by]
    assert all(f <= 3 for f in frames) and sum(frames) == res["n_frames"][0][0]  # the registers split the frames
    assert np.shape(by["explicit"]["residual_last"]["effect"]) == (3,) and "effect" in by["implicit"]["joint"]
    run_power([sweep], [heads], tmp_path / "power.json", alpha=0.05, power=0.8)
    power = json.loads((tmp_path / "power.json").read_text())
    assert power["frames_required"] == [required_n(d, 0.05, 0.8) for d in (0.2, 0.5, 0.8)]
    assert power["frames_required"][1] == 34 and power["models"]["tiny"]["residual"]["n_frames"] <= 6
    assert 0 < power["models"]["tiny"]["residual"]["detectable_d"] < 2 and "provenance" in power


def _write_model(tmp_path, name, d, n_layers, latent, rng):
    emotions = list(np.repeat(EMOTIONS, len(latent) // 4))
    resid = np.stack([latent @ rng.standard_normal((latent.shape[1], d)) for _ in range(n_layers + 1)], 1)
    resid += 0.1 * rng.standard_normal(resid.shape)  # [n, L+1, d]
    vectors = np.stack([emotion_vectors(resid[:, lay], emotions) for lay in range(n_layers + 1)], 1)
    basis = np.stack([np.linalg.qr(vectors[:, lay].T)[0][:, :3].T for lay in range(n_layers + 1)])
    act, sub = tmp_path / f"{name}.pkl", tmp_path / f"{name}_subspaces.pkl"
    save_pickle({"schema": "emolens.activations/2", "resid": {"last": resid, "mean": resid},
                 "ids": [f"p{i}" for i in range(len(latent))], "emotions": emotions,
                 "item_ids": [f"item{i % (len(latent) // 4)}" for i in range(len(latent))],
                 "frames": [f"frame{i % (len(latent) // 4) // 2}" for i in range(len(latent))], "n_layers": n_layers,
                 "d_model": d, "quantization": None, "provenance": {}}, act)
    save_pickle({"schema": "emolens.subspaces/1", "basis": basis,
                 "explained_variance_ratio": np.full((n_layers + 1, 3), 1 / 3), "provenance": {}}, sub)
    return act, sub


def _k_files(tmp_path, shuffle: bool):
    rng = np.random.default_rng(7)
    structure = np.repeat(np.arange(4), 16)  # prompt i: emotion i // 16, item i % 16
    if shuffle:  # each item's four emotion means go to its prompts in a random order: labels carry nothing
        for item in range(16):
            structure[item::16] = rng.permutation(4)
    means = np.eye(4)[structure] @ rng.standard_normal((4, 4))  # [64, 4]
    latent = 3 * means + rng.standard_normal((64, 4))
    files = [_write_model(tmp_path, name, d, n_layers, latent, rng)
             for name, d, n_layers in (("a", 8, 2), ("b", 16, 4), ("c", 12, 3))]
    run_k([f[0] for f in files], [f[1] for f in files], tmp_path / "k.json", seed=0, n_perm=99)
    return json.loads((tmp_path / "k.json").read_text())


def test_run_k_finds_aligned_dimensions(tmp_path):
    out = _k_files(tmp_path, shuffle=False)
    assert [p["models"] for p in out["pairs"]] == [["a", "b"], ["a", "c"], ["b", "c"]]
    pair = out["pairs"][0]
    assert len(pair["depths"]) == 3 and len(pair["depths"][0]["score"]) == 3 and pair["k_max"] == 3
    assert {"rule", "score", "null", "provenance"} <= out.keys() and np.isfinite(pair["threshold"])
    assert all(p["k"] >= 2 for p in out["pairs"])  # the planted structure has rank 3
    for depth in pair["depths"]:  # k at a depth = the leading axes above the family-wise threshold
        assert depth["k"] == np.cumprod(np.array(depth["z"]) > pair["threshold"]).sum()
    assert pair["k"] == max(d["k"] for d in pair["depths"])


def test_run_k_is_zero_when_labels_carry_nothing(tmp_path):
    out = _k_files(tmp_path, shuffle=True)
    assert [p["k"] for p in out["pairs"]] == [0, 0, 0]


def test_run_k_is_zero_with_a_reason_when_every_model_ignores_the_labels(tmp_path):
    """Exactly null: the emotion means coincide (each item's prompts identical), so a's means span no
    dimension; the old Cholesky failed here ("Matrix is not positive definite")."""
    rng = np.random.default_rng(8)
    item_latent = np.repeat(rng.standard_normal((16, 4)), 4, 0)  # 16 items x 4 identical prompts
    latent = item_latent[np.argsort(np.tile(np.arange(16), 4), kind="stable")]  # prompt i: item i % 16
    files = [_write_model(tmp_path, name, d, 2, latent, rng) for name, d in (("a", 8), ("b", 12))]
    for act, _ in files:  # the prompts of an item become exactly equal: no within-item variation at all
        from emolens.io import load_pickle
        data = load_pickle(act, "emolens.activations/2")
        resid = data["resid"]["last"]
        items = np.array(data["item_ids"])
        for item in np.unique(items):
            resid[items == item] = resid[items == item].mean(0)
        save_pickle(data | {"resid": {"last": resid, "mean": resid}}, act)
    run_k([f[0] for f in files], [f[1] for f in files], tmp_path / "k.json", seed=0, n_perm=49)
    pair = json.loads((tmp_path / "k.json").read_text())["pairs"][0]
    assert pair["k"] == 0 and pair["reason"].startswith("degenerate")


def _grams(rng, rank: int, p: int = 5) -> EmotionGrams:
    """Random 4 x 4 emotion-mean Grams whose a-side means span ``rank`` dimensions."""
    ma = rng.standard_normal((p, 4, rank)) @ rng.standard_normal((p, rank, 6))  # [P, 4, d]
    mapped = ma @ rng.standard_normal((p, 6, 7))  # a's means carried to b's width 7
    mb = rng.standard_normal((p, 4, 7))
    t = np.swapaxes
    return EmotionGrams(a_fit=ma @ t(ma, -1, -2), a_test=ma @ t(ma, -1, -2), b_fit=mb @ t(mb, -1, -2),
                        b_test=mb @ t(mb, -1, -2), mm=mapped @ t(mapped, -1, -2), mb=mapped @ t(mb, -1, -2),
                        n_fit=np.full((p, 4), 10), n_test=np.full((p, 4), 10), mapped_var=1.0, b_test_var=1.0)


def test_k_axis_scores_equal_gram_schmidt_at_full_rank_and_vanish_beyond_the_rank():
    rng = np.random.default_rng(9)
    e = _grams(rng, 3)
    lam, v = np.linalg.eigh(e.a_fit)
    coef = np.swapaxes(v[..., ::-1][..., :3], -1, -2) / np.sqrt(lam[..., ::-1][..., :3])[..., None]
    chol = np.linalg.cholesky(coef @ e.mm @ np.swapaxes(coef, -1, -2))  # the old, full-rank-only path
    old = (np.linalg.solve(chol, coef @ e.mm) * np.linalg.solve(chol, coef @ e.mb)).sum(-1)
    np.testing.assert_allclose(k_axis_scores(e, 3), old, rtol=1e-6, atol=1e-9)
    deficient = k_axis_scores(_grams(rng, 1), 3)  # one dimension: axes 2 and 3 add nothing
    assert np.isfinite(deficient).all() and np.abs(deficient[:, 1:]).max() < 1e-8 and np.abs(deficient[:, 0]).min() > 0
    zero = _grams(rng, 1)
    zero = EmotionGrams(**{**zero.__dict__, "a_fit": 0 * zero.a_fit, "mm": 0 * zero.mm, "mb": 0 * zero.mb})
    assert np.array_equal(k_axis_scores(zero, 3), np.zeros((5, 3)))
