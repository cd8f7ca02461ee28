"""Where a model's checkpoint is read from and in which dtype: its local path, else its hub id (checked against the
offline cache); shared by the loader and the GGUF conversion."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from emolens.config import ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_source(settings: dict[str, Any], name: str, probe: str = "config.json") -> str:
    """The local path if set (it must exist), else the hub id (whose ``probe`` file must be cached when offline)."""
    path = settings.get("path")
    if path:
        if not Path(path).is_dir():
            raise ModelLoadError(f"models.{name}.path: {path!r} is not a directory")
        return str(path)
    hf_id = settings.get("hf_id")
    if not hf_id:
        raise ModelLoadError(f"models.{name}: set either 'path' or 'hf_id'")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    offline = os.environ.get("HF_HUB_OFFLINE", "")  # read now, not at huggingface_hub's import
    if offline.upper() in ENV_VARS_TRUE_VALUES:
        if not isinstance(try_to_load_from_cache(hf_id, probe), str):
            raise ModelLoadError(
                f"models.{name}: {hf_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE={offline}; "
                f"set models.{name}.path to a local checkpoint directory")
    return hf_id
