"""The findings page says what the run's design resolves, and warns below the frames the calibration covers."""

from types import SimpleNamespace

from emolens.report.findings import resolution_section
from emolens.stats.power import CALIBRATED_FRAMES


def results(n_frames: int, n_prompts: int) -> SimpleNamespace:
    """A fake run: only the dataset card and power.json's settings that the section reads."""
    card = {"emotions": ["gratitude", "anger", "apology", "neutral"], "n_frames": n_frames, "n_prompts": n_prompts}
    return SimpleNamespace(dataset_card=card, readout={}, vectors={}, steering={},
                           statistics={"power": {"alpha": 0.05, "power": 0.8}})


def test_a_six_frame_dataset_is_warned_about():
    text = "\n".join(resolution_section(results(6, 48)))
    assert "6 frames (48 prompts), alpha 0.05, power 0.8" in text
    assert "Cohen's d 1.43" in text  # TTestPower at 6 frames
    assert f"**Warning:** 6 frames, fewer than the {CALIBRATED_FRAMES}" in text


def test_the_built_in_design_gets_its_resolution_and_no_warning():
    text = "\n".join(resolution_section(results(64, 900)))
    assert "64 frames (900 prompts)" in text and "Cohen's d 0.36" in text and "Warning" not in text


def test_no_section_without_a_dataset_card():
    empty = SimpleNamespace(dataset_card={}, readout={}, vectors={}, steering={}, statistics={})
    assert resolution_section(empty) == []
