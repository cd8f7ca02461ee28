"""Result files: atomic writes with provenance, and an allow-list unpickler for every read.

Every pickle is a dict of plain Python values and numpy arrays with a ``schema`` string and a
``provenance`` dict. Files are written to a temporary name and renamed, so a killed job never
leaves a file that looks finished.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import json
import os
import pickle
import platform
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from emolens import __version__


class ResultFileError(RuntimeError):
    """A result file is missing, truncated, foreign or unsafe."""


# (module, name) pairs a result pickle may reference: numpy's array reconstruction and dtypes.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("collections", "OrderedDict"),
}
_NUMPY_SCALAR_TYPES = {f"{t}" for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                         "uint8", "uint16", "uint32", "uint64", "bool_")}


def _latin1_bytes(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it for bytes: latin-1 only."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused to call _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as protocols 0-2 use it for b"": no arguments."""
    if args:
        raise pickle.UnpicklingError("refused to call bytes() with arguments")
    return b""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs plain containers, numbers, strings and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 name builtins the Python 2 way (__builtin__.set): check the Python 3 names.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module in ("numpy", "numpy.dtypes") and (name in _NUMPY_SCALAR_TYPES or name.endswith("DType")):
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes  # protocols 0-2 store bytes (numpy array data included) this way
        if (module, name) == ("builtins", "bytes"):
            return _empty_bytes  # and b"" as bytes()
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}: not in the allow-list")


def load_pickle(path: str | Path, schema: str | None = None) -> dict[str, Any]:
    """Read a result pickle through the allow-list unpickler; check its ``schema`` if given."""
    path = Path(path)
    if not path.exists():
        raise ResultFileError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(io.BytesIO(f.read())).load()
    except pickle.UnpicklingError as e:
        raise ResultFileError(f"{path}: unsafe or unreadable pickle ({e})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ResultFileError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or "schema" not in obj:
        raise ResultFileError(f"{path}: not an emolens result (no 'schema' key)")
    if schema is not None and obj["schema"] != schema:
        raise ResultFileError(f"{path}: schema is {obj['schema']!r}, expected {schema!r}")
    return obj


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_pickle(obj: dict[str, Any], path: str | Path) -> None:
    """Write a result dict atomically; it must carry ``schema`` and ``provenance``."""
    assert "schema" in obj and "provenance" in obj, "result dicts carry schema and provenance"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def save_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (numpy values converted to plain ones)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_plain(obj), indent=1) + "\n")


def to_plain(obj: Any) -> Any:
    """Convert numpy values nested in containers to plain Python ones for JSON."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def settings_hash(settings: Any) -> str:
    """Short stable hash of the settings a job ran with."""
    blob = json.dumps(to_plain(settings), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def peak_gpu_memory_bytes() -> int | None:
    """Peak CUDA memory allocated by this process, or None off-GPU."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process."""
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def provenance(settings: Any, started: float, **extra: Any) -> dict[str, Any]:
    """What produced a result: settings hash, versions, git commit, wall time and peak memory."""
    import torch
    import transformers

    return {
        "config_hash": settings_hash(settings),
        "settings": to_plain(settings),
        "emolens": __version__,
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "wall_seconds": round(time.time() - started, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": peak_gpu_memory_bytes(),
        **extra,
    }
