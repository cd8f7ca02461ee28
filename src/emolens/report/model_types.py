"""Every decoder-only causal-LM type of the installed transformers, built tiny and checked like a user's model.

A type is built from its config class's defaults at tiny sizes (:func:`emolens.model.tiny.tiny_config`: its defining
features, sliding windows, soft-capping, QK norms, grouped-query attention, MoE routing, parallel attention, stay as
the type defines them), saved with the organisms' tokenizer, loaded back through
:func:`emolens.model.loading.load_model` and checked with :mod:`emolens.phases.equivalence` (residual capture,
readout, fast patching against the oracle), in float32 and, where torchao loads it, in weight-only int8 (the default
8-bit path). :data:`emolens.model.tiny.UNSUPPORTED` names the types that cannot be checked and why.
``python -m emolens.report.model_types`` prints the table (docs/model-types.md).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from emolens.data.dataset import build_dataset
from emolens.data.readout import DEFAULT
from emolens.model.loading import load_model
from emolens.model.organisms import train_tokenizer
from emolens.model.tiny import NOT_ADDITIVE, UNSUPPORTED, tested, tiny_model
from emolens.phases.equivalence import differences, sublayer_sum_difference


def check_type(model_type: str, tokenizer: Any, run: list[int], donor: list[int], token_ids: list[int],
               workdir: Path, int8: bool = True) -> dict[str, Any]:
    """Build, save and reload one type, then its largest differences (float32 and int8) and its sites."""
    path = workdir / model_type
    tiny_model(model_type, len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    adapter = load_model({"path": str(path), "dtype": "float32"}, name=model_type, device="cpu")
    row = {"type": model_type, "class": type(adapter.model).__name__, "sites": adapter.sites,
           "layers": adapter.n_layers, "head_layers": adapter.head_layers, "prefix_cache": adapter.prefix_cache,
           "float32": differences(adapter, run, donor, token_ids), "sublayer_sites": adapter.sublayer_paths,
           "sublayer_sum": sublayer_sum_difference(adapter, torch.tensor([run]))}
    if int8:
        try:
            quantised = load_model({"path": str(path), "dtype": "float32", "quantization": "int8"}, name=model_type,
                                   device="cpu")
            row["int8"] = differences(quantised, run, donor, token_ids)  # batch-invariant: the engine equals its oracle
        except Exception as e:  # noqa: BLE001 - a capability probe: any failure is the type's int8 status
            row["int8"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """docs/model-types.md's table: type, residual, heads, int8 and the largest differences, then the unsupported
    types."""
    lines = ["| type | class | residual | heads | int8 | largest difference (residual / readout / patching / sublayer "
             "patching) | writes: attention / MLP (their sum's difference) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["float32"]
        heads = "all blocks" if len(r["head_layers"]) == r["layers"] else f"blocks {r['head_layers']} (hybrid)"
        int8 = "yes" if isinstance(r.get("int8"), dict) else f"no ({r.get('int8')})"
        attn = ", ".join(r["sites"]["attn_out"])
        diffs = " / ".join("full recompute" if d[k] is None else f"{d[k]:.1e}"
                           for k in ("residual", "readout", "patching", "sublayer_patching"))
        writes = " / ".join(", ".join(r["sublayer_sites"][k]) or "none" for k in ("attn_out", "mlp_out"))
        total = "n/a" if r["sublayer_sum"] is None else f"{r['sublayer_sum']:.1e}"
        lines.append(f"| {r['type']} | {r['class']} | {r['sites']['layers']} | {heads}: {attn} | {int8} | {diffs} | "
                     f"{writes} ({total}) |")
    lines += ["", f"{len(rows)} types checked; not supported:", ""]
    lines += [f"- {t}: {why}" for t, why in sorted(UNSUPPORTED.items())]
    lines += ["", "Blocks that are not input + attention write + MLP write (patched exactly, but the attention-vs-MLP "
              "phase measures nothing on them):", ""]
    lines += [f"- {t}: {why}" for t, why in sorted(NOT_ADDITIVE.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Check every tested type and print the table (``--types`` for some)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", default=None)
    args = parser.parse_args()
    records = build_dataset()
    tokenizer = train_tokenizer([r["text"] for r in records])
    run, donor = (tokenizer.encode(DEFAULT.prompt(r["text"])) for r in records[:2])
    token_ids = [DEFAULT.label_token_ids(tokenizer)[e] for e in DEFAULT.labels]
    rows, workdir = [], Path(tempfile.mkdtemp())
    try:
        for model_type in args.types or tested():
            started = time.perf_counter()
            rows.append(check_type(model_type, tokenizer, run, donor, token_ids, workdir))
            print(f"{model_type}: {rows[-1]['float32']} ({time.perf_counter() - started:.1f} s)", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()

