"""The findings page's two primitives: a number as the page prints it, and a markdown table."""

from __future__ import annotations

from typing import Any

import numpy as np


def number(x: Any, digits: int = 2) -> str:
    """A number for the page; n/a for missing or NaN."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]
