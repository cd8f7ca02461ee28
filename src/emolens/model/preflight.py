"""Pre-flight: before any model job runs, are the weights there, can they be fetched, and do they fit on disk?

Method. Nothing is downloaded or loaded. Per model of a profile:

* where its weights come from: an ``organism`` the workflow builds, a GGUF source (``gguf_file``,
  converted on the first load), a local ``path`` (it must be a directory holding a checkpoint:
  config.json and safetensors or bin weights) or a Hugging Face hub id, looked up in the local
  Hugging Face cache (``huggingface_hub.try_to_load_from_cache``: config.json, then every weight
  file, the shards of a sharded checkpoint included). The cache lookup never touches the network;
* the download size: the hub's own count of the checkpoint's parameters per dtype when the hub can
  be asked, else the architecture numbers of :mod:`emolens.model.plan` (``architectures.json``) times the
  bytes of the dtype the checkpoint is published in (:data:`HUB_DTYPES`; the model's ``dtype``
  setting for other ids). Multimodal Gemma-3 checkpoints include their vision tower;
* whether the hub gates it (licence acceptance and a token): the hub's answer, or :data:`GATED` when
  the hub cannot be asked; with a token, whether that token has access yet;
* free disk in the Hugging Face cache's file system against the size of everything not yet there.

The hub is asked only when ``HF_HUB_OFFLINE`` is not set, with a short timeout; the first network
failure stops the asking (``hub: unreachable``) and the package's tables answer instead. A model
that is not present is a problem when it cannot be fetched: offline, the hub unreachable, or gated
without access. Problems are one line each, raised together as a :class:`PreflightError` (exit
status 2); the table of models goes to stdout and, when asked, to a JSON file.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emolens.config import ConfigError, load_config
from emolens.model.architecture import known_architectures, n_params, resolve_architecture, vision_params

# The dtype each known hub checkpoint is published in (its safetensors), for sizes when the hub cannot be asked.
HUB_DTYPES = {
    "openai-community/gpt2": "float32",
    "EleutherAI/pythia-160m": "float16",
    "EleutherAI/gpt-neo-125m": "float32",
    "meta-llama/Meta-Llama-3-8B": "bfloat16",
    "Qwen/Qwen3-8B-Base": "bfloat16",
    "google/gemma-3-12b-pt": "bfloat16",
}
# Hub organisations and id prefixes whose models need an accepted licence and a token (Llama, Gemma).
GATED = ("meta-llama/", "google/gemma-")
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4,
          "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # unsharded checkpoints
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # sharded ones
# config, safetensors weights and tokenizer files: not the .bin, TF, Flax or original/*.pth copies some repos also hold
INCLUDE = '--include "*.json" --include "*.safetensors" --include "*.model" --include "*.txt"'
HUB_TIMEOUT_S = 10.0
GB = 1e9  # the hub and `hf download` count decimal gigabytes


class PreflightError(ConfigError):
    """One or more models cannot run as configured; one line per problem."""


@dataclass
class ModelCheck:
    """One model's row: where its weights are, what fetching them costs, and what stops it."""

    model: str
    source: str  # organism, gguf, path or hub
    where: str  # the path or hub id
    present: bool  # weights there (or built by the workflow)
    state: str  # in words: "cached", "not cached", "built by the workflow", ...
    size_bytes: int | None = None  # download size (hub models), None when unknown
    size_from: str = ""  # "hub" or "architecture numbers x <dtype>"
    gated: bool | None = None
    gated_from: str = ""  # "hub" or "known gated ids"
    problems: list[str] = field(default_factory=list)


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, read now (not at import)."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ENV_VARS_TRUE_VALUES


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory, read now: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def free_bytes(path: Path) -> int:
    """Free bytes in the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def local_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a checkpoint directory, or None when it holds config.json and weights."""
    if not path.is_dir():
        return "is not a directory"
    if not (path / "config.json").is_file():
        return "holds no config.json"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return "holds no weights (*.safetensors or *.bin)"
    return None


def cached_checkpoint(hf_id: str, revision: str | None = None) -> tuple[bool, str]:
    """(whole checkpoint in the local hub cache, in words), from the cache alone (no network)."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()

    def cached(filename: str) -> str | None:
        found = try_to_load_from_cache(hf_id, filename, cache_dir=cache, revision=revision)
        return found if isinstance(found, str) else None

    if cached("config.json") is None:
        return False, "not cached"
    for index in WEIGHT_INDEXES:
        path = cached(index)
        if path:
            shards = sorted(set(json.loads(Path(path).read_text())["weight_map"].values()))
            missing = [s for s in shards if cached(s) is None]
            if missing:
                return False, f"partly cached ({len(shards) - len(missing)} of {len(shards)} weight files)"
            return True, f"cached ({len(shards)} weight files)"
    if any(cached(name) for name in WEIGHT_FILES):
        return True, "cached"
    return False, "partly cached (config.json but no weights)"


def estimated_size(name: str, settings: dict[str, Any]) -> tuple[int | None, str]:
    """(bytes, how) of a hub checkpoint from architecture numbers x the bytes of its published dtype."""
    arch, _ = resolve_architecture(name, settings, known_architectures())
    if arch is None:
        return None, "unknown architecture"
    dtype = HUB_DTYPES.get(settings.get("hf_id", ""), settings.get("dtype", "float32"))
    params = n_params(arch) + sum(vision_params(arch))
    return params * _BYTES[dtype], f"architecture numbers x {dtype}"


class Hub:
    """The hub's answers (size, gating, access), asked at most once per model, never when offline or after
    the first network failure."""

    def __init__(self) -> None:
        self.reachable: bool | None = None if not offline() else False
        self.why = "HF_HUB_OFFLINE is set" if self.reachable is False else ""  # why it is not asked
        self._api = None

    def info(self, hf_id: str, revision: str | None) -> Any | None:
        if self.reachable is False:
            return None
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        self._api = self._api or HfApi()
        try:
            info = self._api.model_info(hf_id, revision=revision, timeout=HUB_TIMEOUT_S,
                                        expand=["gated", "safetensors"])
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:  # the hub answered: no such model
            self.reachable = True
            raise LookupError(str(e).strip().splitlines()[0]) from None
        except Exception as e:  # noqa: BLE001 - any other failure (DNS, proxy, timeout, 5xx): stop asking
            self.reachable, self.why = False, f"the hub is not reachable ({type(e).__name__})"
            return None
        self.reachable = True
        return info

    def has_access(self, hf_id: str) -> bool | None:
        """Whether the saved token may download a gated model (None: no token, or the hub cannot say)."""
        from huggingface_hub.errors import GatedRepoError

        if not _token() or not self.reachable:
            return None
        try:
            self._api.auth_check(hf_id)
        except GatedRepoError:
            return False
        except Exception:  # noqa: BLE001 - an unclear answer is not a verdict
            return None
        return True


def _gigabytes(n: int | None) -> str:
    return "?" if n is None else f"{n / GB:.2f} GB" if n < 10 * GB else f"{n / GB:.1f} GB"


def check_model(name: str, settings: dict[str, Any], hub: Hub) -> ModelCheck:
    """One model's row and its problems."""
    if "organism" in settings:
        return ModelCheck(name, "organism", settings.get("path", ""), True, "built by the workflow")
    if settings.get("gguf_file"):
        where = settings.get("path") or settings.get("hf_id") or ""
        return ModelCheck(name, "gguf", f"{where} ({settings['gguf_file']})", True, "GGUF, converted on first load")
    if settings.get("path"):
        path = Path(settings["path"])
        why = local_checkpoint(path)
        row = ModelCheck(name, "path", str(path), why is None, "checkpoint" if why is None else why)
        if why:
            row.problems.append(f"models.{name}.path: {str(path)!r} {why}; point it at a checkpoint directory "
                                f"(save_pretrained output) or set hf_id instead")
        return row

    hf_id, revision = settings["hf_id"], settings.get("revision")
    present, state = cached_checkpoint(hf_id, revision)
    row = ModelCheck(name, "hub", hf_id, present, state)
    try:
        info = hub.info(hf_id, revision)
    except LookupError as e:
        row.problems.append(f"models.{name}.hf_id: the hub does not serve {hf_id!r} ({e}); check the id")
        info = None
    if info is not None:
        row.gated, row.gated_from = bool(info.gated), "hub"
        counts = getattr(getattr(info, "safetensors", None), "parameters", None) or {}
        if counts:
            row.size_bytes = sum(n * _BYTES.get(dtype, 2) for dtype, n in counts.items())
            row.size_from = "hub"
    if row.gated is None:
        row.gated, row.gated_from = hf_id.startswith(GATED), "known gated ids"
    if row.size_bytes is None:
        row.size_bytes, row.size_from = estimated_size(name, settings)
    if present:
        return row

    page = f"https://huggingface.co/{hf_id}"
    licence = f"it is gated: accept its licence at {page}, run `hf auth login` (a read token), then " \
        if row.gated else ""
    pin = f" --revision {revision}" if revision else ""
    fetch = f"download it (~{_gigabytes(row.size_bytes)}): hf download {hf_id}{pin} {INCLUDE}"
    if not hub.reachable:
        reason = hub.why or "the hub cannot be reached"
        row.problems.append(f"models.{name}: {hf_id!r} is {state} and {reason}; {licence}{fetch}; "
                            f"or set models.{name}.path to a local checkpoint")
    elif row.gated:
        access = hub.has_access(hf_id)
        if not _token():
            row.problems.append(f"models.{name}: {hf_id!r} is gated and no Hugging Face token is saved: accept its "
                                f"licence at {page}, then run `hf auth login`")
        elif access is False:
            row.problems.append(f"models.{name}: your Hugging Face token has no access to {hf_id!r} yet: accept its "
                                f"licence at {page} (approval may take a while)")
    return row


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def preflight(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Check every model; the report (rows, disk, problems) as plain values."""
    hub = Hub()
    rows = [check_model(name, settings, hub) for name, settings in models.items()]
    cache = hub_cache_dir()
    need = sum(r.size_bytes or 0 for r in rows if r.source == "hub" and not r.present)
    free = free_bytes(cache)
    problems = [p for r in rows for p in r.problems]
    if need > free:
        problems.append(f"disk: the models not yet downloaded need ~{_gigabytes(need)} but {cache} has "
                        f"{_gigabytes(free)} free; free space there or set HF_HOME to a larger disk")
    hub_state = "reachable" if hub.reachable else hub.why or "not asked (no hub model)"
    return {"models": [asdict(r) for r in rows], "hub": hub_state, "hf_cache": str(cache), "free_bytes": free,
            "need_bytes": need, "problems": problems}


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the report, with the disk line underneath."""
    header = ["model", "weights from", "state", "download", "gated"]
    table = [header]
    for r in report["models"]:
        size = _gigabytes(r["size_bytes"]) if r["source"] == "hub" else "-"
        gated = "-" if r["gated"] is None else ("yes" if r["gated"] else "no")
        table.append([r["model"], r["where"] if r["source"] == "hub" else f"{r['source']}: {r['where']}",
                      r["state"], size if r["present"] or size == "-" else f"~{size}", gated])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    if any(r["source"] == "hub" for r in report["models"]):
        lines.append(f"hub: {report['hub']}; sizes from the hub when it answers, else architecture numbers x the "
                     f"checkpoint's dtype; gated: the hub's answer, else ids starting {' or '.join(GATED)}")
    need = f"~{_gigabytes(report['need_bytes'])} still to download" if report["need_bytes"] else "nothing to download"
    lines.append(f"disk: {_gigabytes(report['free_bytes'])} free in {report['hf_cache']}; {need}")
    return "\n".join(lines)


def run(configfile: str | Path | None = None, models: dict[str, dict[str, Any]] | None = None,
        out: str | Path | None = None) -> dict[str, Any]:
    """Check a profile's models (from ``configfile`` or a ``models`` section), print the table, write ``out``
    (JSON) when every model can run; raise :class:`PreflightError` with one line per problem otherwise."""
    from emolens.io import save_json

    if models is None:
        models = load_config(configfile or "config/config.yaml")["models"]
    report = preflight(models)
    print(format_report(report), flush=True)
    if report["problems"]:
        raise PreflightError("\n".join(report["problems"]))
    if out is not None:
        save_json(report, out)
    return report
