"""Any label set: two, three and eight emotions through the pure numpy phases (shapes [n_emotions, ...], n(n - 1) / 2
contrasts, k <= n - 1, chance 1 / n, permutations over n labels), on small synthetic activations."""

import json

import numpy as np
import pytest

from emolens import EMOTIONS, emotion_order
from emolens.data.dataset import permuted
from emolens.io import save_pickle
from emolens.phases.ablation import emotion_basis
from emolens.phases.aligned_dims import run_k
from emolens.phases.alignment import run_pair
from emolens.phases.behaviour import readout_report
from emolens.phases.emotion_structure import (
    label_codes,
    label_structure,
    permuted_labels,
    rsa_cross_validated,
    subspace_cosines,
    transfer_cosines,
)
from emolens.report.checks import check_dataset, k_problems
from emolens.stats.effects import contrast, contrast_counts, contrasts
from emolens.stats.geometry import emotion_vectors
from emolens.stats.resampling import frame_label_permutations
from emolens.stats.steering_stats import (
    chosen_dose_tests,
    item_bootstrap,
    permuted_vectors,
    readout_measures,
    shift_summary,
)

SETS = {2: ("sadness", "joy"), 3: ("joy", "sadness", "fear"),
        8: ("trust", "joy", "fear", "surprise", "sadness", "disgust", "anger", "anticipation")}


@pytest.fixture(params=sorted(SETS), ids=lambda n: f"{n}_emotions")
def data(request):
    """n emotions written into 16 items (2 per frame), d = 12: emotion means + item offsets + noise, 2 sites."""
    names = SETS[request.param]
    order = emotion_order(names)
    rng = np.random.default_rng(len(names))
    n_items, d = 16, 12
    labels = np.tile(np.asarray(names), n_items)  # file order: each item's emotions as the names list them
    items = np.repeat([f"i{i:02d}" for i in range(n_items)], len(names))
    frames = np.repeat([f"f{i // 2:02d}" for i in range(n_items)], len(names))
    means = 3.0 * rng.standard_normal((len(order), d))
    item_offsets = rng.standard_normal((n_items, d))[np.arange(len(labels)) // len(names)]
    x = means[[order.index(e) for e in labels]] + item_offsets + 0.3 * rng.standard_normal((len(labels), d))
    x = np.stack([x, 0.5 * x + 0.1 * rng.standard_normal(x.shape)], axis=1)  # [N, 2 sites, d]
    return {"names": names, "order": order, "labels": labels, "items": items, "frames": frames, "x": x, "rng": rng}


def test_the_order_is_the_sets_own_whatever_the_files_order():
    assert emotion_order(["sadness", "joy", "sadness"]) == ("joy", "sadness")
    assert emotion_order(["neutral", "joy", "gratitude"]) == ("gratitude", "neutral", "joy")  # built-in first
    assert emotion_order(reversed(EMOTIONS)) == EMOTIONS


def test_vectors_and_bases_have_one_row_per_emotion_and_k_below_n(data):
    n, x, labels = len(data["order"]), data["x"], data["labels"]
    vectors = emotion_vectors(x, labels)
    assert vectors.shape == (n, 2, 12)
    joy = data["order"].index("joy")
    np.testing.assert_allclose(vectors[joy], x[labels == "joy"].mean(0) - x[labels != "joy"].mean(0))
    basis = emotion_basis(x[:, 0], labels)
    assert basis.shape == (n - 1, 12)  # n class means span n - 1 dimensions
    np.testing.assert_allclose(basis @ basis.T, np.eye(n - 1), atol=1e-10)


def test_contrasts_are_every_unordered_pair_of_the_run(data):
    order = data["order"]
    all_pairs = contrasts(data["names"])
    assert len(all_pairs) == len(order) * (len(order) - 1) // 2 == len(set(all_pairs))
    a, b = order[0], order[-1]
    assert contrast(b, a) == contrast(a, b) == f"{a}-{b}" and contrast(a, b) in all_pairs
    counts = contrast_counts([contrast(a, b)] * 3, np.array([True, False, True]), order)
    assert list(counts) == all_pairs and counts[f"{a}-{b}"] == {"pairs": 3, "included": 2, "excluded": 1}


def test_the_readout_report_has_chance_one_over_n(data):
    n, labels, rng = len(data["order"]), data["labels"], data["rng"]
    logits = rng.standard_normal((len(labels), n))
    logits[np.arange(len(labels)), [data["order"].index(e) for e in labels]] += 5.0  # the right label wins
    report = readout_report(logits, labels)
    assert report["chance"] == pytest.approx(1 / n) and report["emotions"] == list(data["order"])
    assert np.asarray(report["confusion"]).shape == (n, n) and report["accuracy"] == 1.0
    assert np.asarray(report["confusion"]).sum(1).tolist() == [16] * n and list(report["predicted_share"]) == report[
        "emotions"]


def test_steering_statistics_on_n_emotions(data):
    n, x, labels, rng = len(data["order"]), data["x"][:, 0], data["labels"], data["rng"]
    perms = permuted_vectors(x, labels, data["frames"], 3, np.random.default_rng(3))  # [3, n, d]
    codes = np.array([data["order"].index(e) for e in labels])
    again = frame_label_permutations(codes, data["frames"], 3, n, np.random.default_rng(3))
    for p in range(3):  # the same estimator on labels permuted over the n emotions, by frame
        np.testing.assert_allclose(perms[p], emotion_vectors(x[:, None], np.asarray(data["order"])[again[p]])[:, 0])
    prob, ld = readout_measures(rng.standard_normal((5, n)), np.zeros(n))
    assert prob.shape == ld.shape == (5, n) and np.allclose(ld.sum(-1), 0) and np.allclose(prob.sum(-1), 1)
    records = [{"item_id": i, "frame": f} for i, f in zip(data["items"], data["frames"], strict=True)]
    item_names = list(dict.fromkeys(data["items"]))
    boot = item_bootstrap(records, item_names, 50, np.random.default_rng(0))
    shift = rng.standard_normal((2, 3 * n, len(item_names), n)) + 3 * np.eye(3 * n, n)[None, :, None]  # [A, n+R, I, n]
    summary = shift_summary(shift, boot)  # R = 2n isotropic directions after the n emotion vectors
    assert summary["specificity"].shape == (2, n, n) and summary["on_target"].shape == summary["random_mean"].shape
    assert summary["on_target"].shape == (2, n)
    tests = chosen_dose_tests(shift[0, :n], {"permuted": shift[0, n:], "isotropic": shift[0, n:]}, boot)  # 2 perms
    for key in ("on_target", "specificity_row", "specificity_column", "specificity_row_p", "on_target_p_isotropic"):
        assert np.shape(tests[key]) == (n,), key
    assert (tests["specificity_row"] > 0).all()  # the planted diagonal: each vector moves its own readout most


def test_emotion_structure_and_k_on_n_emotions(data):
    n, x, labels = len(data["order"]), data["x"], data["labels"]
    codes = label_codes(labels)
    assert sorted(set(codes.tolist())) == list(range(n))
    perm = permuted_labels(codes, data["frames"], 9, np.random.default_rng(0))  # [10, N]
    assert perm.shape == (10, len(labels)) and (np.sort(perm, 1) == np.sort(codes)).all()
    fit = np.flatnonzero(np.char.compare_chararrays(data["frames"], "f04", "<", True))
    split = (fit, np.setdiff1d(np.arange(len(labels)), fit))
    grams = label_structure(x[:, 0], x[:, 1][:, ::-1], data["items"], split, perm, 0.1)
    assert grams.a_fit.shape == grams.mb.shape == (10, n, n) and grams.n_fit.shape == (10, n)
    assert transfer_cosines(grams).shape == (10, n) and subspace_cosines(grams).shape == (10, n - 1)
    assert rsa_cross_validated(grams).shape == (10,)
    assert transfer_cosines(grams)[0].mean() > 0.9  # the same structure in both: it transfers


def _model_files(tmp_path, name, data, seed):
    """Activations, vectors and subspaces files of a synthetic model reading the data's emotions."""
    rng = np.random.default_rng(seed)
    x = data["x"] @ rng.standard_normal((12, 10 + seed))  # [N, 2, d]
    vectors = np.stack([emotion_vectors(x[:, s], data["labels"]) for s in range(2)], 1)  # [n, 2, d]
    basis = np.stack([np.linalg.qr(x[:, s].T)[0][:, :3].T for s in range(2)])
    paths = [tmp_path / f"{name}.pkl", tmp_path / f"{name}_vectors.pkl", tmp_path / f"{name}_subspaces.pkl"]
    save_pickle({"schema": "emolens.activations/2", "resid": {"last": x, "mean": x},
                 "ids": [f"p{i}" for i in range(len(x))], "emotions": list(data["labels"]),
                 "item_ids": list(data["items"]), "frames": list(data["frames"]), "n_layers": 1, "d_model": x.shape[-1],
                 "quantization": None, "provenance": {}}, paths[0])
    save_pickle({"schema": "emolens.vectors/1", "vectors": vectors, "emotions": list(data["order"]),
                 "probe_accuracy": np.ones(2), "provenance": {}}, paths[1])
    save_pickle({"schema": "emolens.subspaces/1", "basis": basis, "explained_variance_ratio": np.full((2, 3), 1 / 3),
                 "emotions": list(data["order"]), "provenance": {}}, paths[2])
    return paths


def test_alignment_and_k_follow_the_set_and_refuse_vectors_of_another(data, tmp_path):
    n = len(data["order"])
    a, b = _model_files(tmp_path, "a", data, 0), _model_files(tmp_path, "b", data, 1)
    run_pair(a[0], b[0], tmp_path / "a__b.pkl", vectors=(a[1], b[1]), subspaces=(a[2], b[2]), n_perm=5, k_nn=3,
             k_pca=3)
    run_k([a[0], b[0]], [a[2], b[2]], tmp_path / "k.json", n_perm=19)
    k = json.loads((tmp_path / "k.json").read_text())
    assert k["emotions"] == list(data["order"]) and k["pairs"][0]["k_max"] == min(3, n - 1)
    assert not k_problems(k, 2)
    vec = tmp_path / "other_vectors.pkl"
    save_pickle({"schema": "emolens.vectors/1", "vectors": np.zeros((4, 2, 11)), "emotions": list(EMOTIONS),
                 "provenance": {}}, vec)
    with pytest.raises(ValueError, match=r"other_vectors\.pkl: emotions \['gratitude', 'anger', 'apology', 'neutral'\] "
                                         r"are not the prompts'"):
        run_pair(a[0], b[0], tmp_path / "bad.pkl", vectors=(a[1], vec), subspaces=(a[2], b[2]), n_perm=5, k_nn=3,
                 k_pca=3)


def test_null_datasets_and_the_dataset_check_use_the_sets_own_labels(data):
    records = [{"id": f"{i}_{e}", "emotion": str(e), "text": f"{i} {e}", "item_id": str(i), "frame": str(f),
                "register": "implicit"} for i, e, f in zip(data["items"], data["labels"], data["frames"], strict=True)]
    null = permuted(records, "frame", seed=0)
    assert {r["emotion"] for r in null} == set(data["names"])
    for item in set(data["items"]):  # every item keeps one prompt per emotion
        assert sorted(r["emotion"] for r in null if r["item_id"] == item) == sorted(data["names"])
    assert not check_dataset(records)[0]  # each implicit text names its emotion: the set's own stems find it
    clean = [{**r, "text": f"item {r['item_id']} text {k}"} for k, r in enumerate(records)]
    assert check_dataset(clean)[0]
