"""Prospective power in frames, the unit of every test: the frames an effect needs, and what a run's frames resolve.

A frame's items share its templates, so the effective sample of every split, permutation and sign flip is the
number of frames, not of prompts or pairs. The power of a test over frames is that of a two-sided one-sample
t-test on n = frames (statsmodels' ``TTestPower``): the smallest Cohen's d it detects at the target power, and,
for a probe's accuracy, the smallest gain over chance that d amounts to when a frame's accuracy varies only by
the binomial chance of its prompts (variation between frames only raises it). ``CALIBRATED_FRAMES`` is the frame
count of the design calibration suite (``tests/unit/test_calibration_design.py`` asserts its datasets have it):
below it no false-positive rate of these tests has been simulated.
"""

from __future__ import annotations

import math
from typing import Any

from statsmodels.stats.power import TTestPower

CALIBRATED_FRAMES = 64  # frames of every dataset the design calibration suite simulates (the built-in dataset's)
MIN_FRAMES = 3  # a t-test over fewer frames has no power to speak of


def required_n(d: float, alpha: float, power: float) -> int:
    """Smallest n (>= 2) at which a two-sided one-sample t-test reaches the target power at |d|."""
    return max(2, math.ceil(TTestPower().solve_power(effect_size=abs(d), alpha=alpha, power=power)))


def detectable_d(n: int, alpha: float, power: float) -> float | None:
    """Smallest |d| a two-sided one-sample t-test on n units detects with the target power (None below 3 units)."""
    if n < MIN_FRAMES:
        return None
    return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power))


def detectable_accuracy_gain(n_frames: int, prompts_per_frame: float, n_emotions: int, alpha: float,
                             power: float) -> float | None:
    """Smallest gain of accuracy over chance (1 / n_emotions) a test over ``n_frames`` frame accuracies detects:
    the detectable d times the binomial sd of a frame's accuracy at chance over its prompts (a lower bound: frames
    that differ in difficulty make it larger)."""
    d = detectable_d(n_frames, alpha, power)
    chance = 1 / n_emotions
    return None if d is None else d * math.sqrt(chance * (1 - chance) / prompts_per_frame)


def design_resolution(n_frames: int, n_prompts: int, n_emotions: int, alpha: float, power: float) -> dict[str, Any]:
    """What a dataset's design resolves: the smallest d over frames, over one half of the frames (alignment, k and
    steering fit on one half and test on the other), the smallest probe-accuracy gain, and whether the frames are
    fewer than the calibration covers."""
    return {"n_frames": n_frames, "alpha": alpha, "power": power,
            "detectable_d": detectable_d(n_frames, alpha, power),
            "detectable_d_half": detectable_d(n_frames // 2, alpha, power),
            "accuracy_gain": detectable_accuracy_gain(n_frames, n_prompts / n_frames, n_emotions, alpha, power),
            "chance": 1 / n_emotions, "calibrated_frames": CALIBRATED_FRAMES,
            "below_calibration": n_frames < CALIBRATED_FRAMES}
