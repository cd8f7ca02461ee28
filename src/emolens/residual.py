"""Phase 5, residual-stream patching: where along depth and position the emotion is carried.

Method. For every (source, target) pair of the same item (denoising: run the target, patch in the
source; noising: the reverse), the residual stream at index l (the stream entering block l; index
L = the last block's output before the final norm) is replaced by the donor's, and the normalised
logit difference of the two label tokens is read at the last position (0 = run unpatched, 1 = donor
clean). Two sweeps per layer: the last position over ALL pairs (the donor's last token into the
run's last token, whatever the two lengths), and positions -2..-n_positions over the pairs whose
prompts tokenise to the same length (other pairs are NaN there). Both use the prefix-cached engine
of :mod:`emolens.patching`. The work is cut into layer chunks (one job each, for the cluster);
:func:`merge` checks the chunks and joins them, with a 95% bootstrap CI over pairs.

Inputs: a model adapter, the dataset records, the chunk's residual indices. Outputs:
``results/<p>/patching/residual/chunks/<m>/layers_<a>-<b>.pkl`` (schema ``emolens.residual_chunk/1``)
and ``results/<p>/patching/residual/<m>_residual_sweep.pkl`` (schema ``emolens.residual_sweep/1``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emolens.chunks import CHUNK_NAME, chunk_name, chunk_ranges
from emolens.io import ResultFileError, load_pickle, provenance, save_pickle
from emolens.models import ModelAdapter
from emolens.patching import Pairs, normalised, patch_pairs, prepare_pairs, resid_site
from emolens.readout import READOUT_SUFFIX
from emolens.statistics import mean_ci

log = logging.getLogger(__name__)
CHUNK_SCHEMA = "emolens.residual_chunk/1"
SWEEP_SCHEMA = "emolens.residual_sweep/1"


def sweep(adapter: ModelAdapter, pairs: Pairs, layers: Sequence[int], n_positions: int,
          batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patched LD [P, len(layers), n_positions] (offsets -1..-n_positions, NaN where not patched),
    and the clean LDs of the run and donor prompts, [P] each."""
    layers = list(layers)
    offsets = [-(k + 1) for k in range(n_positions)]
    ld = np.full((len(pairs), len(layers), n_positions), np.nan)
    last = [(resid_site(layer, (-1,)),) for layer in layers]
    ld[:, :, 0], ld_run, ld_donor = patch_pairs(adapter, pairs, last, batch_size=batch_size,
                                                desc="residual, last position")
    same = np.flatnonzero(pairs.same_length)
    if n_positions > 1 and len(same):
        earlier = [(resid_site(layer, (o,)),) for o in offsets[1:] for layer in layers]
        out, _, _ = patch_pairs(adapter, pairs, earlier, subset=same, batch_size=batch_size,
                                desc="residual, earlier positions")
        ld[same, :, 1:] = out.reshape(len(same), n_positions - 1, len(layers)).transpose(0, 2, 1)
    return ld, ld_run, ld_donor


def run_chunk(adapter: ModelAdapter, records: Sequence[dict[str, Any]], layers: Sequence[int],
              out: str | Path, *, n_positions: int = 5, max_pairs: int | None = None,
              direction: str = "denoising", batch_size: int = 32, seed: int = 0,
              settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Patch the residual indices ``layers`` for every pair and save one chunk file."""
    started = time.time()
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer <= adapter.n_layers]
    if bad:
        raise IndexError(f"residual indices {bad} outside 0..{adapter.n_layers} for {adapter.name}")
    pairs = prepare_pairs(adapter, records, direction=direction, max_pairs=max_pairs, seed=seed)
    shortest = min(len(t) for t in pairs.run + pairs.donor)
    if not 1 <= n_positions <= shortest:
        raise ValueError(f"n_positions={n_positions} must be between 1 and the shortest prompt ({shortest} tokens)")
    log.info("%s: residual indices %d-%d, %d pairs (%d of equal length), %s", adapter.name, layers[0],
             layers[-1], len(pairs), pairs.same_length.sum(), direction)
    ld, ld_run, ld_donor = sweep(adapter, pairs, layers, n_positions, batch_size)
    result = {
        "schema": CHUNK_SCHEMA,
        "model": adapter.name,
        "n_layers": adapter.n_layers,
        "layers": layers,
        "positions": [-(k + 1) for k in range(n_positions)],
        "pairs": [tuple(p) for p in pairs.ids],
        "effect": normalised(ld, ld_run, ld_donor),
        "ld_patched": ld,
        "ld_clean_run": ld_run,
        "ld_clean_donor": ld_donor,
        "suffix": READOUT_SUFFIX,
        "label_token_ids": pairs.label_token_ids,
        "direction": direction,
        "quantization": adapter.quantization,
        "provenance": provenance(settings or {}, started, model=adapter.name),
    }
    save_pickle(result, out)
    log.info("wrote %s", out)
    return result


# --- merge -----------------------------------------------------------------------------------------
def _rebuild(path: Path) -> str:
    return f"rebuild it with: snakemake -R {path}"


def _load_chunk(path: Path) -> dict[str, Any]:
    try:
        chunk = load_pickle(path, schema=CHUNK_SCHEMA)
    except ResultFileError as e:
        raise ResultFileError(f"{e}; {_rebuild(path)}") from None
    missing = [k for k in ("layers", "positions", "pairs", "effect", "direction", "label_token_ids")
               if k not in chunk]
    if missing:
        raise ResultFileError(f"{path}: residual chunk lacks {missing}; {_rebuild(path)}")
    effect = np.asarray(chunk["effect"])
    expected = (len(chunk["pairs"]), len(chunk["layers"]), len(chunk["positions"]))
    if effect.shape != expected:
        raise ResultFileError(f"{path}: effect has shape {effect.shape}, expected {expected}; {_rebuild(path)}")
    m = CHUNK_NAME.search(path.name)
    if m and list(chunk["layers"]) != list(range(int(m[1]), int(m[2]) + 1)):
        raise ResultFileError(f"{path}: holds residual indices {chunk['layers']}, not the "
                              f"{m[1]}-{m[2]} its name says; {_rebuild(path)}")
    return chunk


def _fingerprint(chunk: dict[str, Any]) -> tuple:
    """What every chunk of one sweep must share."""
    return (chunk.get("model"), chunk.get("n_layers"), tuple(chunk["positions"]),
            tuple(map(tuple, chunk["pairs"])), chunk["direction"], chunk.get("suffix"),
            tuple(sorted(chunk["label_token_ids"].items())))


def merge(chunk_paths: Sequence[str | Path], out: str | Path, n_layers: int, *, seed: int = 0,
          n_resamples: int = 2000) -> dict[str, Any]:
    """Check the chunk files of one model, join them along the layers, add bootstrap CIs, save.

    Refuses (naming the file and the command that rebuilds it) a missing, truncated or foreign
    chunk, and any layer covered twice or not at all in 0..n_layers.
    """
    started = time.time()
    paths = [Path(p) for p in chunk_paths]
    if not paths:
        raise ResultFileError(f"{out}: no residual chunks to merge")
    chunks = [_load_chunk(p) for p in paths]
    prints = [_fingerprint(c) for c in chunks]
    common, _ = Counter(prints).most_common(1)[0]
    for path, fp, chunk in zip(paths, prints, chunks, strict=True):
        if fp != common:
            what = [name for name, a, b in zip(
                ("model", "n_layers", "positions", "pairs", "direction", "suffix", "label_token_ids"),
                fp, common, strict=True) if a != b]
            raise ResultFileError(f"{path}: foreign chunk (its {', '.join(what)} differ from the other "
                                  f"chunks'); {_rebuild(path)}")
        if chunk.get("n_layers") not in (None, n_layers):
            raise ResultFileError(f"{path}: chunk of a {chunk['n_layers']}-layer model, expected {n_layers}; "
                                  f"{_rebuild(path)}")
    owner: dict[int, Path] = {}
    for path, chunk in zip(paths, chunks, strict=True):
        for layer in chunk["layers"]:
            if not 0 <= layer <= n_layers:
                raise ResultFileError(f"{path}: residual index {layer} outside 0..{n_layers}; {_rebuild(path)}")
            if layer in owner:
                raise ResultFileError(f"residual index {layer} is in both {owner[layer]} and {path}; "
                                      f"remove the stale one and {_rebuild(path)}")
            owner[layer] = path
    missing = sorted(set(range(n_layers + 1)) - set(owner))
    if missing:
        folder = paths[0].parent
        gaps = _runs(missing)
        size = max(len(c["layers"]) for c in chunks)  # the workflow's chunk size, as far as we can tell
        names = [folder / chunk_name(a, b) for a, b in chunk_ranges(n_layers, size)
                 if any(a <= layer <= b for layer in missing)]
        raise ResultFileError(f"residual indices {', '.join(f'{a}-{b}' for a, b in gaps)} are in no chunk "
                              f"(expected {', '.join(map(str, names))}); rebuild with: "
                              f"snakemake -R {' '.join(map(str, names))}")
    order = sorted(range(len(chunks)), key=lambda i: chunks[i]["layers"][0])
    first = chunks[order[0]]
    effect = np.concatenate([np.asarray(chunks[i]["effect"]) for i in order], axis=1)  # [P, L+1, positions]
    mean, low, high = mean_ci(effect, n_resamples, seed)
    result = {
        "schema": SWEEP_SCHEMA,
        "model": first.get("model"),
        "n_layers": n_layers,
        "layers": list(range(n_layers + 1)),
        "positions": list(first["positions"]),
        "pairs": [tuple(p) for p in first["pairs"]],
        "effect": effect,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "ci": "95% BCa bootstrap over pairs (NaN pairs left out per cell)",
        "ld_clean_run": first.get("ld_clean_run"),
        "ld_clean_donor": first.get("ld_clean_donor"),
        "suffix": first.get("suffix"),
        "label_token_ids": first["label_token_ids"],
        "direction": first["direction"],
        "quantization": first.get("quantization"),
        "chunks": [str(paths[i]) for i in order],
        "provenance": provenance({"n_layers": n_layers, "seed": seed, "n_resamples": n_resamples}, started,
                                 model=first.get("model"),
                                 chunk_provenance=[chunks[i].get("provenance") for i in order]),
    }
    save_pickle(result, out)
    log.info("wrote %s: %d pairs x %d layers x %d positions", out, *effect.shape)
    return result


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers as inclusive (first, last) ranges."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs
