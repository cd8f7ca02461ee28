"""CUDA out-of-memory backoff: halve the batch and retry, down to batch size 1.

``fn(batch_size)`` must be restartable: it is called again from the start with the smaller batch,
so it must not have written partial output. The retry happens outside the ``except`` block, so the
failed attempt's tensors (held by the traceback) are released before the CUDA cache is emptied.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchOutOfMemoryError(RuntimeError):
    """CUDA ran out of memory even at batch size 1."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's CUDA OutOfMemoryError and for RuntimeErrors that report running out of memory."""
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def free_cuda_memory() -> None:
    """Collect garbage and return cached CUDA blocks to the driver, when CUDA is in use."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_with_backoff(fn: Callable[[int], T], batch_size: int, *, what: str) -> tuple[T, int]:
    """Call ``fn(batch_size)``; on CUDA out-of-memory halve the batch and retry down to 1.

    Returns (result, the batch size that succeeded). Errors other than out-of-memory propagate at
    once; out-of-memory at batch size 1 raises :class:`BatchOutOfMemoryError` naming the setting.
    """
    if batch_size < 1:
        raise ValueError(f"{what}: batch_size must be at least 1, got {batch_size}")
    start = batch_size
    while True:
        try:
            return fn(batch_size), batch_size
        except Exception as e:  # noqa: BLE001 - filtered just below
            if not is_out_of_memory(e):
                raise
            if batch_size == 1:
                origin = f"halved from the configured batch_size {start}" if start > 1 else "the configured batch_size"
                raise BatchOutOfMemoryError(
                    f"{what}: CUDA out of memory even at batch size 1 ({origin}); lowering the model's "
                    f"batch_size setting cannot help: set its quantization: int8 or offload, or use a GPU "
                    f"with more memory ({e})") from e
        # Outside the except block: the failed attempt's traceback and tensors are gone.
        free_cuda_memory()
        smaller = max(1, batch_size // 2)
        log.warning("%s: CUDA out of memory at batch size %d; retrying with %d", what, batch_size, smaller)
        batch_size = smaller
