"""Phase 3, emotion vectors, subspaces and linear probes, per layer.

Method. At every residual index, an emotion's vector is the mean last-token activation of its
prompts minus the mean of all other prompts (one vector per emotion of the dataset, in
:func:`emolens.emotion_order`). n class means span at most n - 1 dimensions, so the
subspace is taken from the item-centred activations instead: subtracting each scenario's mean over
its emotions leaves the variation the emotion explains, whose principal directions (PCA) give an
orthonormal basis of up to ``k_max`` dimensions, with the share of that variance each explains.
How linearly decodable the emotion is, is measured by a standardised multinomial logistic probe
whose accuracy is cross-validated with whole sentence frames held out: ``GroupKFold`` over the
dataset's ``frame`` (the ``item_id`` where a record has none) assigns every prompt one fold, once,
and the same folds serve every layer and every baseline, so no frame seen in training is tested and
all numbers are comparable. A probe that recognises frames instead of emotions therefore scores
chance. Beside it stands a lexical baseline in the same folds: a logistic regression on TF-IDF word
uni- and bigrams and character 2-5-grams of the message text alone, which tells how much of the
emotion the words already give away. Where the dataset has both registers (explicit: the emotion is
named; implicit: it is only implied), accuracy is reported per register from the same out-of-fold
predictions, and transfer across registers is measured by fitting on all explicit prompts and
testing on all implicit ones, and the reverse (in held-out folds instead, should a frame appear in
both registers), for the probe at every layer and for the lexical baseline: a probe that transfers
where the words do not reads the emotion rather than its vocabulary. Two tests can fail where the
accuracies alone cannot: the decoding test (a ridge probe per layer against labels permuted by
frame, the whole fit recomputed, family-wise over layers) says where the emotion is decodable above
chance, and probe minus lexical accuracy, paired on the same prompts with a two-stage bootstrap
(frames, then items) and a simultaneous band over layers, says where the probe beats the words.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from tqdm import tqdm

from emolens import emotion_order
from emolens.data.dataset import REGISTERS, load_dataset, surface_accuracy
from emolens.data.surface import length_match, words
from emolens.io import load_pickle, provenance, save_pickle
from emolens.phases.masked_probe import masked_test
from emolens.stats.erasure import erased
from emolens.stats.geometry import emotion_vectors, item_centred
from emolens.stats.probes import lexical_model, probe_model, ridge_classify
from emolens.stats.resampling import (
    frame_groups,
    frame_label_permutations,
    group_sums,
    grouped_folds,
    item_frames,
    max_statistic_pvalues,
    out_of_fold,
    perm_pvalues,
    simultaneous_band,
    two_stage_weights,
)

log = logging.getLogger(__name__)


def subspace(xc: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k principal directions [k, d] of item-centred activations [N, d] and their variance shares."""
    _, s, vt = np.linalg.svd(xc - xc.mean(0), full_matrices=False)
    var = s**2
    k = min(k_max, vt.shape[0])
    return vt[:k], var[:k] / max(var.sum(), 1e-30)


def probe_accuracy(x: np.ndarray, emotions: Sequence[str], groups: Sequence[str], folds: int,
                   seed: int) -> float:
    """Cross-validated accuracy of the probe on [N, d] activations, whole groups held out."""
    labels = np.asarray(emotions)
    return float((out_of_fold(probe_model(seed), x, labels, grouped_folds(groups, folds)) == labels).mean())


def known_registers(records: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """Each record's ``register`` [N], or None when a record has none (a user's own dataset)."""
    registers = [r.get("register") for r in records]
    if not all(isinstance(g, str) and g for g in registers):
        return None
    return np.asarray(registers)


def transfer_splits(groups: Sequence[str], registers: np.ndarray, fold: np.ndarray, source: str,
                    target: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices from ``source``-register prompts to ``target``-register ones.

    One split, all source prompts to all target prompts, when no group has prompts in both
    registers; otherwise one split per fold (source prompts outside it, target prompts inside), so a
    frame is never on both sides.
    """
    groups = np.asarray(groups)
    src, tgt = registers == source, registers == target
    if not set(groups[src]) & set(groups[tgt]):
        return [(np.flatnonzero(src), np.flatnonzero(tgt))]
    return [(np.flatnonzero(src & (fold != k)), np.flatnonzero(tgt & (fold == k))) for k in np.unique(fold)]


def split_accuracy(model: BaseEstimator, x: Any, labels: np.ndarray,
                   splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Accuracy over the test sides of ``splits``, a fresh copy of ``model`` fitted on each train side."""
    correct = total = 0
    for train, test in splits:
        if len(train) and len(test):
            fitted = clone(model).fit(x[train], labels[train])
            correct += int((fitted.predict(x[test]) == labels[test]).sum())
            total += len(test)
    return correct / total if total else float("nan")


def probe_minus_lexical(correct: np.ndarray, lexical: np.ndarray, items: Sequence[str], frames: Sequence[str],
                        n_boot: int, seed: int, level: float = 0.95) -> dict[str, Any]:
    """Probe minus lexical accuracy per layer, paired on the same out-of-fold prompts (correct [S, N],
    lexical [N] bool), with a two-stage bootstrap (frames, then items) and a max-t band over layers.

    The band holds all layers at once (family-wise over layers), so "above lexical" at a layer means
    its band's lower end is above 0.
    """
    diff = correct.astype(float) - lexical.astype(float)[None]  # [S, N]
    item_sum, item_n = group_sums(diff.T, np.ones(diff.shape[1]), items)  # [I, S], [I]
    w = two_stage_weights(item_frames(items, frames), n_boot, np.random.default_rng(seed))  # [B, I]
    boot = (w @ item_sum) / (w @ item_n)[:, None]  # [B, S]
    estimate = diff.mean(1)
    low, high, crit = simultaneous_band(estimate, boot, level)
    above = low > 0
    return {"method": f"probe minus lexical accuracy on the same out-of-fold prompts; {level:.0%} simultaneous band "
                      f"over layers (max-t over a two-stage bootstrap, frames then items, {n_boot} resamples)",
            "difference": estimate, "band_low": low, "band_high": high, "critical_t": crit, "above": above,
            "first_above": int(np.argmax(above)) if above.any() else None}


def probe_report(x: np.ndarray, records: Sequence[dict[str, Any]], folds: int, seed: int,
                 name: str | None = None, n_perm: int = 200, n_boot: int = 1000) -> dict[str, Any]:
    """Probe accuracy per layer of [N, S, d] activations, the lexical baseline and cross-register
    transfer, all on one set of frame-grouped folds; ``records`` are the prompts, in the same order."""
    labels = np.asarray([r["emotion"] for r in records])
    texts = np.asarray([r["text"] for r in records], dtype=object)
    groups = [str(g) for g in frame_groups(records)]
    fold = grouped_folds(groups, folds)
    registers = known_registers(records)
    both = registers is not None and set(REGISTERS) <= set(registers)
    if registers is None:
        log.info("registers unknown (a record has no 'register'): no per-register accuracy, no transfer")
    elif not both:
        log.info("only the %s register in the dataset: no cross-register transfer", sorted(set(registers.tolist())))
    pairs = (REGISTERS, REGISTERS[::-1])
    splits = {pair: transfer_splits(groups, registers, fold, *pair) for pair in pairs} if both else {}
    probe = probe_model(seed)
    correct, transfer = [], {pair: [] for pair in splits}
    for s in tqdm(range(x.shape[1]), desc=f"probes {name}"):
        correct.append(out_of_fold(probe, x[:, s], labels, fold) == labels)
        for pair, pair_splits in splits.items():
            transfer[pair].append(split_accuracy(probe, x[:, s], labels, pair_splits))
    correct = np.array(correct)  # [S, N]
    lexical = out_of_fold(lexical_model(seed), texts, labels, fold) == labels  # [N]

    def by_register(hits: np.ndarray) -> dict[str, Any] | None:  # [..., N] -> {register: mean over its prompts}
        names = [] if registers is None else sorted(set(registers.tolist()))
        return {g: hits[..., registers == g].mean(-1) for g in names} or None

    report = {
        "fold": fold, "groups": groups,
        "registers": None if registers is None else registers.tolist(),
        "probe_cv": f"{folds}-fold GroupKFold over frames (items where no frame), {len(set(groups))} groups; "
                    f"the same folds for every layer and the lexical baseline",
        "probe_accuracy": correct.mean(1),
        "probe_accuracy_by_register": by_register(correct),
        "lexical_accuracy": float(lexical.mean()),
        "lexical_accuracy_by_register": {g: float(v) for g, v in (by_register(lexical) or {}).items()} or None,
        "transfer_cv": None,
        "decoding_test": decoding_test(x, labels, groups, fold, n_perm, seed),
        "probe_vs_lexical": probe_minus_lexical(correct, lexical, [r["item_id"] for r in records], groups, n_boot,
                                                seed),
    }
    if both:
        report["transfer_cv"] = ("fit on all prompts of one register, tested on all of the other"
                                 if len(splits[REGISTERS]) == 1 else
                                 "fold by fold: fit on one register outside the fold, tested on the other inside "
                                 "it (some frames have prompts in both registers)")
    for a, b in pairs:
        report[f"transfer_{a}_to_{b}"] = np.array(transfer[a, b]) if both else None
        report[f"lexical_transfer_{a}_to_{b}"] = (split_accuracy(lexical_model(seed), texts, labels, splits[a, b])
                                                 if both else None)
    return report


def length_control(x: np.ndarray, records: Sequence[dict[str, Any]], text_tokens: np.ndarray, fold: np.ndarray,
                   seed: int, n_perm: int, name: str | None = None) -> dict[str, Any]:
    """What length alone explains, on the probes' folds: the surface baseline (with this model's token
    counts), how well the items' texts match in tokens, and the probe and the decoding test per layer
    of x [N, S, d] after LEACE erases the text's token and word counts (fitted on training folds only)."""
    labels = np.asarray([r["emotion"] for r in records])
    concept = np.column_stack([text_tokens, [len(words(r["text"])) for r in records]]).astype(float)  # [N, 2]
    probe = probe_model(seed, erase=concept.shape[1])
    erased_accuracy = [float((out_of_fold(probe, np.column_stack([x[:, s], concept]), labels, fold) == labels).mean())
                       for s in tqdm(range(x.shape[1]), desc=f"length-erased probes {name}")]
    groups = [str(g) for g in frame_groups(records)]
    return {"concept": "the text's token count (this model's tokenizer) and word count",
            "surface_accuracy": surface_accuracy(list(records), [text_tokens], seed, len(np.unique(fold))),
            "token_match": length_match(text_tokens, [r["item_id"] for r in records]),
            "erased_probe_accuracy": np.array(erased_accuracy),
            "erased_decoding_test": decoding_test(x, labels, groups, fold, n_perm, seed, concept=concept)}


def decoding_test(x: np.ndarray, labels: Sequence[str], frames: Sequence[str], fold: np.ndarray, n_perm: int,
                  seed: int, ridge: float = 1.0, concept: np.ndarray | None = None) -> dict[str, Any]:
    """Is the emotion decodable above chance? A ridge-classifier probe per layer of x [N, S, d] on the
    given folds, against labels permuted by frame (one permutation per frame, all its items), the
    whole fit recomputed (exact and cheap: a ridge fit is linear in the labels, so every
    permutation reuses one solve per fold and layer, :func:`ridge_hat`).

    ``p_perm`` [S] is each layer's permutation p; ``p_fwer`` [S] controls the family-wise error over
    layers (max-statistic: the largest null accuracy over layers of each permutation). With ``concept``
    [N, c], LEACE erases it from each training fold's activations first (the length-erasure control).
    """
    y = np.unique(np.asarray(labels), return_inverse=True)[1].ravel()
    onehot = np.eye(y.max() + 1)[y]  # [N, C]
    y_null = frame_label_permutations(y, frames, n_perm, y.max() + 1, np.random.default_rng(seed))  # [n_perm, N]
    onehot_null = np.eye(y.max() + 1)[y_null]  # [n_perm, N, C]
    observed, null = np.zeros(x.shape[1]), np.zeros((n_perm, x.shape[1]))
    for s in range(x.shape[1]):
        for k in np.unique(fold):
            tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            xs = x[:, s] if concept is None else erased(x[:, s], concept, tr)
            predicted, predicted_null = ridge_classify(xs[tr], xs[te], onehot[tr], onehot_null[:, tr], ridge)
            observed[s] += (predicted == y[te]).sum()
            null[:, s] += (predicted_null == y_null[:, te]).sum(-1)
    observed, null = observed / len(y), null / len(y)
    p, p_fwer = perm_pvalues(observed, null, tol=1e-12), max_statistic_pvalues(observed, null, tol=1e-12)
    return {"probe": "ridge classifier on standardised features (dual form), the same frame-grouped folds",
            "null": "emotion labels permuted by frame (one permutation per frame, all its items), the whole fit "
                    "recomputed", "n_perm": n_perm,
            "accuracy": observed, "null_mean": null.mean(0), "null_q95": np.quantile(null, 0.95, axis=0),
            "p_perm": p, "p_fwer": p_fwer}


def join_records(records: Sequence[dict[str, Any]], act: dict[str, Any], activations: str | Path,
                 dataset: str | Path) -> list[dict[str, Any]]:
    """The dataset records in the activations' prompt order, joined by ``id``; any mismatch is an error."""
    by_id = {r["id"]: r for r in records}
    ids = list(act["ids"])
    missing, extra = [i for i in ids if i not in by_id], sorted(set(by_id) - set(ids))
    if missing or extra:
        raise ValueError(f"{activations} and {dataset} hold different prompts: {len(missing)} activation id(s) not "
                         f"in the dataset {missing[:3]}, {len(extra)} dataset id(s) not in the activations "
                         f"{extra[:3]}; extract the activations again from this dataset")
    joined = [by_id[i] for i in ids]
    stale = [r["id"] for r, e, item in zip(joined, act["emotions"], act["item_ids"], strict=True)
             if (r["emotion"], r["item_id"]) != (e, item)]
    if stale:
        raise ValueError(f"{activations} and {dataset} disagree on the emotion or item of {len(stale)} prompt(s), "
                         f"first {stale[:3]}; extract the activations again from this dataset")
    return joined


def run(activations: str | Path, dataset: str | Path, vectors_out: str | Path, subspaces_out: str | Path, *,
        k_max: int, folds: int, seed: int, n_perm: int = 200, n_boot: int = 1000) -> None:
    """Load one model's activations and the dataset; save emotion vectors, probe results and subspaces."""
    started = time.time()
    act = load_pickle(activations, schema="emolens.activations/2")
    records = join_records(load_dataset(dataset), act, activations, dataset)
    x = act["resid"]["last"].astype(np.float64)  # [N, L+1, d]
    emotions, items = act["emotions"], act["item_ids"]
    n_sites = x.shape[1]
    settings = {"k_max": k_max, "folds": folds, "seed": seed, "n_perm": n_perm, "n_boot": n_boot}
    name = act["provenance"].get("model")
    report = probe_report(x, records, folds, seed, name, n_perm, n_boot)
    report["length"] = length_control(x, records, np.asarray(act["text_tokens"]), report["fold"], seed, n_perm, name)
    report["masked"] = None if act.get("masked") is None else masked_test(
        x, act["masked"], act["emotions"], report["groups"], items, report["fold"], n_perm, n_boot, seed)
    xc = item_centred(x, items)
    bases, ratios = zip(*(subspace(xc[:, s], k_max) for s in range(n_sites)), strict=True)
    common = {"emotions": list(emotion_order(emotions)), "n_layers": act["n_layers"], "d_model": act["d_model"],
              "quantization": act["quantization"], "learned_positions": act["learned_positions"]}
    save_pickle({"schema": "emolens.vectors/1", "vectors": emotion_vectors(x, emotions).astype(np.float32),
                 "ids": list(act["ids"]), **report, **common,
                 "provenance": provenance(settings, started, model=name)}, vectors_out)
    k = min(len(b) for b in bases)
    save_pickle({"schema": "emolens.subspaces/1",
                 "basis": np.stack([b[:k] for b in bases]).astype(np.float32),  # [L+1, k, d]
                 "explained_variance_ratio": np.stack([r[:k] for r in ratios]), **common,
                 "provenance": provenance(settings, started, model=name)}, subspaces_out)
    accuracy, transfer = report["probe_accuracy"], report["transfer_explicit_to_implicit"]
    log.info("wrote %s and %s; probe accuracy best %.3f at index %d (%s); lexical baseline %.3f; "
             "explicit->implicit transfer best %s", vectors_out, subspaces_out, accuracy.max(),
             int(accuracy.argmax()), report["probe_cv"], report["lexical_accuracy"],
             "n/a" if transfer is None else f"{transfer.max():.3f}")
