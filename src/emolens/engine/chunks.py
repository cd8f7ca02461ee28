"""Phase 5's layer chunks and their file names: the contract between the workflow and the merge.

Kept apart from :mod:`emolens.phases.residual` so that reading the workflow (``workflow/rules/common.smk``)
does not import torch.
"""

from __future__ import annotations

import re

CHUNK_NAME = re.compile(r"layers_(\d+)-(\d+)\.pkl$")  # what chunk_name writes: first, last


def chunk_ranges(n_layers: int, chunk_size: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) residual indices of each chunk, covering 0..n_layers (L + 1 indices)."""
    if chunk_size < 1:
        raise ValueError(f"layer chunk size must be at least 1, got {chunk_size}")
    return [(a, min(a + chunk_size - 1, n_layers)) for a in range(0, n_layers + 1, chunk_size)]


def chunk_name(first: int, last: int) -> str:
    """File name of the chunk with residual indices first..last (inclusive): ``layers_08-15.pkl``."""
    return f"layers_{first:02d}-{last:02d}.pkl"
