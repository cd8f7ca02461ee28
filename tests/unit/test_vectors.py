"""Phase 3: emotion vectors, item-centred subspaces, frame-grouped probes, the lexical baseline and
cross-register transfer, on planted structure (synthetic records, never the built-in dataset)."""

import json
import pickle

import numpy as np
import pytest

from emolens import EMOTIONS
from emolens.io import load_pickle, save_pickle
from emolens.phases.vectors import probe_accuracy, probe_report, run, split_accuracy, subspace, transfer_splits
from emolens.report.checks import check_vectors
from emolens.stats.geometry import emotion_vectors, item_centred
from emolens.stats.probes import lexical_model, probe_model
from emolens.stats.resampling import grouped_folds, out_of_fold


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


def _records(n_frames=12, per_frame=4, registers=True, shuffle_labels=False, seed=0):
    """Synthetic quadruples: frame f, item i; text k uses frame words, item words and emotion-k words.

    Frames alternate between the registers (even explicit, odd implicit) when ``registers``; with
    ``shuffle_labels`` the emotion label of each item's four texts is permuted, so no word carries it.
    """
    rng = np.random.default_rng(seed)
    words = {k: [f"{'bcdf'[k]}o{'klmnprst'[j]}u" for j in range(8)] for k in range(4)}
    records = []
    for f in range(n_frames):
        frame_words = f"zaf{f}a zeg{f}e"
        for j in range(per_frame):
            item = f"f{f:02d}i{j}"
            labels = rng.permutation(4) if shuffle_labels else range(4)
            for k, e in enumerate(labels):
                emotion_words = " ".join(rng.choice(words[k], size=2, replace=False))
                text = f"{frame_words} wix{item} {emotion_words} yab{f}{j}{k}"
                rec = {"id": f"{item}_{k}", "emotion": EMOTIONS[e], "text": text, "item_id": item, "frame": f"f{f:02d}"}
                if registers:
                    rec["register"] = "explicit" if f % 2 == 0 else "implicit"
                records.append(rec)
    return records


def _activations(records, d=32, sites=2, shared=True, signal=2.0, seed=0):
    """[N, sites, d]: item offsets + noise, and at the last site the emotion's direction, shared by
    both registers or (``shared=False``) unrelated: random directions orthogonal to the explicit ones."""
    rng = np.random.default_rng(seed)
    explicit = rng.normal(size=(4, d))
    implicit = explicit
    if not shared:
        basis, _ = np.linalg.qr(explicit.T)  # [d, 4]
        implicit = rng.normal(size=(4, d))
        implicit -= implicit @ basis @ basis.T
        implicit *= np.sqrt(d) / np.linalg.norm(implicit, axis=1, keepdims=True)
    directions = {"explicit": explicit, "implicit": implicit}
    offsets = {}
    x = rng.normal(size=(len(records), sites, d))
    for n, r in enumerate(records):
        x[n] += offsets.setdefault(r["item_id"], rng.normal(size=d))
        x[n, -1] += signal * directions[r.get("register", "explicit")][EMOTIONS.index(r["emotion"])]
    return x


def test_folds_hold_out_whole_groups():
    records = _records()
    report = probe_report(_activations(records), records, folds=5, seed=0)
    fold, groups = report["fold"], np.array(report["groups"])
    assert sorted(set(fold.tolist())) == list(range(5)) and len(set(groups)) == 12
    for k in range(5):  # no group on both sides of any split
        assert not set(groups[fold == k]) & set(groups[fold != k])
    assert groups.tolist() == [r["frame"] for r in records]
    assert report["probe_cv"].startswith("5-fold GroupKFold over frames")
    with pytest.raises(ValueError, match="cannot make 5 cross-validation folds from 3 group"):
        grouped_folds(["a", "b", "c", "a"], 5)


def test_groups_are_items_where_no_frame_and_registers_unknown():
    records = [{k: v for k, v in r.items() if k not in ("frame", "register")} for r in _records(n_frames=4)]
    report = probe_report(_activations(records), records, folds=4, seed=0)
    assert report["groups"] == [r["item_id"] for r in records]
    assert report["probe_accuracy_by_register"] is None and report["lexical_accuracy_by_register"] is None
    assert all(report[f"{p}transfer_{a}_to_{b}"] is None for p in ("", "lexical_")
               for a, b in (("explicit", "implicit"), ("implicit", "explicit")))


def test_lexical_baseline_reads_words_not_shuffled_labels():
    for shuffle, low, high in ((True, 0.15, 0.35), (False, 0.8, 1.0)):
        records = _records(n_frames=16, shuffle_labels=shuffle)
        labels = np.array([r["emotion"] for r in records])
        fold = grouped_folds([r["frame"] for r in records], 5)
        predicted = out_of_fold(lexical_model(0), np.array([r["text"] for r in records], dtype=object), labels, fold)
        assert low <= (predicted == labels).mean() <= high, shuffle


def test_frame_grouped_folds_are_not_fooled_by_frame_identity():
    rng = np.random.default_rng(0)
    n_frames, per_frame, d = 16, 4, 128
    combos = rng.normal(size=(n_frames, 4, d))  # one random vector per (frame, emotion): no shared emotion axis
    x, emotions, items, frames = [], [], [], []
    for f in range(n_frames):
        for j in range(per_frame):
            offset = 0.5 * rng.normal(size=d)
            for e, emotion in enumerate(EMOTIONS):
                x.append(combos[f, e] + offset + 0.5 * rng.normal(size=d))
                emotions.append(emotion)
                items.append(f"f{f}i{j}")
                frames.append(f"f{f}")
    x = np.array(x)
    assert abs(probe_accuracy(x, emotions, frames, folds=4, seed=0) - 0.25) < 0.1
    assert probe_accuracy(x, emotions, items, folds=4, seed=0) > 0.8  # item folds memorise the frame's combos


def test_cross_register_transfer():
    records = _records(n_frames=16)
    shared = probe_report(_activations(records, shared=True), records, folds=4, seed=0)
    for key in ("transfer_explicit_to_implicit", "transfer_implicit_to_explicit"):
        assert shared[key].shape == (2,) and shared[key][-1] > 0.8, key
        assert abs(shared[key][0] - 0.25) < 0.1, key  # the first site carries no emotion
    assert shared["transfer_cv"].startswith("fit on all prompts of one register")
    assert 0 <= shared["lexical_transfer_explicit_to_implicit"] <= 1
    # Unrelated directions: a probe fitted on one register sends each emotion of the other to some
    # class, right for about one emotion in four; averaged over draws, that is chance.
    labels, groups = np.array([r["emotion"] for r in records]), [r["frame"] for r in records]
    registers = np.array([r["register"] for r in records])
    fold = grouped_folds(groups, 4)
    splits = [transfer_splits(groups, registers, fold, a, b) for a, b in (("explicit", "implicit"),
                                                                           ("implicit", "explicit"))]
    transfer, within = [], []
    for seed in range(8):
        x = _activations(records, d=128, sites=1, shared=False, signal=1.0, seed=seed)[:, 0]
        transfer += [split_accuracy(probe_model(0), x, labels, s) for s in splits]
        implicit = registers == "implicit"
        within.append(probe_accuracy(x[implicit], labels[implicit], np.array(groups)[implicit], folds=4, seed=0))
    assert abs(np.mean(transfer) - 0.25) < 0.1, transfer
    assert np.mean(within) > 0.8  # while each register alone is decodable


def test_transfer_splits_keep_a_frame_shared_by_both_registers_on_one_side():
    groups = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4
    registers = np.array(["explicit", "implicit"] * 8)
    fold = grouped_folds(groups, 4)
    splits = transfer_splits(groups, registers, fold, "explicit", "implicit")
    assert len(splits) == 4
    g = np.array(groups)
    for train, test in splits:
        assert (registers[train] == "explicit").all() and (registers[test] == "implicit").all()
        assert not set(g[train]) & set(g[test])


def _run_toy(tmp_path, records=None):
    records = records or _records(n_frames=10)
    x = _activations(records, d=16, sites=3)
    save_pickle({"schema": "emolens.activations/2", "resid": {"last": x.astype(np.float32), "mean": x},
                 "ids": [r["id"] for r in records], "emotions": [r["emotion"] for r in records],
                 "item_ids": [r["item_id"] for r in records], "text_tokens": [len(r["text"].split()) for r in records],
                 "learned_positions": False, "n_layers": 2, "d_model": 16, "quantization": None,
                 "provenance": {"model": "toy"}},
                tmp_path / "act.pkl")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run(tmp_path / "act.pkl", tmp_path / "data.jsonl", tmp_path / "v.pkl", tmp_path / "s.pkl", k_max=4, folds=4,
        seed=0)
    return records


def test_run_writes_contract(tmp_path):
    records = _run_toy(tmp_path)
    vec = load_pickle(tmp_path / "v.pkl", schema="emolens.vectors/1")
    sub = load_pickle(tmp_path / "s.pkl", schema="emolens.subspaces/1")
    assert vec["vectors"].shape == (4, 3, 16) and vec["probe_accuracy"].shape == (3,)
    assert sub["basis"].shape == (3, 4, 16) and sub["explained_variance_ratio"].shape == (3, 4)
    assert vec["provenance"]["config_hash"] and sub["provenance"]["wall_seconds"] >= 0
    assert vec["fold"].shape == (len(records),) and vec["groups"] == [r["frame"] for r in records]
    assert set(vec["probe_accuracy_by_register"]) == {"explicit", "implicit"}
    assert vec["transfer_explicit_to_implicit"].shape == (3,) and 0 <= vec["lexical_accuracy"] <= 1
    assert set(vec["lexical_accuracy_by_register"]) == {"explicit", "implicit"}
    assert vec["ids"] == [r["id"] for r in records]
    length = vec["length"]
    assert length["erased_probe_accuracy"].shape == (3,) and length["erased_decoding_test"]["p_fwer"].shape == (3,)
    assert set(length["surface_accuracy"]) == {"all", "explicit", "implicit"} and 0 <= length["token_match"][
        "equal_pairs"] <= 1


def test_run_refuses_a_dataset_that_does_not_match(tmp_path):
    records = _records(n_frames=10)
    _run_toy(tmp_path, records)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[4:]))
    with pytest.raises(ValueError, match=r"act\.pkl and .*data\.jsonl hold different prompts"):
        run(tmp_path / "act.pkl", tmp_path / "data.jsonl", tmp_path / "v.pkl", tmp_path / "s.pkl", k_max=4,
            folds=4, seed=0)


@pytest.mark.parametrize("plant", ["split_frame", "lexical", "transfer_nan", "transfer_above_one", "erased_nan"])
def test_verification_fails_on_planted_violation(tmp_path, plant):
    records = _run_toy(tmp_path)
    assert check_vectors(tmp_path / "v.pkl", tmp_path / "s.pkl", len(records))[0]
    vec = load_pickle(tmp_path / "v.pkl")
    if plant == "split_frame":  # one prompt of a frame moved to another fold
        vec["fold"][0] = (vec["fold"][0] + 1) % 4
    elif plant == "lexical":
        vec["lexical_accuracy"] = 1.2
    elif plant == "transfer_nan":
        vec["transfer_explicit_to_implicit"][1] = np.nan
    elif plant == "erased_nan":
        vec["length"]["erased_probe_accuracy"][0] = np.nan
    else:
        vec["lexical_transfer_implicit_to_explicit"] = 1.5
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(vec))
    ok, detail = check_vectors(tmp_path / "v.pkl", tmp_path / "s.pkl", len(records))
    assert not ok, detail
    if plant == "split_frame":
        assert "1 split across folds" in detail


def test_decoding_test_equals_a_ridge_fit_and_permutes_by_frame():
    from sklearn.linear_model import Ridge

    from emolens.phases.vectors import decoding_test
    from emolens.stats.resampling import grouped_folds

    rng = np.random.default_rng(0)
    frames = np.array([f"f{i % 6}" for i in range(30) for _ in range(4)])  # 30 items in 6 frames
    labels = np.tile(list(EMOTIONS), 30)
    x = rng.normal(size=(120, 2, 6)) + 0.8 * np.eye(4, 6)[np.tile(np.arange(4), 30)][:, None, :]
    x[:, 1] = rng.normal(size=(120, 6))  # a layer without emotion
    fold = grouped_folds(list(frames), 3)
    out = decoding_test(x, labels, frames, fold, 99, seed=0)
    y = np.unique(labels, return_inverse=True)[1]
    correct = 0
    for k in range(3):  # the same probe by sklearn's primal ridge, with an intercept
        tr, te = fold != k, fold == k
        mu, sd = x[tr, 0].mean(0), x[tr, 0].std(0) + 1e-8
        xtr, xte = (x[tr, 0] - mu) / sd, (x[te, 0] - mu) / sd
        lam = np.trace(xtr @ xtr.T) / tr.sum()
        pred = Ridge(alpha=lam).fit(xtr, np.eye(4)[y[tr]]).predict(xte).argmax(1)
        correct += (pred == y[te]).sum()
    assert out["accuracy"][0] == pytest.approx(correct / 120)
    assert out["p_fwer"][0] <= 0.02 and out["p_perm"][1] > 0.05 and (out["p_fwer"] >= out["p_perm"]).all()


def test_decoding_test_of_a_constant_layer_is_chance_not_an_error():
    from emolens.phases.vectors import decoding_test
    from emolens.stats.resampling import grouped_folds

    frames = [f"f{i % 4}" for i in range(12) for _ in range(4)]
    fold = grouped_folds(frames, 2)
    out = decoding_test(np.ones((48, 1, 5)), np.tile(list(EMOTIONS), 12), frames, fold, 19, seed=0)
    assert out["p_perm"][0] == 1.0 and 0 <= out["accuracy"][0] <= 0.5


def test_probe_minus_lexical_band_covers_every_layer_and_fails_without_a_difference():
    from emolens.phases.vectors import probe_minus_lexical

    rng = np.random.default_rng(3)
    frames = np.repeat([f"f{i:02d}" for i in range(40)], 16)
    items = np.repeat([f"i{i:03d}" for i in range(160)], 4)
    frame_skill = rng.normal(0, 0.15, 40)[np.repeat(np.arange(40), 16)]  # frames differ in difficulty
    lexical = rng.random(640) < 0.6 + frame_skill
    correct = np.stack([rng.random(640) < p + frame_skill for p in (0.6, 0.6, 0.9)])  # layer 2 beats it
    out = probe_minus_lexical(correct, lexical, items, frames, 500, seed=0)
    diff = correct.mean(1) - lexical.mean()
    np.testing.assert_allclose(out["difference"], diff)
    assert (out["band_low"] < diff).all() and (diff < out["band_high"]).all() and out["critical_t"] > 1.96
    assert out["above"].tolist() == [False, False, True] and out["first_above"] == 2


def test_ridge_hat_primal_equals_dual():
    from emolens.stats.probes import ridge_hat

    rng = np.random.default_rng(4)
    for width in (5, 60):  # narrower than the 30 training prompts (primal) and wider (dual)
        xtr, xte = rng.standard_normal((30, width)), rng.standard_normal((7, width))
        dual = np.linalg.solve(xtr @ xtr.T + 0.7 * np.eye(30), xtr @ xte.T).T
        np.testing.assert_allclose(ridge_hat(xtr, xte, 0.7), dual, atol=1e-10)
