"""A model's architecture numbers and parameter counts, without loading it.

The numbers come from, in order: the model's ``organism`` settings (the embedded demo),
``<path>/config.json`` when it has a local path, the Hugging Face cache's config.json of its ``hf_id``,
or the published numbers of the six baseline models
shipped in ``architectures.json`` (matched by hub id, else by name). Parameters are counted from them:
embeddings, attention with grouped-query heads and an explicit head_dim, the MLP, norms, an untied
lm_head, and Gemma-3's vision tower. The memory plan (:mod:`emolens.model.plan`) reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from emolens.model.adapter import FAMILIES, FAMILY_NAMES
from emolens.model.tiny import ORGANISM_POSITIONS, ORGANISM_VISION, ORGANISM_VOCAB, TRAINING_KEYS, tiny_config

# Published vision_config of the Gemma-3 4B/12B/27B checkpoints (SigLIP-So400m at 896 px, no pooling
# head). architectures.json holds only their text_config; the checkpoint class loads both towers.
GEMMA3_VISION = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "image_size": 896,
                 "patch_size": 14}
_FAMILIES = {model_type: f.name for model_type, f in FAMILIES.items()}  # gemma3_text is counted as gemma3
GATED = {"llama", "qwen3", "gemma3"}  # gate, up and down projections; the others have two matrices
# Other model types with a two-matrix MLP (any type not named here is planned with a gated one, as most are now)
TWO_MATRIX = {"gpt2", "gpt_neox", "gpt_neo", "opt", "falcon", "bloom", "gptj", "codegen", "mpt", "phi", "biogpt",
              "gpt_bigcode", "starcoder2", "stablelm", "persimmon", "xglm"}
_LEARNED_POSITIONS = {"gpt2", "gpt_neo", "opt", "biogpt", "gpt_bigcode", "xglm"}
_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts")  # MoE: every expert's weights are loaded
_TIED_BY_DEFAULT = {f.name: f.tied for f in FAMILIES.values()}


@dataclass(frozen=True)
class Architecture:
    """The numbers the memory plan needs; ``vision`` is a multimodal checkpoint's vision_config."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_positions: int = 0  # learned absolute positions (GPT-2, GPT-Neo); 0 for rotary families
    tied: bool = True
    vision: dict[str, int] | None = None
    gated: bool = False  # gate, up and down projections in the MLP
    n_experts: int = 1  # MoE: MLPs per layer, each d_mlp wide


def known_architectures() -> dict[str, dict[str, Any]]:
    """The six baseline models' published config numbers shipped with the package."""
    text = resources.files("emolens").joinpath("architectures.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _first(cfg: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def from_hf_config(cfg: dict[str, Any]) -> Architecture:
    """Numbers from a Hugging Face config.json (a multimodal Gemma-3 one uses its text_config).

    Any model type: the six families' own counts, others with two norms per block and a gated MLP (unless in
    :data:`TWO_MATRIX`), MoE experts counted whole. Raises ValueError naming a size the config lacks.
    """
    model_type = cfg.get("model_type")
    vision = None
    if "text_config" in cfg:  # multimodal checkpoint: the language model is the text tower
        vision = cfg.get("vision_config") or (GEMMA3_VISION if model_type == "gemma3" else None)
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
    elif model_type == "gemma3":  # architectures.json: text_config values flattened, vision tower implied
        vision = GEMMA3_VISION
    if not model_type:
        raise ValueError("the config has no model_type")
    family = _FAMILIES.get(model_type, model_type)
    sizes = {"width": ("hidden_size", "n_embd", "d_model"), "depth": ("num_hidden_layers", "n_layer", "num_layers"),
             "heads": ("num_attention_heads", "n_head", "num_heads"), "vocabulary": ("vocab_size",)}
    found = {what: _first(cfg, *keys) for what, keys in sizes.items()}
    missing = [f"{what} ({' / '.join(sizes[what])})" for what, v in found.items() if v is None]
    if missing:
        raise ValueError(f"a {model_type} config without its {', '.join(missing)}")
    d_model, n_heads = found["width"], found["heads"]
    experts = _first(cfg, *_EXPERTS) or 1
    d_mlp = (_first(cfg, "moe_intermediate_size") if experts > 1 else None) or _first(
        cfg, "ffn_dim", "ffn_hidden_size", "n_inner", "intermediate_size") or 4 * d_model
    return Architecture(
        family=family,
        n_layers=found["depth"],
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=1 if cfg.get("multi_query") and not cfg.get("new_decoder_architecture")  # Falcon-7B
        else _first(cfg, "num_key_value_heads", "num_kv_heads") or n_heads,
        d_head=_first(cfg, "head_dim") or d_model // n_heads,
        d_mlp=d_mlp,
        vocab_size=found["vocabulary"],
        n_positions=_first(cfg, "n_positions", "max_position_embeddings") if family in _LEARNED_POSITIONS else 0,
        tied=cfg.get("tie_word_embeddings", _TIED_BY_DEFAULT.get(family, False)),
        vision=dict(vision) if vision else None,
        gated=family in GATED or (family not in FAMILY_NAMES and family not in TWO_MATRIX),
        n_experts=int(experts),
    )


def from_organism(org: dict[str, Any]) -> Architecture:
    """Numbers of a demo organism, with the defaults of :func:`emolens.model.organisms.build_organism` (an organism
    of another tested type: its tiny config's, its training knobs left out)."""
    family, d_model, n_heads = org["family"], org["d_model"], org["n_heads"]
    if family not in FAMILY_NAMES:
        sizes = {k: v for k, v in org.items() if k not in ("family", "seed", *TRAINING_KEYS)}
        return from_hf_config(tiny_config(family, vocab_size=ORGANISM_VOCAB, **sizes).to_dict())
    gqa = family in ("llama", "qwen3", "gemma3")
    return Architecture(
        family=family,
        n_layers=org["n_layers"],
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=org.get("n_kv_heads", max(1, n_heads // 2)) if gqa else n_heads,
        d_head=org.get("d_head") or d_model // n_heads,
        d_mlp=org.get("d_mlp", (3 if family in ("llama", "qwen3") else 4) * d_model),
        vocab_size=ORGANISM_VOCAB,
        n_positions=ORGANISM_POSITIONS if family in _LEARNED_POSITIONS else 0,
        tied=_TIED_BY_DEFAULT[family],
        vision=dict(ORGANISM_VISION) if family == "gemma3" else None,
        gated=family in GATED,
    )


def resolve_architecture(name: str, settings: dict[str, Any],
                         known: dict[str, dict[str, Any]]) -> tuple[Architecture | None, str]:
    """(architecture, where its numbers came from), or (None, why it is unknown)."""
    if "organism" in settings:
        return from_organism(settings["organism"]), "organism"
    path, hf_id = settings.get("path"), settings.get("hf_id")
    sources: list[tuple[str, dict[str, Any]]] = []
    for local in (path, settings.get("cache_dir")):  # a GGUF model's converted checkpoint is in cache_dir
        if local and (Path(local) / "config.json").is_file():
            sources.append(("config.json", json.loads((Path(local) / "config.json").read_text())))
    if hf_id and not path:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hf_id, "config.json", revision=settings.get("revision"))
        if isinstance(cached, str):
            sources.append(("cached config.json", json.loads(Path(cached).read_text())))
    by_id = [v for v in known.values() if hf_id and v.get("hf_id") == hf_id]
    if by_id:
        sources.append(("architectures.json", by_id[0]))
    elif name in known and (not hf_id or known[name].get("hf_id") == hf_id) and not path:
        sources.append(("architectures.json", known[name]))
    if not sources:
        where = f"no config.json in {path}" if path else f"{hf_id or name} not in architectures.json"
        return None, f"unknown architecture ({where})"
    source, cfg = sources[0]
    try:
        return from_hf_config(cfg), source
    except ValueError as e:
        return None, f"unknown architecture ({e})"


def linear_params(a: Architecture) -> int:
    """Weights of the decoder's linear layers (attention q, k, v, o and the MLP): LLM.int8's part."""
    attn = a.d_model * a.d_head * (2 * a.n_heads + 2 * a.n_kv_heads)  # q and o, k and v
    mlp = (3 if a.gated else 2) * a.d_model * a.d_mlp * a.n_experts
    return a.n_layers * (attn + mlp)


def linear_rows(a: Architecture) -> int:
    """Output rows of the decoder's linear layers (one float32 LLM.int8 scale each)."""
    attn = a.d_head * (a.n_heads + 2 * a.n_kv_heads) + a.d_model
    mlp = ((2 * a.d_mlp if a.gated else a.d_mlp) + a.d_model) * a.n_experts
    return a.n_layers * (attn + mlp)


def other_params(a: Architecture) -> int:
    """Everything else in the language model: embeddings, lm_head, norms and biases."""
    d, L = a.d_model, a.n_layers
    embed = a.vocab_size * d + a.n_positions * d + (0 if a.tied else a.vocab_size * d)
    if a.family in ("gpt2", "gpt_neox"):  # biases on every linear; two LayerNorms per block
        per_layer = a.d_head * (a.n_heads + 2 * a.n_kv_heads) + d + a.d_mlp + d + 4 * d
    elif a.family == "gpt_neo":  # q, k, v without bias; out_proj and MLP with bias
        per_layer = d + a.d_mlp + d + 4 * d
    elif a.family == "llama":  # no biases; two RMSNorms
        per_layer = 2 * d
    elif a.family == "qwen3":  # two RMSNorms and the q/k norms over head_dim
        per_layer = 2 * d + 2 * a.d_head
    elif a.family == "gemma3":  # four RMSNorms (pre/post attention and MLP) and the q/k norms
        per_layer = 4 * d + 2 * a.d_head
    else:  # another type: two norms, its biases not counted (a fraction of a percent)
        per_layer = 2 * d
    final_norm = 2 * d if a.family in ("gpt2", "gpt_neox", "gpt_neo") else d
    return embed + L * per_layer + final_norm


def vision_params(a: Architecture) -> tuple[int, int]:
    """(linear, other) parameters of a multimodal checkpoint's SigLIP tower and projector; (0, 0) if none."""
    if not a.vision:
        return 0, 0
    h, m, n = a.vision["hidden_size"], a.vision["intermediate_size"], a.vision["num_hidden_layers"]
    patches = (a.vision["image_size"] // a.vision["patch_size"]) ** 2
    linear = n * (4 * h * h + 2 * h * m)
    other = (3 * a.vision["patch_size"] ** 2 * h + h + patches * h  # patch conv and positions
             + n * (4 * h + m + 5 * h)  # two LayerNorms, biases of q, k, v, o, fc1, fc2
             + 2 * h  # post LayerNorm
             + h * a.d_model + h)  # projector matrix and its RMSNorm
    return linear, other


def n_params(a: Architecture) -> int:
    """Parameters of the language model (text tower only for a multimodal checkpoint)."""
    return linear_params(a) + other_params(a)
