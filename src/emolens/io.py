"""Result files: atomic writes with provenance, and an allow-list unpickler for every read.

Every pickle is a dict of plain Python values and numpy arrays with a ``schema`` string and a
``provenance`` dict. Files are written to a temporary name and renamed, so a killed job never
leaves a file that looks finished.
"""

from __future__ import annotations

import _compat_pickle
import collections
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
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from emolens import __version__

try:
    from numpy._core.multiarray import scalar as _np_scalar
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _np_scalar
    from numpy.core.numeric import _frombuffer as _np_frombuffer


class ResultFileError(RuntimeError):
    """A result file is missing, truncated, foreign or unsafe."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asks for something the allow-list does not hold; nothing of it was run."""


# What a result pickle may reference, by (module, name). Plain containers, numbers and strings need
# nothing; numpy arrays, dtypes and scalars need the functions numpy pickles them with, and old
# protocols (0-2) need bytes. numpy itself does not check every state it is handed (an object array
# whose shape is larger than its list of items reads past the list), so arrays and dtypes go through
# checked constructors and their BUILD states are checked before numpy sees them.
class _NDArray:
    """Stands in for ``numpy.ndarray`` in a pickle: only :func:`_reconstruct` accepts it; it cannot be called."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError("refused to call numpy.ndarray")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy._core.multiarray._reconstruct`` as numpy pickles arrays: an empty array its state fills."""
    if subtype is not _NDArray or shape != (0,) or dtype != b"b":
        raise UnsafePickleError("refused an array reconstruction numpy does not write")
    return np.ndarray((0,), dtype=np.int8)


_PLAIN_KINDS = "biufcUSO"  # bool, integers, floats, complex, str, bytes, object (items unpickled here too)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` for plain dtypes only: no structured, sub-array or datetime dtypes."""
    if not isinstance(spec, str):
        raise UnsafePickleError(f"refused dtype spec {spec!r}: only plain dtypes")
    return _plain(np.dtype(spec, align=bool(align), copy=bool(copy)))


def _check_dtype_state(dtype: np.dtype, state: Any) -> None:
    """A dtype's state may set its byte order (numbers only) and nothing else."""
    canonical = dtype.__reduce__()[2]
    byte_order = (canonical[1], "<", ">", "=") if dtype.kind in "iufc" else (canonical[1],)
    ok = isinstance(state, tuple) and len(state) == len(canonical) and state[0] == canonical[0] \
        and state[1] in byte_order and state[2:] == canonical[2:]
    if not ok:
        raise UnsafePickleError(f"refused dtype state {state!r} for {dtype}")


def _plain(dtype: Any) -> np.dtype:
    """``dtype`` itself if it is a plain numpy dtype (no structured or sub-array dtypes), else refused."""
    if (not isinstance(dtype, np.dtype) or dtype.kind not in _PLAIN_KINDS or dtype.names is not None
            or dtype.subdtype is not None):
        raise UnsafePickleError(f"refused dtype {dtype!r}: only plain dtypes")
    return dtype


def _check_array_state(state: Any) -> None:
    """An array's state: a shape, a plain dtype and exactly the items (object arrays) or bytes it needs."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise UnsafePickleError("refused an array state that is not (version, shape, dtype, fortran, data)")
    shape, dtype, data = state[-4], _plain(state[-3]), state[-1]
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise UnsafePickleError(f"refused array shape {shape!r}")
    size = int(np.prod(shape, dtype=object))
    if dtype.kind == "O":
        ok = isinstance(data, list) and len(data) == size
    else:
        ok = isinstance(data, (bytes, bytearray)) and len(data) == size * dtype.itemsize
    if not ok:
        raise UnsafePickleError(f"refused array data that does not fill its shape {shape} of {dtype}")


def _latin1_bytes(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocols 0-2 use it for bytes: latin-1 only."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(text, str):
        raise UnsafePickleError(f"refused to call _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as protocols 0-2 use it for b"": no arguments."""
    if args:
        raise UnsafePickleError("refused to call bytes() with arguments")
    return b""


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, *axis_order: Any) -> np.ndarray:
    """``numpy._core.numeric._frombuffer`` (protocol 5 arrays; numpy 2 adds axis_order) for plain dtypes."""
    return _np_frombuffer(buf, _plain(dtype), shape, order, *axis_order)


def _scalar(dtype: Any, *args: Any) -> Any:
    """``numpy._core.multiarray.scalar`` (numpy scalars) for plain dtypes."""
    return _np_scalar(_plain(dtype), *args)


_PLAIN_DTYPE_CLASSES = {type(np.dtype(c)).__name__: type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGUSO"}
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDArray,
    ("numpy", "dtype"): _dtype,
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{("numpy", t): getattr(np, t) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                                             "uint8", "uint16", "uint32", "uint64", "bool_")},
    **{("numpy.dtypes", name): cls for name, cls in _PLAIN_DTYPE_CLASSES.items()},
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytes"): _empty_bytes,  # protocols 0-2 write b"" as bytes()
    ("_codecs", "encode"): _latin1_bytes,  # and other bytes (numpy array data included) this way
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class SafeUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its BUILD step can be checked
    """Unpickler that only reconstructs plain containers, numbers, strings and numpy arrays.

    Any other global is refused; so is setting the state of anything but a numpy array or dtype,
    and an array or dtype state numpy would not write itself.
    """

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 name builtins the Python 2 way (__builtin__.set): check the Python 3 names.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refused to load global {module}.{name}: not in the allow-list")
        return _ALLOWED_GLOBALS[module, name]

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        if type(inst) is np.ndarray:
            _check_array_state(state)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        else:
            raise UnsafePickleError(f"refused to set the state of a {type(inst).__name__}")
        super().load_build()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id")

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}


def load_pickle(path: str | Path, schema: str | None = None) -> dict[str, Any]:
    """Read a result pickle through the allow-list unpickler; check its ``schema`` if given."""
    path = Path(path)
    if not path.exists():
        raise ResultFileError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ResultFileError(f"{path}: cannot read it ({e.strerror})") from None
    stream = io.BytesIO(data)
    try:
        obj = SafeUnpickler(stream).load()
    except UnsafePickleError as e:
        raise ResultFileError(f"{path}: unsafe pickle, not loaded ({e})") from None
    except Exception as e:  # whatever a damaged stream raises, the file is not a result
        if stream.tell() >= len(data):
            raise ResultFileError(f"{path}: truncated pickle (the file ends before the pickle does)") from None
        raise ResultFileError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from None
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
    """Peak CUDA memory allocated by this process, or None off-GPU (or when torch was never imported)."""
    torch = sys.modules.get("torch")
    return int(torch.cuda.max_memory_allocated()) if torch and torch.cuda.is_available() else None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process."""
    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def provenance(settings: Any, started: float, **extra: Any) -> dict[str, Any]:
    """What produced a result: settings hash, versions, git commit, wall time and peak memory."""
    return {
        "config_hash": settings_hash(settings),
        "settings": to_plain(settings),
        "emolens": __version__,
        "torch": metadata.version("torch"),
        "transformers": metadata.version("transformers"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "wall_seconds": round(time.time() - started, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": peak_gpu_memory_bytes(),
        **extra,
    }
