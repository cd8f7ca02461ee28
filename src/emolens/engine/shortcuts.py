"""The fast patching engine's two shortcuts, both from causality: fork a prefix KV cache (one forward's own copy of
chosen rows), and start a forward at the first patched block (the blocks below it return their input)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from emolens.model.adapter import ModelAdapter


def expand_cache(cache: Any, index: torch.Tensor, room: int, buffers: dict[Any, torch.Tensor],
                 first_block: int = 0) -> Any:
    """A cache for one forward whose batch row i is row index[i] of ``cache``, with room for ``room`` tokens.

    Dynamic layers (full and sliding-window) are shallow-copied, their keys/values gathered into
    ``buffers`` [rows, kv_heads, cached + room, d_head] that the caller reuses from chunk to chunk,
    and ``update`` writes the suffix's keys/values in place and returns the full states, as those
    layers do, without their torch.cat. The copy's state is not advanced: it serves one forward.
    Reuse matters on CPU, where a fresh allocation of this size costs page faults worth ten times
    the copy (``benchmarks/bench_patching.py``). Other layer types fall back to
    ``batch_select_indices``. Layers below ``first_block`` are not copied: the forward skips those blocks
    (:func:`skipping_blocks`) and reads only their length. The original cache is left untouched.
    """
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    for i, layer in enumerate(new.layers):
        if i < first_block:
            continue
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) or getattr(layer, "record_past", False):
            layer.batch_select_indices(index)
        elif layer.get_seq_length() > 0:
            cached = layer.keys.shape[-2]
            full = [_buffer(buffers, (i, name), x, len(index), cached + room)
                    for name, x in (("keys", layer.keys), ("values", layer.values))]
            for x, buf in zip((layer.keys, layer.values), full, strict=True):
                torch.index_select(x, 0, index, out=buf[:, :, :cached])
            layer.keys, layer.values = (buf[:, :, :cached] for buf in full)
            layer.update = _write_in_place(*full, cached)
    return new


def _buffer(buffers: dict[Any, torch.Tensor], key: Any, like: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    """``buffers[key]``'s first ``rows`` rows, shaped like ``like`` but ``length`` long; (re)made when too small."""
    shape = (like.shape[1], length, like.shape[3])
    buf = buffers.get(key)
    if buf is None or buf.shape[0] < rows or buf.shape[1:] != shape or buf.dtype != like.dtype:
        buf = buffers[key] = like.new_empty(rows, *shape)
    return buf[:rows]


def _write_in_place(keys: torch.Tensor, values: torch.Tensor, cached: int) -> Callable:
    """A cache layer's ``update`` that writes new states after ``cached`` tokens and returns the full states."""
    def update(key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        end = cached + key_states.shape[-2]
        keys[:, :, cached:end] = key_states
        values[:, :, cached:end] = value_states
        return keys[:, :, :end], values[:, :, :end]
    return update


@contextmanager
def skipping_blocks(adapter: ModelAdapter, first: int, clean: torch.Tensor) -> Iterator[None]:
    """Blocks below ``first`` return their input untouched, and block ``first`` starts from ``clean`` [rows, pos, d]
    (the clean residual stream there): what no patch at block ``first`` or later can change is not recomputed.
    The blocks' own hooks still run; a hook at residual index ``first`` sees ``clean``."""
    skipped = {block: block.__dict__.get("forward") for block in adapter.layers[:first]}  # accelerate's, if offloaded
    for block in skipped:
        block.forward = _return_input
    handle = adapter.layers[first].register_forward_pre_hook(_start_from(clean), with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()
        for block, own in skipped.items():
            if own is None:
                del block.forward
            else:
                block.forward = own


def _return_input(*args: Any, **kwargs: Any) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _start_from(clean: torch.Tensor) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
        if args:
            return (clean, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": clean}
    return hook
