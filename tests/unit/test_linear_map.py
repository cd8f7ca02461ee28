"""The ridge map across widths: its primal (narrow a) and dual (wide a) solutions are the same map."""

from __future__ import annotations

import numpy as np
import pytest

from emolens.stats.similarity import fit_linear_map


@pytest.mark.parametrize("width", [8, 60])  # below and above the 30 training prompts: primal, then dual
def test_the_map_is_the_dual_ridge_solution_at_any_width(width):
    rng = np.random.default_rng(width)
    xa, xb, v = rng.normal(size=(30, width)), rng.normal(size=(30, 12)), rng.normal(size=(5, width))
    ca, cb = xa - xa.mean(0), xb - xb.mean(0)
    g = ca @ ca.T
    dual = np.linalg.solve(g + 0.1 * np.trace(g) / 30 * np.eye(30), cb)  # W = Xa^T (Xa Xa^T + lam I)^-1 Xb
    lmap = fit_linear_map(xa, xb, 0.1)
    assert lmap.directions(v) == pytest.approx((v @ ca.T) @ dual, rel=1e-9, abs=1e-12)
    assert lmap.points(xa) == pytest.approx(((xa - xa.mean(0)) @ ca.T) @ dual + xb.mean(0), rel=1e-9, abs=1e-12)
