"""Alignment measures recover planted structure, nulls match brute force, and run_* write the contracts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from emolens import EMOTIONS
from emolens.alignment import (
    center_gram,
    comparable_layers,
    debiased_cka,
    fit_linear_map,
    gram_permutation_null,
    knn_indices,
    knn_permutation_null,
    linear_cka,
    matched_layers,
    mutual_knn,
    perm_pvalue,
    principal_angles,
    procrustes_pca,
    rsa,
    run_pair,
    run_summary,
    split_halves,
    transfer_vectors,
    u_center_gram,
)
from emolens.figures import alignment_matrix
from emolens.io import load_pickle, save_pickle
from emolens.vectors import emotion_vectors


def _rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


def test_cka_is_one_for_rotated_scaled_copy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 12))
    y = 3.7 * x @ _rotation(12, rng)
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-6)
    assert debiased_cka(x, y) == pytest.approx(1.0, abs=1e-6)


def test_debiased_cka_matches_song_unbiased_hsic():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 7))

    def hsic_u(k, m):  # Song et al. 2012, eq. 5
        n = len(k)
        k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
        one = np.ones(n)
        return (np.trace(k @ m) + one @ k @ one * (one @ m @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ m @ one) / (n * (n - 3))

    kx, ky = x @ x.T, y @ y.T
    expected = hsic_u(kx, ky) / np.sqrt(hsic_u(kx, kx) * hsic_u(ky, ky))
    assert debiased_cka(x, y) == pytest.approx(expected, rel=1e-10)


def test_gram_null_equals_brute_force_and_independent_cka_is_null_like():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((60, 10)), rng.standard_normal((60, 15))
    gx, gy = center_gram(x @ x.T), center_gram(y @ y.T)
    null = gram_permutation_null(gx, gy, 200, np.random.default_rng(7))
    first = np.random.default_rng(7).permutation(60)
    assert null[0] == pytest.approx(linear_cka(x, y[first]), abs=1e-6)
    observed = linear_cka(x, y)
    assert abs(observed - null.mean()) < 4 * null.std()
    assert perm_pvalue(observed, null) > 0.01
    ux, uy = u_center_gram(x @ x.T), u_center_gram(y @ y.T)
    assert abs(debiased_cka(x, y) - gram_permutation_null(ux, uy, 200, rng).mean()) < 0.05


def test_knn_null_equals_brute_force_and_identity_is_one():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((50, 8)), rng.standard_normal((50, 6))
    assert mutual_knn(x, x, k=5) == 1.0
    null = knn_permutation_null(knn_indices(x, 5), knn_indices(y, 5), 3, np.random.default_rng(4))
    perms = np.random.default_rng(4)
    assert null == pytest.approx([mutual_knn(x, y[perms.permutation(50)], k=5) for _ in range(3)])


def test_rsa_identity_is_one():
    vec = np.random.default_rng(5).standard_normal((4, 16))
    assert rsa(vec, vec) == pytest.approx(1.0)
    assert rsa(vec, 2.0 * vec @ _rotation(16, np.random.default_rng(6))) == pytest.approx(1.0)


def test_procrustes_recovers_planted_rotation_across_widths():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((200, 20)) * np.linspace(3.0, 0.5, 20)  # distinct principal axes
    y = np.zeros((200, 50))
    y[:, :20] = 2.0 * x @ _rotation(20, rng)
    y += 1e-4 * rng.standard_normal(y.shape)
    train, test = np.arange(0, 200, 2), np.arange(1, 200, 2)
    assert procrustes_pca(x, y, 10, train, test) > 0.999
    assert procrustes_pca(x, rng.standard_normal((200, 50)), 10, train, test) < 0.3


@pytest.mark.parametrize(("da", "db"), [(20, 50), (50, 20)])
def test_linear_map_transfers_emotion_vectors_across_widths(da, db):
    rng = np.random.default_rng(9)
    emotions = np.repeat(EMOTIONS, 40)
    means = np.eye(4)[np.repeat(np.arange(4), 40)] @ rng.standard_normal((4, 3))  # [160, 3]
    latent = means + rng.standard_normal((160, 3))
    xa = latent @ rng.standard_normal((3, da)) + 0.05 * rng.standard_normal((160, da))
    xb = latent @ rng.standard_normal((3, db)) + 0.05 * rng.standard_normal((160, db))
    train, test = split_halves(emotions, seed=0)
    lmap = fit_linear_map(xa[train], xb[train], ridge=1e-3)
    vec_a, vec_b = emotion_vectors(xa[train], emotions[train]), emotion_vectors(xb[test], emotions[test])
    out = transfer_vectors(vec_a, vec_b, lmap, 200, rng)
    assert np.all(out["transfer_cosine"] > 0.95)
    assert np.all(out["transfer_cosine"] > out["transfer_null_q95"])
    assert out["transfer_cosine_mean_p"] < 0.01


def test_principal_angles_match_scipy():
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((3, 30)), rng.standard_normal((4, 30))
    assert principal_angles(a, b) == pytest.approx(np.sort(subspace_angles(a.T, b.T)), abs=1e-7)
    batch = rng.standard_normal((5, 3, 30))
    assert principal_angles(batch, b)[2] == pytest.approx(principal_angles(batch[2], b), abs=1e-10)
    assert principal_angles(a, a) == pytest.approx(np.zeros(3), abs=1e-6)


def test_matched_layers_and_split():
    assert matched_layers(4, 8) == [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)]
    assert matched_layers(12, 36)[-1] == (12, 36) and matched_layers(3, 2)[1] == (1, 1)
    emotions = list(np.repeat(EMOTIONS, 10))
    train, test = split_halves(emotions, seed=3)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 40
    assert all(np.sum(np.asarray(emotions)[train] == e) == 5 for e in EMOTIONS)
    assert np.array_equal(train, split_halves(emotions, seed=3)[0])
    items = [f"item{i % 10}" for i in range(40)]  # each item holds all four emotions
    train, test = split_halves(emotions, seed=3, groups=items)
    assert not set(np.asarray(items)[train]) & set(np.asarray(items)[test]) and len(train) == 20
    assert all(np.sum(np.asarray(emotions)[train] == e) == 5 for e in EMOTIONS)


def write_model(tmp_path, name, d, n_layers, latent, quantization=None, seed=0):
    """Synthetic activation, vector and subspace pickles for a model that embeds a shared latent."""
    rng = np.random.default_rng(seed)
    n = len(latent)
    emotions = list(np.repeat(EMOTIONS, n // 4))
    resid = np.stack([latent @ rng.standard_normal((latent.shape[1], d)) + 0.1 * rng.standard_normal((n, d))
                      for _ in range(n_layers + 1)], axis=1).astype(np.float16)  # [n, L+1, d]
    vectors = np.stack([emotion_vectors(resid[:, lay].astype(float), emotions)
                        for lay in range(n_layers + 1)], 1)  # [4, L+1, d]
    basis = np.stack([np.linalg.qr(vectors[:, lay].T)[0][:, :3].T for lay in range(n_layers + 1)])
    paths = [tmp_path / f"{name}.pkl", tmp_path / f"{name}_vectors.pkl", tmp_path / f"{name}_subspaces.pkl"]
    save_pickle({"schema": "emolens.activations/1", "resid": {"last": resid, "mean": resid},
                 "ids": [f"p{i}" for i in range(n)], "emotions": emotions,
                 "item_ids": [f"item{i % (n // 4)}" for i in range(n)], "n_layers": n_layers, "d_model": d,
                 "quantization": quantization, "provenance": {}}, paths[0])
    save_pickle({"schema": "emolens.vectors/1", "vectors": vectors, "probe_accuracy": np.ones(n_layers + 1),
                 "emotions": list(EMOTIONS), "provenance": {}}, paths[1])
    save_pickle({"schema": "emolens.subspaces/1", "basis": basis,
                 "explained_variance_ratio": np.full((n_layers + 1, 3), 1 / 3), "provenance": {}}, paths[2])
    return paths


def shared_latent(n: int = 48, seed: int = 11) -> np.ndarray:
    """Emotion class means plus per-prompt variation, shared by every synthetic model."""
    rng = np.random.default_rng(seed)
    means = np.eye(4)[np.repeat(np.arange(4), n // 4)] @ rng.standard_normal((4, 4))  # [n, 4]
    return 2 * means + rng.standard_normal((n, 4))


def test_run_pair_and_summary_write_promised_keys(tmp_path):
    latent = shared_latent()
    a = write_model(tmp_path, "small", 6, 2, latent, seed=1)
    b = write_model(tmp_path, "wide", 10, 4, latent, quantization="int8", seed=2)
    out = tmp_path / "alignment" / "small__wide.pkl"
    run_pair(a[0], b[0], a[1], b[1], a[2], b[2], out, seed=0, n_perm=20, k_nn=5, k_pca=4)
    r = load_pickle(out, "emolens.alignment/1")
    assert r["models"] == ["small", "wide"] and r["int8_involved"] is True
    assert r["cka_matrix"].shape == (3, 5)
    assert [(d["layer_a"], d["layer_b"]) for d in r["matched"]] == [(0, 0), (1, 2), (2, 4)]
    for key in ("linear_cka", "debiased_cka", "mutual_knn", "rsa", "procrustes", "transfer_cosine_mean",
                "subspace_mean_cos"):
        assert {key, f"{key}_null_mean", f"{key}_null_q95", f"{key}_p"} <= r["matched"][0].keys()
    assert r["matched"][0]["transfer_cosine"].shape == (4,)
    assert r["matched"][1]["linear_cka"] > r["matched"][1]["linear_cka_null_q95"]  # shared latent is found
    run_summary([out], tmp_path / "alignment" / "summary.json")
    summary = json.loads((tmp_path / "alignment" / "summary.json").read_text())
    assert summary["pairs"][0]["flags"] == ["int8_involved", "different_widths"]
    assert summary["pairs"][0]["quantization"] == [None, "int8"]  # the figure marks the int8 model by it
    alignment_matrix(tmp_path / "alignment" / "summary.json", ["small", "wide"], tmp_path / "alignment.png")
    assert (tmp_path / "alignment.png").read_bytes().startswith(b"\x89PNG")
    assert len(summary["pairs"][0]["measures"]["linear_cka"]["value"]) == 3 and "provenance" in summary


def test_constant_layers_are_skipped_not_compared():
    rng = np.random.default_rng(0)
    ra, rb = rng.normal(size=(40, 3, 8)), rng.normal(size=(40, 5, 12))
    ra[:, 0] = rng.normal(size=8)  # the same vector for every prompt, as at index 0 in rotary models
    comparable, skipped = comparable_layers(ra, rb, 2, 4)
    assert skipped == [(0, 0)] and comparable == [(1, 2), (2, 4)]
