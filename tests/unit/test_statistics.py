"""Effect sizes, tests, BH pooling and power match their definitions; run_* write the promised JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from emolens import EMOTIONS
from emolens.io import save_pickle
from emolens.statistics import (
    bootstrap_ci,
    cell_statistics,
    describe,
    mean_ci,
    pool_bh,
    required_n,
    required_n_per_group,
    run_effect,
    run_k,
    run_power,
    sign_flip_pvalue,
)
from emolens.vectors import emotion_vectors


def test_power_reproduces_cohens_table():
    assert required_n_per_group() == 64
    assert required_n_per_group(0.8) == 26 and required_n_per_group(0.2) == 394
    assert required_n(0.5, 0.05, 0.8) == 34  # one-sample / paired
    assert required_n(10.0, 0.05, 0.8) == 2 and required_n(50.0, 0.05, 0.8) == 2
    assert required_n(float("nan"), 0.05, 0.8) is None


def test_hedges_g_matches_hand_formula():
    x = np.random.default_rng(0).normal(0.4, 1.0, 10)
    d = x.mean() / x.std(ddof=1)
    out = describe(x[:, None])
    assert out["cohen_d"][0] == pytest.approx(d)
    assert out["hedges_g"][0] == pytest.approx(d * (1 - 3 / (4 * 9 - 1)))


def test_bootstrap_ci_contains_mean_and_constant_column_is_its_value():
    x = np.random.default_rng(1).normal(0.3, 1.0, (40, 3))
    x[:, 2] = 1.0
    low, high = bootstrap_ci(x, 500, np.random.default_rng(2))
    assert np.all(low <= x.mean(0)) and np.all(x.mean(0) <= high) and np.all(low[:2] < high[:2])
    assert low[2] == high[2] == 1.0


def test_mean_ci_leaves_out_nan_pairs_per_cell_and_keeps_the_shape():
    rng = np.random.default_rng(0)
    x = np.stack([np.full(50, 2.0), rng.normal(1, 1, 50), np.full(50, np.nan), rng.normal(0, 1, 50)], 1)
    x[:10, 1] = np.nan
    mean, low, high = mean_ci(x.reshape(50, 2, 2), 500, seed=0)
    assert mean.shape == low.shape == high.shape == (2, 2)
    mean, low, high = mean.ravel(), low.ravel(), high.ravel()
    assert mean[0] == low[0] == high[0] == 2.0
    assert mean[1] == pytest.approx(x[10:, 1].mean()) and low[1] < mean[1] < high[1]
    assert np.isnan([mean[2], low[2], high[2]]).all()
    ref = bootstrap_ci(x[10:, 1:2], 500, np.random.default_rng(1))  # BCa over the 40 applicable pairs alone
    assert abs(low[1] - ref[0][0]) < 0.1 and abs(high[1] - ref[1][0]) < 0.1
    again = mean_ci(x.reshape(50, 2, 2), 500, seed=0)
    np.testing.assert_array_equal(np.nan_to_num(low), np.nan_to_num(again[1].ravel()))


def test_sign_flip_pvalue_separates_effect_from_null():
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 30), np.zeros(30)])
    p = sign_flip_pvalue(x, 2000, rng)
    assert p[0] < 0.01 and p[1] > 0.05 and p[2] == 1.0


def test_cell_statistics_uses_each_columns_applicable_pairs():
    rng = np.random.default_rng(4)
    x = rng.normal(0.5, 1.0, (20, 3))
    x[:5, 1] = np.nan  # a position that does not apply to five pairs
    x[:, 2] = np.nan
    out = cell_statistics(x, 200, 500, rng)
    assert out["n"].tolist() == [20, 15, 0]
    assert out["mean"][1] == pytest.approx(x[5:, 1].mean())
    assert out["ci_low"][1] <= out["mean"][1] <= out["ci_high"][1]
    assert np.isnan(out["p_perm"][2]) and not np.isnan(out["p_perm"][1])


def test_bh_pools_layers_and_heads_into_one_family():
    rng = np.random.default_rng(5)
    residual = {"p_perm": rng.uniform(0, 0.1, (3, 4))}
    heads = {"p_perm": rng.uniform(0, 0.1, 5)}
    joint = {"p_perm": np.array(0.001)}
    residual["p_perm"][0, 0] = np.nan
    pool_bh([residual, heads, joint])
    flat = np.concatenate([residual["p_perm"].ravel(), heads["p_perm"], [0.001]])
    expected = multipletests(flat[~np.isnan(flat)], method="fdr_bh")[1]
    got = np.concatenate([residual["p_bh"].ravel(), heads["p_bh"], [joint["p_bh"]]])
    assert np.isnan(got[0]) and got[1:] == pytest.approx(expected)
    assert residual["p_bh"].shape == (3, 4) and heads["significant"].dtype == bool


def _write_effects(tmp_path, name, rng):
    effect = rng.normal(0.3, 0.5, (24, 3, 2))  # [P, layers, positions]
    effect[:4, :, 1] = np.nan
    effect[:, 2, 0] = 1.0  # the identity cell: every pair has effect 1
    sweep, heads = tmp_path / f"{name}_residual_sweep.pkl", tmp_path / f"{name}_head_patching.pkl"
    pairs = [(f"s{i}", f"t{i}") for i in range(24)]
    save_pickle({"schema": "emolens.residual_sweep/1", "layers": [0, 1, 2], "positions": [-1, -2],
                 "pairs": pairs, "effect": effect, "mean": np.nanmean(effect, 0), "ci_low": np.zeros((3, 2)),
                 "ci_high": np.ones((3, 2)), "provenance": {}}, sweep)
    save_pickle({"schema": "emolens.head_patching/1", "heads": [(0, 1), (1, 0)], "pairs": pairs,
                 "effect_single": rng.normal(0.1, 0.3, (24, 2)), "effect_joint": rng.normal(0.4, 0.3, 24),
                 "provenance": {}}, heads)
    return sweep, heads


def test_run_effect_and_run_power_write_promised_keys(tmp_path):
    sweep, heads = _write_effects(tmp_path, "tiny", np.random.default_rng(6))
    run_effect([sweep], [heads], tmp_path / "effect.json", seed=0, n_boot=200, n_perm=500)
    effect = json.loads((tmp_path / "effect.json").read_text())
    tables = effect["models"]["tiny"]
    for key in ("mean", "cohen_d", "hedges_g", "ci_low", "ci_high", "p_perm", "p_bh", "significant", "n"):
        assert np.shape(tables["residual"][key]) == (3, 2) and np.shape(tables["heads"][key]) == (2,)
        assert key in tables["joint"]
    assert tables["residual"]["cohen_d"][2][0] is None and tables["residual"]["ci_low"][2][0] == 1.0
    assert tables["residual"]["n"][0] == [24, 20] and "provenance" in effect
    run_power([sweep], [heads], tmp_path / "power.json", alpha=0.05, power=0.8)
    power = json.loads((tmp_path / "power.json").read_text())
    assert np.shape(power["models"]["tiny"]["residual"]["achieved_power"]) == (3, 2)
    assert {"achieved_power", "n_required", "cohen_d", "n"} <= power["models"]["tiny"]["joint"].keys()
    assert power["two_sample_readout"]["n_required_per_group"][1] == 64 and "provenance" in power
    assert power["two_sample_readout"]["achieved_power"][2] == pytest.approx(1.0)  # no NaN at large power


def _write_model(tmp_path, name, d, n_layers, latent, rng):
    emotions = list(np.repeat(EMOTIONS, len(latent) // 4))
    resid = np.stack([latent @ rng.standard_normal((latent.shape[1], d)) for _ in range(n_layers + 1)], 1)
    resid += 0.1 * rng.standard_normal(resid.shape)  # [n, L+1, d]
    vectors = np.stack([emotion_vectors(resid[:, lay], emotions) for lay in range(n_layers + 1)], 1)
    basis = np.stack([np.linalg.qr(vectors[:, lay].T)[0][:, :3].T for lay in range(n_layers + 1)])
    act, sub = tmp_path / f"{name}.pkl", tmp_path / f"{name}_subspaces.pkl"
    save_pickle({"schema": "emolens.activations/1", "resid": {"last": resid, "mean": resid},
                 "ids": [f"p{i}" for i in range(len(latent))], "emotions": emotions,
                 "item_ids": [f"item{i % (len(latent) // 4)}" for i in range(len(latent))], "n_layers": n_layers,
                 "d_model": d, "quantization": None, "provenance": {}}, act)
    save_pickle({"schema": "emolens.subspaces/1", "basis": basis,
                 "explained_variance_ratio": np.full((n_layers + 1, 3), 1 / 3), "provenance": {}}, sub)
    return act, sub


def test_run_k_finds_aligned_dimensions(tmp_path):
    rng = np.random.default_rng(7)
    means = np.eye(4)[np.repeat(np.arange(4), 16)] @ rng.standard_normal((4, 4))  # [64, 4]
    latent = 3 * means + rng.standard_normal((64, 4))
    files = [_write_model(tmp_path, name, d, n_layers, latent, rng)
             for name, d, n_layers in (("a", 8, 2), ("b", 16, 4), ("c", 12, 3))]
    run_k([f[0] for f in files], [f[1] for f in files], tmp_path / "k.json", seed=0, n_perm=50)
    out = json.loads((tmp_path / "k.json").read_text())
    assert [p["models"] for p in out["pairs"]] == [["a", "b"], ["a", "c"], ["b", "c"]]
    pair = out["pairs"][0]
    assert len(pair["depths"]) == 3 and len(pair["depths"][0]["score"]) == 3
    assert pair["k"] >= 1 and {"rule", "provenance"} <= out.keys()
