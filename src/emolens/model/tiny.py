"""Tiny models: the demo organisms' fixed numbers, and any decoder-only causal-LM type built at tiny sizes.

A type is built from its config class's defaults at tiny sizes (:func:`tiny_config`): its defining features, sliding
windows, soft-capping, QK norms, grouped-query attention, MoE routing, parallel attention, stay as the type defines
them. :func:`tested` lists the types the checks pass (:mod:`emolens.report.model_types`) and the organism builder
accepts; :data:`UNSUPPORTED` names the others and why. The organisms (:mod:`emolens.model.organisms`) and the memory
plan (:mod:`emolens.model.architecture`) both build on these.
"""

from __future__ import annotations

from typing import Any

import torch

from emolens.model.adapter import layer_types, softmax

# The demo organisms' numbers, used by emolens.model.organisms to build them and by the architecture to plan them.
ORGANISM_VOCAB = 2048  # BPE vocabulary of the organisms' tokenizer: whole words, as in a real model's
ORGANISM_POSITIONS = 128  # learned position table of the GPT-2 and GPT-Neo organisms (prompts are ~20-40 tokens)
# The Gemma-3 organism's tiny SigLIP vision tower.
ORGANISM_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "image_size": 28,
                   "patch_size": 14}
TRAINING_KEYS = ("vocab_size", "max_steps", "min_steps", "lr", "batch_size")  # an organism's training knobs

# A tiny config takes the type's defaults with these sizes, where the class has the setting.
TINY_SIZES = {"num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
              "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "n_shared_experts": 1,
              "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "kv_lora_rank": 16, "q_lora_rank": 16,
              "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16}
# Types that cannot be checked, with the reason (the tests assert that each still fails).
_COMPOSITE = "a composite config (multimodal, encoder-decoder or byte-level sub-models): the tiny builder makes " \
    "single text decoders (the multimodal gemma3 is checked as a demo family, tests/unit/test_models.py)"
_TINY = "its config refuses tiny sizes (a validator or a width it derives)"
_FORWARD = "its forward fails at tiny sizes"
_NO_BLOCKS = "no decoder-block list beside the input embeddings (an encoder used as a decoder, or nested blocks)"
_NO_HEADS = "no softmax attention: a state-space or recurrent model has no heads"
_WIDTHS = "the attention width differs between layers (the head grid assumes one d_head)"
_OUTPUTS = "its outputs hold no hidden_states to check against"
_READOUT = "its logits are transformed after the unembedding in a way the label readout does not reproduce"
_STATES = "its hidden_states are not one per block (sub-layer states), so capture and hidden_states disagree"
_NOT_CAUSAL = "a prediction head after the final norm and no causal KV cache: readout and fast patching disagree"
UNSUPPORTED: dict[str, str] = {
    **dict.fromkeys(["blt", "dots3_note", "emu3", "fuyu", "gemma3", "gemma3n", "gemma4", "gemma4_unified",
                     "gemma4_unified_assistant", "got_ocr2", "llama4", "mllama", "musicgen", "musicgen_melody",
                     "moshi", "phi4_multimodal", "qwen3_5", "qwen3_5_moe", "qwen4_exp", "whisper"], _COMPOSITE),
    **dict.fromkeys(["bamba", "cohere_compass_text", "dbrx", "deepseek_v2", "dots1", "dots3_note_text",
                     "gemma3n_text", "gemma4_assistant", "granitemoehybrid", "inkling2_loop_text", "inkling2_text",
                     "kolibri1_1", "lfm2_moe", "mamba2", "qwen4_exp_text", "xlnet", "xlstm", "zamba", "zamba2",
                     "zaya"], _TINY),
    "deepseek_v4": _FORWARD,
    "inkling_text": _READOUT,
    "dory": _STATES,
    "modernbert-decoder": _NOT_CAUSAL,
    **dict.fromkeys(["bert-generation", "cpmant", "git", "hrm_text", "longcat_flash", "trocr"], _NO_BLOCKS),
    **dict.fromkeys(["falcon_mamba", "mamba", "rwkv"], _NO_HEADS),
    **dict.fromkeys(["gemma4_text", "gemma4_unified_text"], _WIDTHS),
    "openai-gpt": _OUTPUTS,
}

# Types whose blocks are not input + attention write + MLP write (emolens.phases.equivalence.sublayer_sum_difference):
# patching their attention or MLP output is exact, but it is not the write into the stream, and the
# attention-vs-MLP phase measures nothing on them (its file says why).
_SCALED = "the block scales its sublayer writes (residual multipliers or gates) before adding them"
_INSIDE = "a sublayer adds the residual inside itself (its output is the stream, not its write)"
NOT_ADDITIVE: dict[str, str] = {
    **dict.fromkeys(["beam", "ergo", "minicpm3", "minimax"], _SCALED),
    **dict.fromkeys(["bloom", "mpt"], _INSIDE),
    "falcon_h1": "attention and a Mamba mixer write in parallel, each scaled: one attention write cannot hold both",
    "hy_v4": "hyper-connections: several residual streams per token, mixed by the block",
    **dict.fromkeys(["biogpt", "opt", "xglm"], "the MLP is no module of its own (fc1 and fc2 sit in the block)"),
}


OPTIONAL = ("num_key_value_heads", "head_dim", "intermediate_size")  # set only where the type's config has them


def candidates() -> list[str]:
    """The decoder-only causal-LM model types of the installed transformers (not masked-LM, not seq2seq)."""
    from transformers.models.auto import modeling_auto as auto

    others = set(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES) | set(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    return sorted(set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - others)


def tested() -> list[str]:
    """The types the model-type tests check and the organism builder accepts."""
    return [t for t in candidates() if t not in UNSUPPORTED]


def tiny_config(model_type: str, d_model: int, n_layers: int, n_heads: int, vocab_size: int,
                max_positions: int = ORGANISM_POSITIONS, d_head: int | None = None, **extras: Any) -> Any:
    """A Hugging Face config of ``model_type`` at the given sizes, everything else the type's defaults.

    ``n_kv_heads`` (default n_heads // 2) and ``d_mlp`` (default 2 * d_model) are extras; the rest of ``extras``
    goes to the config as is. A setting the type's config does not take is left out.
    """
    from transformers import CONFIG_MAPPING, PretrainedConfig

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"unknown model_type {model_type!r} (transformers has no config class for it)")
    cls = CONFIG_MAPPING[model_type]
    default = cls()
    parts = [k for k, v in vars(default).items() if isinstance(v, PretrainedConfig)]
    if getattr(default, "is_encoder_decoder", False) or set(parts) - {"attn_config", "ffn_config"}:
        raise ValueError(f"{model_type}: a composite config (multimodal, encoder-decoder or byte-level sub-models); "
                         "the tiny builder makes single text decoders")
    d_head = d_head or d_model // n_heads
    latent = getattr(default, "kv_lora_rank", None) is not None  # multi-head latent attention: as many kv heads
    kwargs = {"hidden_size": d_model, "num_hidden_layers": n_layers, "num_attention_heads": n_heads,
              "num_key_value_heads": extras.pop("n_kv_heads", n_heads if latent else max(1, n_heads // 2)),
              "intermediate_size": (d_mlp := extras.pop("d_mlp", 2 * d_model)), "head_dim": d_head,
              "vocab_size": vocab_size, "max_position_embeddings": max_positions,
              "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    kwargs = {k: v for k, v in kwargs.items() if k not in OPTIONAL or hasattr(default, k)}
    kwargs |= {k: v for k, v in TINY_SIZES.items() if getattr(default, k, None) is not None}
    kwargs |= {k: d_mlp for k in ("ffn_dim", "ffn_hidden_size") if hasattr(default, k)}
    if getattr(default, "rotary_dim", None):  # GPT-J, CodeGen: partial rotary within the head
        kwargs["rotary_dim"] = d_head // 2
    if getattr(default, "attention_types", None):  # GPT-Neo: global and local layers alternate
        kwargs["attention_types"] = [[["global", "local"], max(1, n_layers // 2)]]
    kwargs |= extras
    try:
        return cls(**kwargs)
    except (AttributeError, TypeError, ValueError):  # a width it derives itself (head_dim) or a layout it checks
        return cls(**{k: v for k, v in kwargs.items() if k != "head_dim"})


def tiny_model(model_type: str, vocab_size: int, seed: int = 0, d_model: int = 32, n_heads: int = 4,
               n_layers: int = 2) -> torch.nn.Module:
    """A random-weight float32 causal LM of ``model_type`` at tiny sizes; a hybrid whose first blocks have no
    softmax attention gets 4 or 8 blocks, the fewest that hold one."""
    from transformers import AutoModelForCausalLM

    for depth in (n_layers, 4, 8):  # a hybrid's default pattern may start with several blocks without attention
        config = tiny_config(model_type, d_model, depth, n_heads, vocab_size)
        kinds = layer_types(config.get_text_config(), depth)
        if kinds is None or any(softmax(kind) for kind in kinds):
            break
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).float().eval()

