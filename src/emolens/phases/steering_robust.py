"""Steering robustness: the chosen vector under readout templates it was not chosen on, and a choice inside the network.

Method. (1) Template shift: the (index, dose) chosen on the fit half under the run's readout suffix is measured
again on the same held-out prompts under each of ``steering.templates`` (other readout suffixes, the same label
words: each must stay one token, :meth:`emolens.data.readout.Readout.label_token_ids`). Each template gets its own
clean run and calibration, and the chosen point's tests against its label-permuted null (on-target shift and both
specificity forms, the same permuted directions and bootstrap; the Gaussian and isotropic nulls, which test the
on-target shift only, are left out to keep the cost at a third), so a template equal to the run's suffix
reproduces the chosen point's numbers exactly. The clean calibrated and raw readout accuracy under
each template says whether the model reads the emotion there at all. (2) Inside the network: adding a class-mean
difference at the last index edits the readout's own input; the same choice rule restricted to the steered
indices at relative depth ``steering.max_depth`` or less (:func:`emolens.stats.steering_stats.choose_within_depth`)
gives a second point, tested on the held-out half like the first against the label-permuted null.

Inputs: what :func:`emolens.phases.steering.run_steering` measured. Output: the ``template_shift`` and
``best_within_depth`` entries of the steering file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emolens.data.readout import Readout
from emolens.engine.steered import Measured, measure
from emolens.model.adapter import ModelAdapter
from emolens.phases.ablation import calibrated_accuracy
from emolens.stats.steering_stats import choose_within_depth

Tests = Callable[..., dict[str, Any]]  # (a half's prompts, index, dose, *nulls) -> chosen_dose_tests


def template_shift(adapter: ModelAdapter, records: Sequence[dict[str, Any]], readout: Readout,
                   templates: Sequence[str], kl_prompts: int, layer: int, alpha: float, tests: Tests,
                   items: Sequence[str], batch_size: int) -> list[dict[str, Any]]:
    """Per template (a readout suffix): its clean readout accuracy and the chosen (layer, alpha)'s tests on the
    held-out ``records`` read through it (``items``: the held-out items in the bootstrap's order)."""
    out = []
    for suffix in templates:
        held = measure(adapter, records, dataclasses.replace(readout, suffix=suffix), kl_prompts,
                       batch_size=batch_size)
        assert list(held.items) == list(items), "a template changed the held-out items"
        truth = held.prompts.truth
        out.append({"suffix": suffix, "same_as_run": suffix == readout.suffix,
                    "accuracy_calibrated": float(calibrated_accuracy(held.clean.labels[0], truth)),
                    "accuracy_raw": float((held.clean.labels[0].argmax(-1) == truth).mean()),
                    **tests(held, layer, alpha, "permuted")})
    return out


def within_depth(selection: dict[str, Any], layers: Sequence[int], alphas: Sequence[float], n_layers: int,
                 max_depth: float, best: dict[str, Any], held: Measured, tests: Tests) -> dict[str, Any]:
    """The fit half's choice among indices at relative depth ``max_depth`` or less, tested on the held-out half
    against the label-permuted null (the chosen point's own tests, ``best``, where it is the same point); ``layer``
    None where none is that shallow."""
    choice = choose_within_depth(np.asarray(selection["on_target_ld"]), np.asarray(selection["kl_nonlabel_max"]),
                                 layers, n_layers, alphas, selection["kl_budget"], max_depth)
    if choice is None:
        return {"max_depth": max_depth, "layer": None}
    layer, alpha = layers[choice["position"]], alphas[choice["alpha_position"]]
    same = (layer, alpha) == (selection["layer"], selection["alpha"])
    return {"max_depth": max_depth, "layer": layer, "relative_depth": layer / n_layers, "alpha": alpha,
            "same_as_best": same, "within_budget": choice["within_budget"],
            "fit_on_target": choice["fit_on_target"], "fit_kl_nonlabel": choice["fit_kl_nonlabel"],
            **(best if same else tests(held, layer, alpha, "permuted"))}
