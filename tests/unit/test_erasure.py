"""The length-erasure control: LEACE removes what is linear in length and nothing that is not."""

import numpy as np

from emolens.phases.vectors import decoding_test
from emolens.stats.erasure import ConceptEraser, erased
from emolens.stats.probes import probe_model
from emolens.stats.resampling import grouped_folds, out_of_fold


def _data(seed=0, n_frames=40, per=8, width=12):
    """Labels carried by length only (dims 0-1 are length); the caller may add an emotion direction."""
    rng = np.random.default_rng(seed)
    n = n_frames * per
    labels = np.tile(np.arange(4), n // 4)
    frames = np.repeat([f"f{k}" for k in range(n_frames)], per)
    length = 10 + 2.0 * labels + rng.normal(0, 0.5, n)  # longer texts for higher labels: a length cue
    x = rng.normal(0, 1, (n, width))
    x[:, 0] += length
    x[:, 1] += 0.5 * length
    return x, labels, frames, length[:, None]


def test_the_eraser_leaves_no_linear_trace_of_the_concept():
    x, _, _, z = _data()
    fit = np.arange(len(x)) % 5 != 0
    out = erased(x, z, fit)
    cov = ((out[fit] - out[fit].mean(0)) * (z[fit] - z[fit].mean(0))).mean(0)
    assert np.abs(cov).max() < 1e-8 and np.abs(np.cov(x[fit].T, z[fit].T)[-1, :-1]).max() > 1
    np.testing.assert_allclose(ConceptEraser(1).fit(np.column_stack([x, z])).transform(np.column_stack([x, z])),
                               erased(x, z, np.ones(len(x), bool)))


def test_a_length_cue_dies_with_erasure_and_an_emotion_direction_survives():
    x, labels, frames, z = _data()
    fold = grouped_folds(list(frames), 5)
    before = (out_of_fold(probe_model(0), x, labels, fold) == labels).mean()
    after = (out_of_fold(probe_model(0, erase=1), np.column_stack([x, z]), labels, fold) == labels).mean()
    assert before > 0.7 and after < 0.4, (before, after)
    x_emotion = x.copy()
    x_emotion[np.arange(len(x)), 4 + labels] += 3.0  # one direction per emotion, besides the length cue
    kept = (out_of_fold(probe_model(0, erase=1), np.column_stack([x_emotion, z]), labels, fold) == labels).mean()
    assert kept > 0.8, kept


def test_the_decoding_test_after_erasure_finds_length_only_labels_undecodable():
    x, labels, frames, z = _data()
    fold = grouped_folds(list(frames), 5)
    stacked = x[:, None, :]  # one layer
    assert decoding_test(stacked, labels, frames, fold, 99, 0)["p_fwer"][0] <= 0.05
    assert decoding_test(stacked, labels, frames, fold, 99, 0, concept=z)["p_fwer"][0] > 0.05
