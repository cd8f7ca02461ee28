"""Power in frames (emolens.stats.power) against statsmodels' own power function, and the design's resolution."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.power import TTestPower

from emolens.stats.power import CALIBRATED_FRAMES, design_resolution, detectable_accuracy_gain, detectable_d


@pytest.mark.parametrize("n", [3, 6, 24, 64])
def test_the_detectable_d_has_the_target_power_in_statsmodels(n):
    d = detectable_d(n, 0.05, 0.8)
    assert TTestPower().power(effect_size=d, nobs=n, alpha=0.05) == pytest.approx(0.8, abs=1e-6)
    assert detectable_d(n + 1, 0.05, 0.8) < d  # more frames resolve smaller effects


def test_no_power_below_three_frames():
    assert detectable_d(2, 0.05, 0.8) is None and design_resolution(2, 16, 4, 0.05, 0.8)["accuracy_gain"] is None


def test_the_accuracy_gain_is_that_d_in_units_of_a_frame_accuracy_at_chance():
    gain = detectable_accuracy_gain(6, 8, 4, 0.05, 0.8)  # 6 frames of 2 items x 4 emotions
    sd = math.sqrt(0.25 * 0.75 / 8)  # binomial sd of a frame's accuracy over its 8 prompts at chance 1/4
    assert TTestPower().power(effect_size=gain / sd, nobs=6, alpha=0.05) == pytest.approx(0.8, abs=1e-6)
    assert detectable_accuracy_gain(6, 16, 4, 0.05, 0.8) < gain  # more prompts per frame, smaller sd


def test_fewer_frames_than_the_calibration_covers_are_flagged():
    small, full = design_resolution(6, 48, 4, 0.05, 0.8), design_resolution(CALIBRATED_FRAMES, 900, 4, 0.05, 0.8)
    assert small["below_calibration"] and not full["below_calibration"]
    assert small["detectable_d_half"] == detectable_d(3, 0.05, 0.8) > small["detectable_d"] > full["detectable_d"]
