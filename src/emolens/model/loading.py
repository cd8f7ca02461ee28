"""Loading a model from its settings: a checkpoint directory, the hub, a GGUF file or a quantised build, as a
:class:`~emolens.model.adapter.ModelAdapter`."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from emolens.config import ModelLoadError
from emolens.model.adapter import ModelAdapter
from emolens.model.gguf import gguf_checkpoint
from emolens.model.source import DTYPES, model_source
from emolens.stopwatch import charged

log = logging.getLogger(__name__)
HAND_PATHS = ("layers", "attn_out", "body")  # a model's settings may name these by hand (the adapter's sites)
# Left in the models.<m>.dtype when quantised: the unembedding (the readout's label rows) and a multimodal
# checkpoint's vision side, which the text readout never runs (patterns match module names from the start).
INT8_SKIP = ["lm_head", r".*vision_tower", r".*multi_modal_projector"]


def quantization_config(quantization: str) -> Any:
    """transformers' config for a ``models.<m>.quantization`` setting; the rest of the model stays in its dtype.

    ``int8`` (the default 8-bit path) is weight-only int8 through torchao: int8 weights with one scale per
    output row, activations in the model's dtype, so a prompt's output does not depend on its batch-mates or on
    a prefix/suffix split through the KV cache, and the fast patching engine equals its oracle (the candidates
    table in docs/real-model.md chose it). ``llm.int8`` is bitsandbytes LLM.int8, whose 16-bit outlier columns
    follow the whole batch: its batch noise is measured and reported (:mod:`emolens.phases.equivalence`).
    ``int8-rowwise`` (bitsandbytes without the outlier decomposition) and ``nf4`` (bitsandbytes 4-bit) are the
    other candidates ``benchmarks/int8_fidelity.py`` measures; the config schema does not offer them.
    """
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if quantization == "int8":
        logging.getLogger("torchao").setLevel(logging.ERROR)  # its optional CUDA kernels' load failures on a CPU
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=INT8_SKIP)
    # bitsandbytes logs a cast warning on every int8 matmul whose input is not float16
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    if quantization == "llm.int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=INT8_SKIP)
    if quantization == "int8-rowwise":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0, llm_int8_skip_modules=INT8_SKIP)
    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=INT8_SKIP)
    raise ModelLoadError(f"quantization {quantization!r} is not one of {QUANTIZATIONS}")


QUANTIZATIONS = ["int8", "llm.int8", "int8-rowwise", "nf4"]


def weight_memory(model: nn.Module) -> int:
    """Bytes the loaded parameters hold: a quantised tensor's codes and scales (torchao's inner tensors,
    bitsandbytes' row scales or 4-bit absmax), not the dtype it presents."""
    total = 0
    for p in model.parameters():
        if hasattr(p, "__tensor_flatten__"):  # a torchao tensor subclass: its inner tensors hold the bytes
            total += sum(getattr(p, n).nbytes for n in p.__tensor_flatten__()[0])
            continue
        total += p.nbytes
        for extra in (getattr(p, "SCB", None), getattr(getattr(p, "quant_state", None), "absmax", None)):
            total += extra.nbytes if isinstance(extra, torch.Tensor) else 0
    return total


def resolve_device(device: str = "auto") -> str:
    """``auto`` means CUDA when present, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@charged("load")
def load_model(settings: dict[str, Any], name: str = "model", device: str = "auto") -> ModelAdapter:
    """Load a model from its settings (``path`` or ``hf_id``, ``gguf_file``, ``dtype``, ``quantization``, ``offload``).

    ``quantization`` (:func:`quantization_config`) quantises every linear layer but :data:`INT8_SKIP`, the
    rest (norms, embeddings, the skipped layers) in ``dtype``. A Gemma model in float16 is refused: it overflows.

    A GGUF model (``gguf_file``) is dequantised by transformers into the configured dtype; with
    ``cache_dir`` its first load writes an ordinary checkpoint there and every load reads that
    (:func:`gguf_checkpoint`). A load that reports missing weights is refused: a text-only class on a
    multimodal checkpoint would otherwise silently randomise them.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dtype_name = settings.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise ModelLoadError(f"models.{name}.dtype: {dtype_name!r} is not one of {sorted(DTYPES)}")
    gguf: dict[str, Any] = {}  # from_pretrained's gguf_file, when the model is read from the GGUF file itself
    if settings.get("gguf_file"):
        source, gguf_file = gguf_checkpoint(settings, name)
        gguf = {"gguf_file": gguf_file} if gguf_file else {}
    else:
        source = model_source(settings, name)
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype_name], "output_loading_info": True}
    device = resolve_device(device)
    quantization = settings.get("quantization")
    if gguf and (quantization or settings.get("offload")):
        raise ModelLoadError(f"models.{name}.cache_dir: quantization and offload load the checkpoint a GGUF model "
                             "is converted to; set cache_dir")
    if gguf:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    elif quantization:
        kwargs["quantization_config"] = quantization_config(quantization)
        kwargs["device_map"] = device
    elif settings.get("offload"):
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = settings["offload"].get("max_memory")
    try:
        config = AutoConfig.from_pretrained(source, revision=settings.get("revision"), **gguf)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0]
        raise ModelLoadError(
            f"models.{name}: cannot read a model config from {source!r} ({reason}). Set models.{name}.path to a "
            f"checkpoint directory with a config.json, or run once with network "
            f"access to fill the Hugging Face cache for models.{name}.hf_id") from None
    if config.model_type.startswith("gemma") and dtype_name == "float16":
        raise ModelLoadError(f"models.{name}.dtype: float16 with a {config.model_type} model ({source!r}): Gemma-3's "
                             "activations overflow float16 (transformers issue 36822) and its outputs become empty or "
                             "NaN; set dtype to bfloat16 or float32")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(source, revision=settings.get("revision"), **gguf,
                                                           **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=settings.get("revision"), **gguf)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0]
        raise ModelLoadError(f"models.{name}: cannot load the weights or tokenizer of {source!r} ({reason})") from None
    missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k or not config.tie_word_embeddings]
    if missing:
        raise ModelLoadError(
            f"models.{name}: loading {source!r} as {type(model).__name__} left {len(missing)} weights "
            f"uninitialised (e.g. {missing[:3]}); is this the right checkpoint class?")
    if "device_map" not in kwargs:
        model = model.to(device)
    log.info("loaded %s (%s) from %s: %s, quantization=%s", name, config.model_type, source,
             dtype_name, quantization)
    return ModelAdapter(model, tokenizer, name=name, quantization=quantization,
                        hand={k: settings[k] for k in HAND_PATHS if settings.get(k)})
