"""Masked explicit texts (emolens.data.masking) and the probes' masked test (emolens.phases.masked_probe)."""

import numpy as np

from emolens import EMOTIONS
from emolens.data.dataset import STEMS, build_dataset, cue_hits, emotion_cues
from emolens.data.masking import PLACEHOLDER, mask_text, masked_explicit, word_patterns
from emolens.phases.masked_probe import masked_test
from emolens.stats.resampling import grouped_folds

STEM_CUES = emotion_cues(EMOTIONS)


def test_masking_removes_every_emotion_word_of_explicit_texts_and_nothing_else():
    records = build_dataset()
    rows, texts = masked_explicit(records, EMOTIONS)
    assert rows == [i for i, r in enumerate(records) if r["register"] == "explicit"]
    for i, text in zip(rows, texts, strict=True):
        hits = [h for h in cue_hits(text, STEM_CUES) if h in STEMS]
        assert not hits, (records[i]["text"], text)
        changed = text != records[i]["text"]
        assert changed == (records[i]["emotion"] != "neutral"), (records[i]["text"], text)  # neutral names none
        assert text.replace(PLACEHOLDER, "").split()[:4] == records[i]["text"].split()[:4]  # the scenario stays
    patterns = word_patterns(EMOTIONS)
    implicit = [r["text"] for r in records if r["register"] == "implicit"]
    assert [mask_text(t, patterns) for t in implicit] == implicit


def test_masking_takes_whole_words_and_a_users_label_set():
    patterns = word_patterns(EMOTIONS)
    text = "I'm so angry, we made it. Thankfully fine."
    assert mask_text(text, patterns) == "I'm so [MASK], we made it. [MASK] fine."
    assert mask_text("I was mad at Madrid", patterns) == "I was [MASK] at Madrid"  # "mad" is a whole word only
    own = word_patterns({"joy": " joy", "fear": " fear"})
    assert mask_text("Joyful, no fearing here, enjoy", own) == "[MASK], no [MASK] here, enjoy"


def _toy(n_frames=12, per_frame=3, d=12, sites=2, signal=3.0, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(4, d)) * signal
    labels, frames, items, x = [], [], [], []
    for f in range(n_frames):
        for j in range(per_frame):
            offset = rng.normal(size=d)
            for e, emotion in enumerate(EMOTIONS):
                labels.append(emotion)
                frames.append(f"f{f}")
                items.append(f"f{f}i{j}")
                x.append(np.stack([offset + rng.normal(size=d) + means[e] * s for s in range(sites)]))
    rows = np.array([i for i, f in enumerate(frames) if int(f[1:]) % 2 == 0])  # even frames explicit
    return np.array(x), labels, frames, items, rows


def test_masked_test_is_the_unmasked_probe_when_nothing_is_masked_and_drops_when_the_signal_goes():
    x, labels, frames, items, rows = _toy()
    fold = grouped_folds(frames, 4)
    same = {"rows": rows, "last": x[rows], "placeholder": PLACEHOLDER, "changed": np.zeros(len(rows), bool)}
    out = masked_test(x, same, labels, frames, items, fold, n_perm=39, n_boot=200, seed=0)
    np.testing.assert_array_equal(out["accuracy_masked"], out["accuracy_unmasked"])
    assert (out["drop"] == 0).all() and out["accuracy_unmasked"][1] > 0.9 and out["p_fwer"][1] <= 0.05
    gone = x[rows].copy()
    gone[:, 1] = x[rows, 0]  # the emotion's direction removed at the last site
    out = masked_test(x, same | {"last": gone}, labels, frames, items, fold, n_perm=39, n_boot=200, seed=0)
    assert out["accuracy_masked"][1] < 0.45 and out["p_fwer"][1] > 0.05
    assert out["drop"][1] > 0.4 and out["drop_band_low"][1] > 0 and out["drop"][0] == 0
    assert out["accuracy_masked_by_emotion"].shape == (2, 4) and out["chance"] == 0.25
    changed = np.array([labels[r] != "neutral" for r in rows])
    out = masked_test(x, same | {"last": gone, "changed": changed}, labels, frames, items, fold, 39, 200, 0)
    assert out["accuracy_masked_changed"][1] < out["accuracy_masked"][1] + 0.1
    assert out["accuracy_unmasked_changed"][1] > 0.9
