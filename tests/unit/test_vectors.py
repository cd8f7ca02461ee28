"""Phase 3: emotion vectors, item-centred subspaces and grouped probes on planted structure."""

import numpy as np

from emolens import EMOTIONS
from emolens.io import load_pickle, save_pickle
from emolens.vectors import emotion_vectors, item_centred, probe_accuracy, run, subspace


def _planted(n_items=40, d=16, sites=3, signal=3.0, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(4, d)) * signal
    items = rng.normal(size=(n_items, d)) * 5  # scenario offsets the subspace must ignore
    x, emotions, item_ids = [], [], []
    for i in range(n_items):
        for e, emotion in enumerate(EMOTIONS):
            x.append(np.stack([items[i] + means[e] * s + rng.normal(size=d) for s in range(sites)]))
            emotions.append(emotion)
            item_ids.append(f"i{i}")
    return np.array(x), emotions, item_ids, means


def test_vectors_are_one_vs_rest_means():
    x, emotions, items, _ = _planted()
    v = emotion_vectors(x, emotions)
    labels = np.array(emotions)
    assert v.shape == (4, 3, 16)
    np.testing.assert_allclose(v[1, 2], x[labels == "anger", 2].mean(0) - x[labels != "anger", 2].mean(0))


def test_subspace_recovers_emotion_span_not_items():
    x, emotions, items, means = _planted()
    basis, ratio = subspace(item_centred(x[:, 2], items), k_max=5)
    np.testing.assert_allclose(basis @ basis.T, np.eye(5), atol=1e-10)
    centred_means = means - means.mean(0)
    # the three planted emotion directions lie in the first three basis vectors
    proj = centred_means @ basis[:3].T @ basis[:3]
    assert np.linalg.norm(proj - centred_means) / np.linalg.norm(centred_means) < 0.1
    assert ratio[:3].sum() > 0.8 and np.all(np.diff(ratio) <= 1e-12)


def test_probe_separable_vs_chance():
    x, emotions, items, _ = _planted()
    assert probe_accuracy(x[:, 2], emotions, items, folds=4, seed=0) > 0.95
    assert probe_accuracy(x[:, 0], emotions, items, folds=4, seed=0) < 0.5  # site 0 carries no signal


def test_run_writes_contract(tmp_path):
    x, emotions, items, _ = _planted()
    save_pickle({"schema": "emolens.activations/1", "resid": {"last": x.astype(np.float32), "mean": x},
                 "ids": [str(i) for i in range(len(x))], "emotions": emotions, "item_ids": items,
                 "n_layers": 2, "d_model": 16, "quantization": None, "provenance": {"model": "toy"}},
                tmp_path / "act.pkl")
    run(tmp_path / "act.pkl", tmp_path / "v.pkl", tmp_path / "s.pkl", k_max=4, folds=4, seed=0)
    vec = load_pickle(tmp_path / "v.pkl", schema="emolens.vectors/1")
    sub = load_pickle(tmp_path / "s.pkl", schema="emolens.subspaces/1")
    assert vec["vectors"].shape == (4, 3, 16) and vec["probe_accuracy"].shape == (3,)
    assert sub["basis"].shape == (3, 4, 16) and sub["explained_variance_ratio"].shape == (3, 4)
    assert vec["provenance"]["config_hash"] and sub["provenance"]["wall_seconds"] >= 0
