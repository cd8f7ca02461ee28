"""Result files: the allow-list unpickler loads every plain result and refuses everything else, naming
the file, without running any code; truncated files are refused; atomic writes leave nothing behind
when the writer fails."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from emolens.io import ResultFileError, SafeUnpickler, atomic_path, load_pickle, save_json, save_pickle

DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool", "complex64", "complex128"]


def _result(protocol: int = 5) -> dict:
    """A result dict with every kind of value a result may hold (bytes need protocol 3 or later)."""
    rng = np.random.default_rng(0)
    return {
        "schema": "emolens.test/1",
        "provenance": {"config_hash": "abc", "wall_seconds": 1.5, "peak_gpu_bytes": None, "settings": {"a": [1, 2]}},
        "arrays": {d: np.abs(rng.normal(size=(3, 4)) * 10).astype(d) for d in DTYPES},
        "fortran": np.asfortranarray(rng.normal(size=(3, 5))),
        "strided": np.arange(20.0)[::3],
        "zero_d": np.array(3.5),
        "empty": np.zeros((0, 4), np.float32),
        "strings": np.array(["anger", "apology"]),
        "scalars": [np.float16(1.5), np.float32(2.5), np.float64(3.5), np.int32(4), np.int64(-5), np.uint8(6),
                    np.bool_(True)],
        "nested": {"pairs": [("i000_anger", "i000_neutral"), ("i001_gratitude", "i001_apology")],
                   "deep": [{"x": (1, 2.0, None, True)}, [[1, 2], [3]]], 7: "int key", (1, 2): "tuple key"},
        "plain": [None, True, 1, 2.0, "text", 1 + 2j, float("nan"), float("inf"), *([b"bytes"] * (protocol >= 3))],
        "containers": [{1, 2}, frozenset({"a"}), collections.OrderedDict(a=1), slice(1, 5, 2)],
    }


def _assert_equal(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert type(a) is type(b) and a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_loads_plain_results_of_every_dtype(tmp_path, protocol):
    result = _result(protocol)
    path = tmp_path / "result.pkl"
    path.write_bytes(pickle.dumps(result, protocol=protocol))
    _assert_equal(result, load_pickle(path, schema="emolens.test/1"))


def test_save_then_load_round_trip(tmp_path):
    result = _result()
    save_pickle(result, tmp_path / "sub" / "result.pkl")
    _assert_equal(result, load_pickle(tmp_path / "sub" / "result.pkl"))
    assert os.listdir(tmp_path / "sub") == ["result.pkl"]


class _RunsCode:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _PlainObject:
    pass


def _malicious(marker) -> dict[str, bytes]:
    """Pickles that would run code, or build objects the allow-list does not know, if loaded."""
    cmd = f"touch {marker}"
    return {
        "os.system": pickle.dumps({"schema": "x", "provenance": {}, "payload": _RunsCode(marker)}),
        "subprocess": pickle.dumps({"schema": "x", "payload": _Reduce(subprocess.call, (["touch", str(marker)],))}),
        "eval": pickle.dumps({"schema": "x", "payload": _Reduce(eval, (f"__import__('os').system({cmd!r})",))}),
        "raw GLOBAL opcode": b"cos\nsystem\n(V" + cmd.encode() + b"\ntR.",
        "numpy function": pickle.dumps({"schema": "x", "payload": _Reduce(np.save, (str(marker), np.zeros(1)))}),
        "any class": pickle.dumps({"schema": "x", "payload": _PlainObject()}),
    }


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", list(_malicious("m")))
def test_refuses_pickles_that_ask_for_anything_else_without_running_them(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_malicious(marker)[kind])
    with pytest.raises(ResultFileError) as err:
        load_pickle(path)
    message = str(err.value)
    assert message.startswith(f"{path}: unsafe pickle, not loaded (refused ") and "\n" not in message
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


def test_unpickler_is_refused_the_same_way_on_its_own():
    with pytest.raises(pickle.UnpicklingError, match="os.system|posix.system"):
        SafeUnpickler(io.BytesIO(b"cos\nsystem\n(Vtrue\ntR.")).load()


class _Crafted:
    """Pickles as ``fn(*args)`` with ``state`` set by BUILD: the globals numpy itself uses, with bad values."""

    def __init__(self, fn, args, state=None):
        self.reduced = (fn, args) if state is None else (fn, args, state)

    def __reduce__(self):
        return self.reduced


def _np_global(name: str):
    core = getattr(np, "_core", None) or np.core
    return getattr(core.multiarray, name)


CRAFTED = {  # each is memory-unsafe or worse when numpy itself unpickles it
    "object array longer than its items": (_Crafted(
        _np_global("_reconstruct"), (np.ndarray, (0,), b"b"), (1, (208,), np.dtype("O"), False, [1, "a"])),
        "does not fill its shape"),
    "dtype state with object flags": (_Crafted(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63)),
                                      "refused dtype state"),
    "ndarray over a raw buffer": (_Crafted(np.ndarray, ((2,), np.dtype("O"), b"\0" * 16)),
                                  "refused to call numpy.ndarray"),
    "structured dtype": (_Crafted(np.dtype, ([("a", "O"), ("b", "f8")], False, True)), "only plain dtypes"),
    "state of a set": (_Crafted(set, ([1],), {"x": 1}), "refused to set the state of a set"),
}


def test_refuses_numpy_states_numpy_would_trust(tmp_path):
    """Run in a fresh process: were any of these accepted, numpy could crash it (or worse)."""
    for i, (crafted, _) in enumerate(CRAFTED.values()):
        (tmp_path / f"{i}.pkl").write_bytes(pickle.dumps({"schema": "x", "payload": crafted}, protocol=2))
    script = ("import sys\nfrom emolens.io import ResultFileError, load_pickle\n"
              "for p in sys.argv[1:]:\n"
              "    try:\n        load_pickle(p)\n        print('LOADED')\n"
              "    except ResultFileError as e:\n        print(e)\n")
    out = subprocess.run([sys.executable, "-c", script, *(str(tmp_path / f"{i}.pkl") for i in range(len(CRAFTED)))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for line, (name, (_, expected)) in zip(out.stdout.splitlines(), CRAFTED.items(), strict=True):
        assert "unsafe pickle, not loaded" in line and expected in line, (name, line)


@pytest.mark.parametrize("keep", [0, 1, 10, 0.5, -1])
def test_refuses_truncated_files(tmp_path, keep):
    good = pickle.dumps(_result(), protocol=5)
    path = tmp_path / "chunk.pkl"
    path.write_bytes(good[: int(len(good) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ResultFileError, match=rf"^{re.escape(str(path))}: truncated pickle \(the file ends before"):
        load_pickle(path)


@pytest.mark.parametrize("content,error", [
    (b"\x00\x01garbage bytes", "corrupt pickle"),
    (b'{"schema": "json, not pickle"}', "corrupt pickle"),
    (pickle.dumps([1, 2, 3]), "not an emolens result"),
    (pickle.dumps({"no": "schema"}), "not an emolens result"),
    (pickle.dumps({"schema": "emolens.activations/2"}), "schema is 'emolens.activations/2', expected"),
])
def test_refuses_foreign_files(tmp_path, content, error):
    path = tmp_path / "foreign.pkl"
    path.write_bytes(content)
    with pytest.raises(ResultFileError, match=rf"^{re.escape(str(path))}: .*{re.escape(error)}"):
        load_pickle(path, schema="emolens.residual_chunk/1")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ResultFileError, match=rf"^{re.escape(str(tmp_path / 'nope.pkl'))}: file not found"):
        load_pickle(tmp_path / "nope.pkl")


def test_atomic_path_leaves_nothing_when_the_writer_raises(tmp_path):
    out = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half of it")
        raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == []


def test_failed_writes_keep_the_finished_file(tmp_path):
    out = tmp_path / "result.pkl"
    save_pickle({"schema": "emolens.test/1", "provenance": {}, "value": 1}, out)
    finished = out.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_pickle({"schema": "emolens.test/1", "provenance": {}, "value": lambda: 0}, out)
    with pytest.raises(TypeError):
        save_json({"value": object()}, tmp_path / "result.json")
    assert out.read_bytes() == finished and sorted(os.listdir(tmp_path)) == ["result.pkl"]


def test_save_json_writes_plain_values(tmp_path):
    save_json({"a": np.float32(0.5), "b": np.arange(3), "c": float("nan")}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": None}


def test_loads_arrays_in_any_memory_layout(tmp_path):
    """numpy 2 pickles non-contiguous arrays with an axis order (seen: stacked transposes of QR factors)."""
    from emolens.io import load_pickle, save_pickle

    q = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 3)))[0]
    arrays = {"stacked_transposes": np.stack([q.T, q.T]), "fortran": np.asfortranarray(q), "strided": q[::2]}
    save_pickle({"schema": "x", "provenance": {}, **arrays}, tmp_path / "a.pkl")
    loaded = load_pickle(tmp_path / "a.pkl")
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_layout_each_finds_the_files_of_one_kind_by_name(tmp_path):
    from emolens import layout

    for m in ("gpt2_small", "pythia-160m"):
        layout.vectors(tmp_path, m).parent.mkdir(parents=True, exist_ok=True)
        layout.vectors(tmp_path, m).write_text("")
    layout.subspaces(tmp_path, "gpt2_small").parent.mkdir(parents=True)
    layout.subspaces(tmp_path, "gpt2_small").write_text("")
    assert list(layout.each(layout.vectors, tmp_path)) == ["gpt2_small", "pythia-160m"]
    assert layout.each(layout.subspaces, tmp_path) == {"gpt2_small": layout.subspaces(tmp_path, "gpt2_small")}
    assert layout.each(layout.head_scores, tmp_path) == {}
    assert str(layout.activations("results/demo", "{model}")) == "results/demo/activations/{model}.pkl"  # wildcards
