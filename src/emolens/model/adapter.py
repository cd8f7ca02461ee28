"""The model seam: where a loaded causal LM keeps its sites, and the one adapter per architecture family.

Everything outside the model wing sees a :class:`ModelAdapter` and nothing else: the decoder layers
(the residual stream entering layer l is that layer's input), the attention output projection of
each layer (head h's output is its slice of that projection's input), the head geometry, and the
label-token readout (final norm, then the few unembedding rows). No other module knows the family.

Site naming, written down once: residual index l < L is the stream entering block l (HF
``hidden_states[l]``); index L is the last block's output before the final norm. A head site is
(layer, head), the head's d_head slice of the attention output projection's input. A sublayer write
(``attn_out``, ``mlp_out``, TransformerLens's ``hook_attn_out``/``hook_mlp_out``) is what block l's attention (a
hybrid's mixer) or its MLP adds to the residual stream: the sublayer's output, after its post-norm where the block
has one (Gemma-3, OLMo-2); a parallel block (GPT-NeoX) adds both to the stream it read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emolens.config import ModelLoadError
from emolens.stopwatch import charged


@dataclass(frozen=True)
class Family:
    """One of the six architecture families, by model_type: where it keeps its blocks, attention output projection
    and body, and the defaults its parameter count needs (:mod:`emolens.model.architecture`)."""

    name: str  # the family (the multimodal gemma3 and its text model gemma3_text are one)
    layers: str  # attribute path of the decoder block list, from the CausalLM object
    attn_out: str  # attribute path of the attention output projection, from one block
    body: str  # attribute path of the module whose last_hidden_state is final-normed
    attn: str  # attribute path, from one block, of the module whose output the attention adds to the stream
    mlp: str  # the same for the MLP
    learned_positions: bool = False  # absolute position embeddings added at index 0 (else rotary, inside attention)
    tied: bool = False  # tie_word_embeddings where a config does not say


# The one table of the six families (the demo organisms, the plan's parameter counts, the known sites).
FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", "transformer.h", "attn.c_proj", "transformer", "attn", "mlp", learned_positions=True,
                   tied=True),
    "gpt_neox": Family("gpt_neox", "gpt_neox.layers", "attention.dense", "gpt_neox", "attention", "mlp"),
    "gpt_neo": Family("gpt_neo", "transformer.h", "attn.attention.out_proj", "transformer", "attn", "mlp",
                      learned_positions=True, tied=True),
    "llama": Family("llama", "model.layers", "self_attn.o_proj", "model", "self_attn", "mlp"),
    "qwen3": Family("qwen3", "model.layers", "self_attn.o_proj", "model", "self_attn", "mlp"),
    "gemma3_text": Family("gemma3", "model.layers", "self_attn.o_proj", "model", "post_attention_layernorm",
                          "post_feedforward_layernorm", tied=True),
    "gemma3": Family("gemma3", "model.language_model.layers", "self_attn.o_proj", "model.language_model",
                     "post_attention_layernorm", "post_feedforward_layernorm", tied=True),
}
FAMILY_NAMES = tuple(dict.fromkeys(f.name for f in FAMILIES.values()))  # the six, in the table's order


# --- where the sites are ---------------------------------------------------------------------------
OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo", "o", "out", "proj")  # an output projection's names
# A block whose config layer type names none of these has no softmax attention (hybrids: linear attention,
# convolutions, state-space mixers): it is a residual site without heads.
_SOFTMAX_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "attention", "hybrid")


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _widths(module: nn.Module) -> tuple[int, int] | None:
    """(input, output) width of a linear map: ``nn.Linear`` (and its int8 subclass) or GPT-2's ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # weight [in, out]
        return tuple(module.weight.shape)
    return None


def layer_types(text_config: Any, n_layers: int) -> list[str] | None:
    """Each block's type as the config lists it (``layer_types`` or ``layers_block_type``), if it does."""
    types = getattr(text_config, "layer_types", None) or getattr(text_config, "layers_block_type", None)
    return [str(t) for t in types] if isinstance(types, (list, tuple)) and len(types) == n_layers else None


def softmax(layer_type: str) -> bool:
    """Whether a config's layer type is softmax attention (else linear attention, convolution, state space)."""
    return any(t in layer_type for t in _SOFTMAX_TYPES) and "linear" not in layer_type


def find_layers(model: nn.Module, n_layers: int) -> str:
    """The path of the decoder block list: the shortest ``ModuleList`` of ``n_layers`` modules whose parent holds
    the input embeddings (so not a vision tower's)."""
    embed = model.get_input_embeddings()
    lists = {name: len(m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name}
    found = [name for name, n in lists.items() if n == n_layers and "." in name
             and any(m is embed for m in _get(model, name.rsplit(".", 1)[0]).modules())]
    if not found:
        tried = ", ".join(f"{k} ({v})" for k, v in sorted(lists.items(), key=lambda kv: kv[0].count("."))[:8])
        raise ModelLoadError(f"no ModuleList of num_hidden_layers = {n_layers} blocks beside the input embeddings "
                             f"(module lists tried: {tried or 'none'})")
    return min(found, key=lambda name: (name.count("."), name))


def find_attn_out(block: nn.Module, d_model: int, n_heads: int) -> tuple[str | None, list[str]]:
    """(path, tried): the attention output projection of one block: among the linear maps inside a module whose class
    names attention, from a width divisible by n_heads to d_model, the last one named as an output projection
    (:data:`OUT_NAMES`), else the last one (a query or gate map can have the same widths); None where there is none."""
    tried, found = [], []
    for name, module in block.named_modules():
        widths = _widths(module)
        owners = name.split(".")[:-1]
        in_attention = any("attention" in type(_get(block, ".".join(owners[:i + 1]))).__name__.lower()
                           for i in range(len(owners)))
        if widths is None or not in_attention:
            continue
        tried.append(f"{name} ({widths[0]}->{widths[1]})")
        if widths[1] == d_model and widths[0] % n_heads == 0:
            found.append(name)
    named = [name for name in found if name.rsplit(".", 1)[-1] in OUT_NAMES]
    return (named or found or [None])[-1], tried


def resolve_sites(model: nn.Module, hand: dict[str, str] | None = None,
                  name: str = "model") -> tuple[str, list[str | None], str]:
    """(layers path, each block's attention-output path or None, body path) of a loaded causal LM.

    Hand-given paths (``layers``, ``attn_out``, ``body`` in the model's settings) come first, then the
    :data:`FAMILIES` table, then the structure: :func:`find_layers`, the body is the block list's parent, and
    :func:`find_attn_out` per block. A block the config marks as not softmax attention has no heads; any other
    block without an attention output projection is an error naming the model_type and the paths tried.
    """
    config, hand = model.config, {k: v for k, v in (hand or {}).items() if v}
    tc = config.get_text_config()
    model_type, cls, n_layers = config.model_type, type(model).__name__, tc.num_hidden_layers
    table = FAMILIES.get(model_type)
    where = f"models.{name} (model_type {model_type!r}, {cls})"
    layers = hand.get("layers") or (table.layers if table else None)
    try:
        layers = layers or find_layers(model, n_layers)
    except ModelLoadError as e:
        raise ModelLoadError(f"{where}: cannot find its decoder blocks: {e}; name them with models.{name}.layers "
                             "(and attn_out, body)") from None
    body = hand.get("body") or (table.body if table else layers.rsplit(".", 1)[0])
    for key, path in (("layers", layers), ("body", body)):
        try:
            module = _get(model, path)
        except AttributeError as e:
            raise ModelLoadError(f"{where}: models.{name}.{key} {path!r} does not resolve ({e})") from None
        if key == "layers" and not isinstance(module, nn.ModuleList):
            raise ModelLoadError(f"{where}: models.{name}.layers {path!r} is a {type(module).__name__}, not the "
                                 "ModuleList of decoder blocks")
    blocks = list(_get(model, layers))
    fixed = hand.get("attn_out") or (table.attn_out if table else None)
    if fixed:
        paths = [fixed if _has(block, fixed) else None for block in blocks]
        if not any(paths):
            raise ModelLoadError(f"{where}: models.{name}.attn_out {fixed!r} does not resolve in any block of "
                                 f"{layers!r} ({type(blocks[0]).__name__})")
        widths = _widths(_get(blocks[paths.index(fixed)], fixed))
        if widths is None or widths[1] != tc.hidden_size:
            raise ModelLoadError(f"{where}: models.{name}.attn_out {fixed!r} is not a linear map to d_model = "
                                 f"{tc.hidden_size} ({type(_get(blocks[paths.index(fixed)], fixed)).__name__}, "
                                 f"widths {widths})")
        return layers, paths, body
    kinds = layer_types(tc, len(blocks))
    paths = []
    for i, block in enumerate(blocks):
        path, tried = find_attn_out(block, tc.hidden_size, tc.num_attention_heads)
        has_heads = kinds is None or softmax(kinds[i])
        if path is None and has_heads:
            raise ModelLoadError(
                f"{where}: block {i} ({layers}.{i}, {type(block).__name__}) has no attention output projection (a "
                f"linear map inside an attention module from n_heads x d_head to d_model = {tc.hidden_size}; tried: "
                f"{', '.join(tried) or 'no linear map inside an attention module'}); name it with "
                f"models.{name}.attn_out")
        paths.append(path if has_heads else None)
    return layers, paths, body


# Names of a block's sublayers (its direct children), in order of preference: the mixer of a block without heads,
# the MLP, and the post-norms that follow them (a block with an MLP post-norm names its attention post-norm
# post_attention_layernorm; elsewhere that is the norm before the MLP).
MIXER_NAMES = ("linear_attn", "mamba", "mixer", "conv", "temporal_block", "self_attn", "attention", "attn")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "mlp_block")
MLP_POST_NORMS = ("post_feedforward_layernorm", "post_mlp_layernorm", "post_ffn_norm", "post_norm2")
ATTN_POST_NORMS = ("post_self_attn_layernorm", "post_operator_norm", "post_norm1", "post_attention_layernorm")


def find_sublayers(block: nn.Module, attn_out: str | None) -> tuple[str | None, str | None]:
    """(attention write, MLP write) of one block: the direct child holding the attention output projection (else,
    in a block without heads, the first mixer of :data:`MIXER_NAMES`) and the first of :data:`MLP_NAMES`, each
    replaced by its post-norm where the block has one; None where there is none. The equivalence check proves the
    choice: block output - block input = attention write + MLP write."""
    children = dict(block.named_children())
    attn = attn_out.split(".")[0] if attn_out else next((n for n in MIXER_NAMES if n in children), None)
    mlp = next((n for n in MLP_NAMES if n in children), None)
    mlp_post = next((n for n in MLP_POST_NORMS if n in children and mlp), None)
    attn_posts = ATTN_POST_NORMS if mlp_post else ATTN_POST_NORMS[:-1]
    attn_post = next((n for n in attn_posts if n in children and attn), None)
    return attn_post or attn, mlp_post or mlp


def _learned_positions(body: nn.Module, model: nn.Module) -> bool:
    """Whether the body adds a learned position table to the input embeddings (an Embedding other than the
    token one, named for positions)."""
    embed = model.get_input_embeddings()
    return any(isinstance(m, nn.Embedding) and m is not embed and ("pos" in name or name.endswith("wpe"))
               for name, m in body.named_modules())


def _has(obj: Any, path: str) -> bool:
    try:
        _get(obj, path)
    except AttributeError:
        return False
    return True


class ModelAdapter:
    """A causal LM seen through its residual stream, attention heads and label readout."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, name: str = "model",
                 quantization: str | None = None, hand: dict[str, str] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.quantization = quantization
        self.config = model.config
        self.text_config = tc = model.config.get_text_config()
        layers, attn_out, body = resolve_sites(model, hand, name)
        self.sites = {"layers": layers, "attn_out": sorted({p for p in attn_out if p}), "body": body}
        self.layers: list[nn.Module] = list(_get(model, layers))
        self.attn_out: list[nn.Module | None] = [p and _get(block, p) for block, p in zip(self.layers, attn_out,
                                                                                            strict=True)]
        self.head_layers: list[int] = [i for i, m in enumerate(self.attn_out) if m is not None]
        table = FAMILIES.get(model.config.model_type)
        writes = [(table.attn, table.mlp) if table and not (hand or {}).get("layers") else find_sublayers(block, p)
                  for block, p in zip(self.layers, attn_out, strict=True)]
        kinds = layer_types(tc, len(self.layers)) or [""] * len(self.layers)
        writes = [(None, a) if m is None and any(t in kind for t in ("mlp", "moe")) else (a, m)  # Nemotron-H's
                  for (a, m), kind in zip(writes, kinds, strict=True)]  # one-sublayer blocks: an MLP block's mixer
        self.sublayer_paths = {"attn_out": sorted({a for a, _ in writes if a}),
                               "mlp_out": sorted({m for _, m in writes if m})}
        # kind -> each block's module whose output is that sublayer's write into the residual stream (or None)
        self.sublayers: dict[str, list[nn.Module | None]] = {
            kind: [path and _get(block, path) for block, path in zip(self.layers, paths, strict=True)]
            for kind, paths in zip(("attn_out", "mlp_out"), zip(*writes, strict=True), strict=True)}
        # the fast patching engine forks a KV cache; a hybrid's recurrent or convolution state it cannot fork
        self.prefix_cache: bool = len(self.head_layers) == len(self.layers) and not any(
            "hybrid" in kind for kind in layer_types(tc, len(self.layers)) or ())  # Falcon-H1: attention + SSM
        self.body: nn.Module = _get(model, body)
        self.learned_positions = table.learned_positions if table else _learned_positions(self.body, model)
        self.n_layers: int = len(self.layers)
        self.n_heads: int = tc.num_attention_heads
        self.d_model: int = tc.hidden_size
        if not self.head_layers:
            raise ModelLoadError(f"models.{name} ({model.config.model_type}): no block has softmax attention heads")
        widths = {_widths(self.attn_out[i])[0] for i in self.head_layers}
        if len(widths) != 1 or widths.pop() % self.n_heads:
            raise ModelLoadError(f"models.{name}: attention output projections of input widths {sorted(widths)} "
                                 f"do not split into {self.n_heads} heads of one width")
        self.d_head: int = _widths(self.attn_out[self.head_layers[0]])[0] // self.n_heads
        self.softcap: float | None = getattr(tc, "final_logit_softcapping", None)
        # a constant the model multiplies its logits by (Cohere's logit_scale, Granite's 1 / logits_scaling)
        self.logit_multiplier: float = float(getattr(tc, "logit_scale", None) or 1.0) / float(
            getattr(tc, "logits_scaling", None) or 1.0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    # --- readout -------------------------------------------------------------------------------
    def label_logits(self, final_hidden: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits of a few label tokens from final-normed hidden states [..., d] -> [..., n_labels]."""
        head = self.model.get_output_embeddings()
        dtype = torch.promote_types(final_hidden.dtype, torch.float32)  # at least float32
        w = head.weight[list(token_ids)].to(dtype)  # [n_labels, d]
        logits = final_hidden.to(dtype) @ w.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[list(token_ids)].to(dtype)
        logits = logits * self.logit_multiplier
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward_final(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      **kwargs: Any) -> Any:
        """Run the body (no unembedding); returns the model output with final-normed states."""
        with charged("forward"):
            return self.body(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # --- hooks ---------------------------------------------------------------------------------
    @contextmanager
    def hooks(self, resid: dict[int, Callable[[torch.Tensor], torch.Tensor | None]] | None = None,
              head_inputs: dict[int, Callable[[torch.Tensor], torch.Tensor | None]] | None = None,
              attn_out: dict[int, Callable[[torch.Tensor], torch.Tensor | None]] | None = None,
              mlp_out: dict[int, Callable[[torch.Tensor], torch.Tensor | None]] | None = None,
              ) -> Iterator[None]:
        """Attach functions to residual indices (0..L), attention-output inputs and sublayer writes (per block).

        Each function gets the tensor [batch, pos, d] at that site and may return a replacement
        (or None to leave it). Residual index l < L is block l's input; index L is the last
        block's output. Head-input tensors are [batch, pos, n_heads * d_head]; ``attn_out`` and ``mlp_out``
        get what block l's attention (mixer) and MLP add to the stream, [batch, pos, d_model].
        """
        handles = []
        for idx, fn in (resid or {}).items():
            if not 0 <= idx <= self.n_layers:
                raise IndexError(f"residual index {idx} outside 0..{self.n_layers} for {self.name}")
            if idx < self.n_layers:
                handles.append(self.layers[idx].register_forward_pre_hook(_pre_hook(fn), with_kwargs=True))
            else:
                handles.append(self.layers[-1].register_forward_hook(_post_hook(fn)))
        for layer, fn in (head_inputs or {}).items():
            if self.attn_out[layer] is None:
                raise IndexError(f"block {layer} of {self.name} has no attention heads (layer type "
                                 "without softmax attention)")
            handles.append(self.attn_out[layer].register_forward_pre_hook(_pre_hook(fn), with_kwargs=True))
        for kind, fns in (("attn_out", attn_out), ("mlp_out", mlp_out)):
            for layer, fn in (fns or {}).items():
                if not 0 <= layer < self.n_layers or self.sublayers[kind][layer] is None:
                    raise IndexError(f"block {layer} of {self.name} has no {kind} site")
                handles.append(self.sublayers[kind][layer].register_forward_hook(_write_hook(fn), with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _pre_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})
    return hook


def _post_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return hook



def _write_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable:
    """A sublayer's output hook that hands ``fn`` [batch, pos, d] also where the module returns its tokens flattened,
    [batch * pos, d] (Llama-4's MoE), and gives the replacement back in the module's shape."""
    post = _post_hook(lambda hidden: _unflatten(fn, hidden, shape))
    shape: torch.Size | None = None

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        nonlocal shape
        x = args[0] if args else kwargs.get("hidden_states")
        shape = x.shape if isinstance(x, torch.Tensor) else None
        return post(module, args, output)
    return hook


def _unflatten(fn: Callable[[torch.Tensor], torch.Tensor | None], hidden: torch.Tensor,
               shape: torch.Size | None) -> torch.Tensor | None:
    if shape is None or hidden.dim() != 2 or len(shape) != 3 or hidden.numel() != shape.numel():
        return fn(hidden)
    new = fn(hidden.view(shape))  # [batch, pos, d]
    return None if new is None else new.reshape(hidden.shape)
