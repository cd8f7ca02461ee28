"""Phase 5, residual-stream patching: where along depth and position the emotion is carried.

Method. For every (source, target) pair of the same item (denoising: run the target, patch in the
source; noising: the reverse), the residual stream at index l (the stream entering block l; index
L = the last block's output before the final norm) at one position is replaced by the donor's, and
the logit difference LD of the two label tokens is read at the last position. Positions are roles
counted from the end of the prompt: every token all prompts share at their end (the readout
suffix), then the last ``message_positions`` tokens of the message before it; every pair is patched
at every offset (the donor's token at offset o into the run's token at offset o, whatever the two
lengths). The engine is the prefix-cached one of :mod:`emolens.engine.patching`. The work is cut into
layer chunks (one job each, for the cluster); :func:`merge` checks the chunks, joins them and
summarises each cell with the bounded metric of :mod:`emolens.stats.effects` (pairs the clean model does
not separate are left out and counted; ratio of sums with a frame-then-item bootstrap CI).

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

from emolens.data.readout import DEFAULT, Readout
from emolens.engine.chunks import CHUNK_NAME, chunk_name, chunk_ranges
from emolens.engine.pairs import Pairs, prepare_pairs
from emolens.engine.patching import normalised, patch_pairs, resid_site
from emolens.io import ResultFileError, load_pickle, provenance, save_pickle
from emolens.model.adapter import ModelAdapter
from emolens.stats.effects import MIN_SEPARATION, PairLabels, pair_labels, summarise

log = logging.getLogger(__name__)
CHUNK_SCHEMA = "emolens.residual_chunk/1"
SWEEP_SCHEMA = "emolens.residual_sweep/1"
MESSAGE_POSITIONS = 4  # the config's patching.message_positions default


def shared_suffix_length(tokens: Sequence[Sequence[int]]) -> int:
    """How many trailing tokens every prompt shares (the readout suffix, as this tokenizer cuts it)."""
    shortest = min(len(t) for t in tokens)
    n = 0
    while n < shortest and len({t[-1 - n] for t in tokens}) == 1:
        n += 1
    return n


def readout_positions(adapter: ModelAdapter, pairs: Pairs, message_positions: int) -> tuple[list[int], list[str]]:
    """Offsets from the end the sweep patches (-1, -2, ...) and their roles.

    Every token all the pairs' prompts share at their end (role ``suffix '<token>'``), then the last
    ``message_positions`` tokens before them (role ``message -k``). A ValueError if the shortest
    prompt has fewer tokens than that.
    """
    prompts = pairs.run + pairs.donor
    n_suffix = shared_suffix_length(prompts)
    shortest = min(len(t) for t in prompts)
    if n_suffix + message_positions > shortest:
        raise ValueError(f"message_positions={message_positions} plus the {n_suffix} suffix tokens reach before "
                         f"the start of the shortest prompt ({shortest} tokens)")
    suffix = [adapter.tokenizer.decode([t]) for t in prompts[0][len(prompts[0]) - n_suffix:]]
    roles = [f"suffix {tok!r}" for tok in reversed(suffix)] + [f"message -{k + 1}" for k in range(message_positions)]
    return [-(k + 1) for k in range(len(roles))], roles


def metric_fields(adapter: ModelAdapter, pairs: Pairs, readout: Readout, direction: str, ld_run: np.ndarray,
                  ld_donor: np.ndarray) -> dict[str, Any]:
    """What a patching file holds so anyone can recompute its metric: the clean LDs of run and donor, the readout
    and its suffix, the label token ids, the direction and the numeric build (residual and head files alike)."""
    return {"ld_clean_run": ld_run, "ld_clean_donor": ld_donor, "readout": readout.as_dict(),
            "suffix": readout.suffix, "label_token_ids": pairs.label_token_ids, "direction": direction,
            "quantization": adapter.quantization}


def prepare_readout_pairs(adapter: ModelAdapter, records: Sequence[dict[str, Any]], message_positions: int,
                          **pair_options: Any) -> tuple[Pairs, list[int], list[str], PairLabels]:
    """The pairs of ``records`` (``pair_options`` go to :func:`prepare_pairs`), the readout offsets and
    their roles, and each pair's item, frame and emotion contrast: what every patching phase starts from."""
    pairs = prepare_pairs(adapter, records, **pair_options)
    offsets, roles = readout_positions(adapter, pairs, message_positions)
    return pairs, offsets, roles, pair_labels(pairs.ids, records)


def sweep(adapter: ModelAdapter, pairs: Pairs, layers: Sequence[int], offsets: Sequence[int],
          batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patched LD [P, len(layers), len(offsets)] of every pair, and the clean LDs of its run and donor [P]."""
    variants = [(resid_site(layer, (o,)),) for o in offsets for layer in layers]
    ld, ld_run, ld_donor = patch_pairs(adapter, pairs, variants, batch_size=batch_size, desc="residual patching")
    return ld.reshape(len(pairs), len(offsets), len(layers)).transpose(0, 2, 1), ld_run, ld_donor


def run_chunk(adapter: ModelAdapter, records: Sequence[dict[str, Any]], layers: Sequence[int],
              out: str | Path, *, message_positions: int = MESSAGE_POSITIONS, max_pairs: int | None = None,
              direction: str = "denoising", batch_size: int = 32, seed: int = 0,
              readout: Readout = DEFAULT, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Patch the residual indices ``layers`` of every pair at every readout position; save one chunk file."""
    started = time.time()
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer <= adapter.n_layers]
    if bad:
        raise IndexError(f"residual indices {bad} outside 0..{adapter.n_layers} for {adapter.name}")
    pairs, offsets, roles, labels = prepare_readout_pairs(
        adapter, records, message_positions, direction=direction, max_pairs=max_pairs, seed=seed, readout=readout)
    log.info("%s: residual indices %d-%d, %d pairs of %d items in %d frames at %d positions (%s), %s",
             adapter.name, layers[0], layers[-1], len(pairs), len(set(labels.items)), len(set(labels.frames)),
             len(offsets), ", ".join(roles), direction)
    ld, ld_run, ld_donor = sweep(adapter, pairs, layers, offsets, batch_size)
    result = {
        "schema": CHUNK_SCHEMA,
        "model": adapter.name,
        "n_layers": adapter.n_layers,
        "layers": layers,
        "positions": offsets,
        "position_roles": roles,
        "pairs": [tuple(p) for p in pairs.ids],
        **labels._asdict(),
        "same_length": pairs.same_length,
        "effect": normalised(ld, ld_run, ld_donor),
        "ld_patched": ld,
        **metric_fields(adapter, pairs, readout, direction, ld_run, ld_donor),
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
    missing = [k for k in ("layers", "positions", "pairs", "items", "frames", "contrasts", "effect", "ld_patched",
                           "ld_clean_run", "ld_clean_donor", "direction", "label_token_ids") if k not in chunk]
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
          n_resamples: int = 2000, min_separation: float = MIN_SEPARATION) -> dict[str, Any]:
    """Check the chunk files of one model, join them along the layers, summarise each cell, save.

    The summary is the bounded metric of :mod:`emolens.stats.effects`: pairs whose clean separation is
    below ``min_separation`` are left out (and counted per contrast), a cell is the ratio of sums
    over the pairs kept, with a two-stage (frames, then items) bootstrap CI.

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
    ld = np.concatenate([np.asarray(chunks[i]["ld_patched"]) for i in order], axis=1)  # [P, L+1, positions]
    labels = PairLabels(*(list(first[k]) for k in PairLabels._fields))
    summary = summarise(ld, first["ld_clean_run"], first["ld_clean_donor"], labels, min_separation, n_resamples,
                        seed, emotions=first["label_token_ids"])  # the run's emotions, each with its label token
    result = {
        "schema": SWEEP_SCHEMA,
        "model": first.get("model"),
        "n_layers": n_layers,
        "layers": list(range(n_layers + 1)),
        "positions": list(first["positions"]),
        "position_roles": list(first.get("position_roles", [])),
        "pairs": [tuple(p) for p in first["pairs"]],
        **labels._asdict(),
        "same_length": np.asarray(first.get("same_length")),
        "effect": effect,
        "ld_patched": ld,
        "ld_clean_run": first["ld_clean_run"],
        "ld_clean_donor": first["ld_clean_donor"],
        **summary,
        "readout": first.get("readout"),
        "suffix": first.get("suffix"),
        "label_token_ids": first["label_token_ids"],
        "direction": first["direction"],
        "quantization": first.get("quantization"),
        "chunks": [str(paths[i]) for i in order],
        "provenance": provenance({"n_layers": n_layers, "seed": seed, "n_resamples": n_resamples,
                                  "min_separation": min_separation}, started, model=first.get("model"),
                                 chunk_provenance=[chunks[i].get("provenance") for i in order]),
    }
    save_pickle(result, out)
    log.info("wrote %s: %d pairs (%d kept, separation >= %g) x %d layers x %d positions; summary at the last "
             "position %s", out, effect.shape[0], summary["n_pairs_included"], min_separation, *effect.shape[1:],
             np.round(summary["summary"][:, 0], 2))
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
