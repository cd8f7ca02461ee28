"""Alignment measures recover planted structure, nulls match brute force, and run_* write the contracts."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from statsmodels.stats.multitest import multipletests

from emolens import EMOTIONS
from emolens.io import load_pickle, save_pickle
from emolens.phases.aligned_dims import run_k
from emolens.phases.alignment import (
    CONTROL_MEASURES,
    DESCRIPTIVE,
    FAMILIES,
    MEASURES,
    WORDS_PARTIALLED,
    comparable_layers,
    matched_layers,
    run_pair,
    split_halves,
)
from emolens.phases.alignment_summary import run_summary
from emolens.phases.emotion_structure import (
    cell_permutations,
    cv_rdm,
    emotion_frame_cells,
    emotion_grams,
    label_structure,
    permuted_labels,
    rdm_spearman,
    rsa_cross_validated,
    subspace_cosines,
    transfer_cosines,
)
from emolens.report.checks import _summary_problems, check_alignment, check_self_alignment, check_statistics
from emolens.report.figures import alignment_depths
from emolens.stats.geometry import emotion_vectors, item_centred
from emolens.stats.resampling import perm_pvalue, within_group_permutations
from emolens.stats.similarity import (
    center_gram,
    debiased_cka,
    fit_linear_map,
    gram_permutation_null,
    knn_indices,
    knn_permutation_null,
    linear_cka,
    mutual_knn,
    principal_angles,
    procrustes_pca,
    rsa,
    u_center_gram,
)


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


def _items_dataset(rng, n_items, da, db, effect):
    """n_items x 4 emotions; two models embed a shared latent (item content + emotion means * effect)."""
    items = np.repeat(np.arange(n_items), 4)
    codes = np.tile(np.arange(4), n_items)
    latent = (2 * rng.standard_normal((n_items, 3))[items] + effect * rng.standard_normal((4, 3))[codes]
              + rng.standard_normal((4 * n_items, 3)))
    xa = latent @ rng.standard_normal((3, da)) + 0.05 * rng.standard_normal((4 * n_items, da))
    xb = latent @ rng.standard_normal((3, db)) + 0.05 * rng.standard_normal((4 * n_items, db))
    return xa, xb, items, codes


def test_within_item_permutations_stay_inside_items():
    items = np.repeat(np.arange(30), 4)
    perms = within_group_permutations(items, 50, np.random.default_rng(0))
    assert perms.shape == (50, 120)
    assert all(np.array_equal(np.sort(p), np.arange(120)) and np.array_equal(items[p], items) for p in perms)
    assert (perms != np.arange(120)).any(1).all()  # they do move prompts


def test_within_item_gram_null_equals_brute_force():
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((40, 6)), rng.standard_normal((40, 9))
    perms = within_group_permutations(np.repeat(np.arange(10), 4), 3, rng)
    gx, gy = center_gram(x @ x.T), center_gram(y @ y.T)
    assert gram_permutation_null(gx, gy, perms, rng) == pytest.approx([linear_cka(x, y[p]) for p in perms], abs=1e-6)


def test_emotion_grams_match_brute_force_class_means():
    rng = np.random.default_rng(13)
    xa, xb, items, codes = _items_dataset(rng, 20, 7, 11, effect=1.0)
    split = split_halves(items, None, 0)
    labels = permuted_labels(codes, items, 4, rng)
    ca, cb = item_centred(xa, items), item_centred(xb, items)
    lmap = fit_linear_map(xa[split[0]], xb[split[0]], 0.1)
    eg = emotion_grams(ca, cb, lmap.directions(ca[split[0]]), split, labels)
    transfer, subspace, rsa_cv = transfer_cosines(eg), subspace_cosines(eg), rsa_cross_validated(eg)
    fit, test = split
    for p, lab in enumerate(np.array(EMOTIONS)[labels]):
        va, vb = lmap.directions(emotion_vectors(ca[fit], lab[fit])), emotion_vectors(cb[test], lab[test])
        assert transfer[p] == pytest.approx(np.sum(_unit(va) * _unit(vb), 1))
        means = [np.stack([x[half][lab[half] == e].mean(0) for e in EMOTIONS]) for x, half in
                 ((ca, fit), (cb, test), (ca, test), (cb, fit))]
        angles = subspace_angles(lmap.directions(means[0])[:3].T, means[1][:3].T)
        assert subspace[p] == pytest.approx(np.sort(np.cos(angles))[::-1])
        iu = np.triu_indices(4, 1)
        dist = [np.linalg.norm(m[:, None] - m[None], axis=-1)[iu] for m in means]
        expected = (np.corrcoef(dist[0], dist[1])[0, 1] + np.corrcoef(dist[2], dist[3])[0, 1]) / 2
        assert rsa_cv[p] == pytest.approx(expected)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize(("da", "db"), [(20, 50), (50, 20)])
def test_label_tests_find_shared_emotion_across_widths_and_not_shuffled_labels(da, db):
    rng = np.random.default_rng(9)
    xa, xb, items, codes = _items_dataset(rng, 40, da, db, effect=4.0)
    split = split_halves(items, None, 0)
    for shuffle, check in ((False, lambda p: p <= 0.01), (True, lambda p: p > 0.02)):
        labels = codes if not shuffle else codes[within_group_permutations(items, 1, rng)[0]]
        eg = label_structure(xa, xb, items, split, permuted_labels(labels, items, 99, rng), 1e-3)
        transfer = transfer_cosines(eg)
        if not shuffle:
            assert np.all(transfer[0] > 0.9)
        for stat in (transfer.mean(1), subspace_cosines(eg).mean(1), rsa_cross_validated(eg)):
            assert check(perm_pvalue(stat[0], stat[1:]))


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
    emotions = np.tile(EMOTIONS, 40)  # 40 items, each holding all four emotions, 2 items per frame
    frames = np.repeat(np.arange(20), 8)
    registers = np.where(frames < 6, "explicit", "implicit")  # 6 explicit frames, 14 implicit
    train, test = split_halves(frames, registers, seed=3)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 160
    assert not set(frames[train]) & set(frames[test]) and len(train) == 80  # whole frames, equal halves
    assert (registers[train] == "explicit").sum() == 24 and (registers[test] == "explicit").sum() == 24  # strata
    assert all(np.sum(emotions[train] == e) == 20 for e in EMOTIONS)
    assert np.array_equal(train, split_halves(frames, registers, seed=3)[0])
    assert not np.array_equal(train, split_halves(frames, registers, seed=4)[0])


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
    save_pickle({"schema": "emolens.activations/2", "resid": {"last": resid, "mean": resid},
                 "ids": [f"p{i}" for i in range(n)], "emotions": emotions,
                 "item_ids": [f"item{i % (n // 4)}" for i in range(n)],
                 "frames": [f"frame{i % (n // 4) // 2}" for i in range(n)], "n_layers": n_layers, "d_model": d,
                 "quantization": quantization, "provenance": {}}, paths[0])
    save_pickle({"schema": "emolens.vectors/1", "vectors": vectors, "probe_accuracy": np.ones(n_layers + 1),
                 "emotions": list(EMOTIONS), "provenance": {}}, paths[1])
    save_pickle({"schema": "emolens.subspaces/1", "basis": basis,
                 "explained_variance_ratio": np.full((n_layers + 1, 3), 1 / 3), "provenance": {}}, paths[2])
    return paths


def write_words(tmp_path, latent, seed=5):
    """A words reference for the synthetic prompts: one layer of word counts that carry the latent in part."""
    rng = np.random.default_rng(seed)
    counts = (latent @ rng.standard_normal((latent.shape[1], 30)) > 1.0).astype(np.float32)  # [n, 30]
    path = tmp_path / "words.pkl"
    record = load_pickle(tmp_path / "m0.pkl")
    save_pickle({**{k: record[k] for k in ("ids", "emotions", "item_ids", "frames")}, "schema": "emolens.activations/2",
                 "resid": {"last": counts[:, None], "mean": counts[:, None]}, "n_layers": 0, "d_model": 30,
                 "quantization": None, "provenance": {}}, path)
    return path


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
    run_pair(a[0], b[0], out, vectors=(a[1], b[1]), subspaces=(a[2], b[2]), seed=0, n_perm=20, k_nn=5, k_pca=4)
    r = load_pickle(out, "emolens.alignment/1")
    assert r["models"] == ["small", "wide"] and r["int8_involved"] is True
    assert r["cka_matrix"].shape == (3, 5)
    assert [(d["layer_a"], d["layer_b"]) for d in r["matched"]] == [(0, 0), (1, 2), (2, 4)]
    for key in MEASURES:
        assert {key, f"{key}_null_mean", f"{key}_null_q95", f"{key}_p"} <= r["matched"][0].keys()
        assert r["matched"][0]["null"][key].shape == (20,)
    assert set(DESCRIPTIVE) <= r["matched"][0].keys()
    assert r["matched"][0]["transfer_cosine"].shape == (4,)
    assert r["matched"][1]["linear_cka"] > r["matched"][1]["linear_cka_null_q95"]  # shared latent is found
    assert r["matched"][1]["transfer_cosine_mean_p"] == pytest.approx(1 / 21)  # so is the shared emotion
    assert r["self_cells"]["small"]["linear_cka"] == pytest.approx(1.0) and r["self_cells"]["wide"]["layer"] == 4
    run_summary([out], tmp_path / "alignment" / "summary.json")
    summary = json.loads((tmp_path / "alignment" / "summary.json").read_text())
    assert summary["pairs"][0]["flags"] == ["int8_involved", "different_widths"]
    assert summary["pairs"][0]["quantization"] == [None, "int8"]  # the figure marks the int8 model by it
    assert summary["pairs"][0]["n_layers"] == [2, 4]  # the findings give each matched depth as a relative depth
    alignment_depths(tmp_path / "alignment" / "summary.json", tmp_path / "alignment.png")
    assert (tmp_path / "alignment.png").read_bytes().startswith(b"\x89PNG")
    assert len(summary["pairs"][0]["measures"]["linear_cka"]["value"]) == 3 and "provenance" in summary
    assert set(summary["families"]) == set(FAMILIES)
    assert all(summary["measures"][m]["question"] and summary["measures"][m]["null"] for m in MEASURES)
    assert all(summary["measures"][m]["null"] is None for m in DESCRIPTIVE)
    assert summary["families"]["emotion_specific"]["n_tests"] == 9
    # p >= 1/21: BH at alpha 0.05 over 9 tests needs ceil(9 * (1/21) / 0.05) = 9 of them at that floor
    assert summary["families"]["emotion_specific"]["p_floor"] == pytest.approx(1 / 21)
    assert summary["families"]["emotion_specific"]["min_tests_at_floor"] == 9
    assert "p" not in summary["pairs"][0]["measures"]["rsa_vectors"]  # the 4x4 vector RSA is no test


def test_summary_counts_significance_after_bh_within_each_family(tmp_path):
    latent = shared_latent()
    files = [write_model(tmp_path, f"m{i}", 6 + 2 * i, 2, latent, seed=i) for i in range(3)]
    pairs = []
    for i, j in ((0, 1), (0, 2), (1, 2)):
        pairs.append(tmp_path / f"m{i}__m{j}.pkl")
        run_pair(files[i][0], files[j][0], pairs[-1], vectors=(files[i][1], files[j][1]),
                 subspaces=(files[i][2], files[j][2]), n_perm=20, k_nn=5, k_pca=4)
    run_summary(pairs, tmp_path / "summary.json", alpha=0.05)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for family, info in summary["families"].items():
        p = np.concatenate([s["measures"][m]["p"] for s in summary["pairs"] for m in info["measures"]])
        reject, adjusted = multipletests(p, alpha=0.05, method="fdr_bh")[:2]
        assert info["n_tests"] == len(p) and info["n_significant"] == reject.sum(), family
        got = np.concatenate([s["measures"][m]["p_bh"] for s in summary["pairs"] for m in info["measures"]])
        assert got == pytest.approx(adjusted)


# --- verification checks fail on planted corruptions ------------------------------------------------------

@pytest.fixture
def profile(tmp_path):
    """A three-model results tree with alignment pair files, summary.json and statistics/*.json."""
    latent = shared_latent()
    files = {f"m{i}": write_model(tmp_path, f"m{i}", 6 + 2 * i, 2, latent, seed=i) for i in range(3)}
    words = write_words(tmp_path, latent)
    (tmp_path / "alignment").mkdir()
    pairs = []
    for a, b in (("m0", "m1"), ("m0", "m2"), ("m1", "m2")):
        pairs.append(tmp_path / "alignment" / f"{a}__{b}.pkl")
        run_pair(files[a][0], files[b][0], pairs[-1], vectors=(files[a][1], files[b][1]),
                 subspaces=(files[a][2], files[b][2]), words=words, n_perm=20, k_nn=5, k_pca=4)
    for m in files:
        pairs.append(tmp_path / "alignment" / f"{m}__words.pkl")
        run_pair(files[m][0], words, pairs[-1], kind="words", n_perm=20, k_nn=5, k_pca=4)
    run_summary(pairs, tmp_path / "alignment" / "summary.json")
    stats = tmp_path / "statistics"
    stats.mkdir()
    for mode in ("effect", "power"):
        (stats / f"{mode}.json").write_text(json.dumps({"provenance": {}}))
    run_k([f[0] for f in files.values()], [f[2] for f in files.values()], stats / "k.json", n_perm=39)
    return tmp_path, pairs


def test_verification_checks_pass_on_clean_outputs(profile):
    root, pairs = profile
    assert check_self_alignment("m2", pairs)[0]
    assert check_alignment(pairs, root / "alignment" / "summary.json", 3)[0]
    ok, detail = check_statistics(root, 3)
    assert ok, detail


def _rewrite(path, change):
    record = load_pickle(path)
    change(record)
    path.write_bytes(pickle.dumps(record))


def test_self_alignment_check_fails_on_a_wrong_self_cell(profile):
    _, pairs = profile
    _rewrite(pairs[1], lambda r: r["self_cells"]["m2"].update(linear_cka=0.93))
    ok, detail = check_self_alignment("m2", pairs)
    assert not ok and "7.0e-02" in detail
    assert check_self_alignment("m1", pairs)[0]  # m1's files are untouched


def test_alignment_check_fails_on_a_p_value_that_its_null_does_not_give(profile):
    root, pairs = profile
    _rewrite(pairs[0], lambda r: r["matched"][1].update(transfer_cosine_mean_p=0.001))
    ok, detail = check_alignment(pairs, root / "alignment" / "summary.json", 3)
    assert not ok and "transfer_cosine_mean" in detail


def test_alignment_check_fails_on_an_uncorrected_count(profile):
    root, pairs = profile
    path = root / "alignment" / "summary.json"
    summary = json.loads(path.read_text())
    summary["pairs"][2]["measures"]["rsa"]["n_significant"] += 1
    path.write_text(json.dumps(summary))
    ok, detail = check_alignment(pairs, path, 3)
    assert not ok and "rsa" in detail


@pytest.mark.parametrize("corruption", ["k_above_k_max", "no_rule", "infinite_threshold", "k_not_from_curve"])
def test_statistics_check_fails_on_a_corrupt_k_file(profile, corruption):
    root, _ = profile
    path = root / "statistics" / "k.json"
    k = json.loads(path.read_text())
    pair = k["pairs"][0]
    if corruption == "k_above_k_max":
        pair["k"] = pair["k_max"] + 1
    elif corruption == "no_rule":
        del k["rule"]
    elif corruption == "infinite_threshold":
        pair["threshold"] = None
    else:
        pair["depths"][0]["k"] = 1 - min(pair["depths"][0]["k"], 1)
    path.write_text(json.dumps(k))
    assert not check_statistics(root, 3)[0]


def test_constant_layers_are_skipped_not_compared():
    rng = np.random.default_rng(0)
    ra, rb = rng.normal(size=(40, 3, 8)), rng.normal(size=(40, 5, 12))
    ra[:, 0] = rng.normal(size=8)  # the same vector for every prompt, as at index 0 in rotary models
    comparable, skipped = comparable_layers(ra, rb, 2, 4)
    assert skipped == [(0, 0)] and comparable == [(1, 2), (2, 4)]


# --- RDMs over emotion x frame cells ------------------------------------------------------------------------

def _cell_design(n_frames=6, items_per_frame=3, seed=0):
    emotions = np.tile(np.arange(4), n_frames * items_per_frame)
    items = np.repeat(np.arange(n_frames * items_per_frame), 4)
    frames = items // items_per_frame
    return emotions, items, frames


def test_cells_split_items_within_frames_and_relabel_exactly():
    codes, items, frames = _cell_design()
    cells = emotion_frame_cells(codes, items, frames, seed=0)
    assert len(cells.first) == 6 * 4 and (cells.index >= 0).all()
    for f in range(6):  # every frame's items in both halves, an item's prompts in one
        assert set(cells.half[frames == f]) == {0, 1}
    assert all(len(set(cells.half[items == i])) == 1 for i in np.unique(items))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((len(codes), 5))
    labels = permuted_labels(codes, frames, 7, rng)
    sigma = cell_permutations(cells, labels)
    assert (sigma[0] == np.arange(24)).all()
    rdm = cv_rdm(x, cells)
    for p in range(1, 8):  # the RDM recomputed under a frame relabelling = the observed RDM's cells reordered
        again = cv_rdm(x, emotion_frame_cells(labels[p], items, frames, seed=0))
        np.testing.assert_allclose(again, rdm[np.ix_(sigma[p], sigma[p])], atol=1e-12)
    one_item = emotion_frame_cells(codes[:4], items[:4], frames[:4], seed=0)  # a frame of one item has no cell
    assert len(one_item.first) == 0 and (one_item.index == -1).all()


def test_cross_validated_distances_are_unbiased_and_rho_finds_shared_cells():
    codes, items, frames = _cell_design(n_frames=10, items_per_frame=4)
    cells = emotion_frame_cells(codes, items, frames, seed=0)
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((len(codes), 50))
    iu = np.triu_indices(len(cells.first), 1)
    assert abs(cv_rdm(noise, cells)[iu].mean()) < 0.15 * 50 / 2  # pure noise: mean distance near 0, not 2 d / n
    truth = rng.standard_normal((len(cells.first), 6))[np.maximum(cells.index, 0)]  # each cell its own pattern
    xa, xb = truth @ rng.standard_normal((6, 8)), truth @ rng.standard_normal((6, 12))
    labels = permuted_labels(codes, frames, 50, rng)
    rho = rdm_spearman(cv_rdm(xa + 0.3 * rng.standard_normal(xa.shape), cells),
                       cv_rdm(xb + 0.3 * rng.standard_normal(xb.shape), cells), cell_permutations(cells, labels))
    assert rho[0] > 0.5 and rho[0] > rho[1:].max()


def test_controls_run_per_register_and_with_the_words_partialled(tmp_path):
    latent = shared_latent()
    files = [write_model(tmp_path, f"m{i}", 6 + 2 * i, 2, latent, seed=i) for i in range(2)]
    words = write_words(tmp_path, latent)
    for path in (files[0][0], files[1][0], words):  # frames 0-2 explicit, 3-5 implicit
        record = load_pickle(path)
        record["registers"] = ["explicit" if int(f.removeprefix("frame")) < 3 else "implicit" for f in record["frames"]]
        save_pickle(record, path)
    pair, ref = tmp_path / "m0__m1.pkl", tmp_path / "m0__words.pkl"
    run_pair(files[0][0], files[1][0], pair, words=words, n_perm=20, k_nn=5, k_pca=4)
    run_pair(files[0][0], words, ref, kind="words", n_perm=20, k_nn=5, k_pca=4)
    r, w = load_pickle(pair), load_pickle(ref)
    assert set(r["controls"]) == {"explicit", "implicit", WORDS_PARTIALLED} and set(w["controls"]) == {
        "explicit", "implicit"}  # the words are not partialled out of themselves
    assert w["kind"] == "words" and [(d["layer_a"], d["layer_b"]) for d in w["matched"]] == [(0, 0), (1, 0), (2, 0)]
    for depth in r["controls"]["explicit"]:
        assert set(CONTROL_MEASURES) <= depth.keys() and depth["null"]["rsa"].shape == (20,)
    assert r["controls"]["explicit"][1]["linear_cka"] != r["matched"][1]["linear_cka"]  # half the prompts
    run_summary([pair, ref], tmp_path / "summary.json")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"emotion_specific / words_partialled", "emotion_specific / explicit / words",
            "texts_alike / words"} <= set(summary["families"])
    assert summary["families"]["emotion_specific / explicit"]["n_tests"] == 3 * 3  # transfer, subspace, RSA x depths
    assert not _summary_problems(summary, [r, w])
