"""The embedded demo's model organisms: tiny causal LMs of six architecture families (or any tested type), trained here.

Method. A byte-level BPE tokenizer (up to 2048 tokens, enough for whole words as in a real model's;
``<|endoftext|>`` as eos and pad) is trained on the dataset's readout prompts (the configured
:class:`~emolens.data.readout.Readout`), with every label word made a single token. One organism per
family is built from a few numbers (width, depth, heads) with the real family's Hugging Face class
and its defining features: GPT-2's learned positions and tied embeddings; Pythia's partial rotary
(25%) and parallel residual; GPT-Neo's alternating global/local attention with a short window;
Llama's and Qwen3's grouped-query attention (Qwen3 with an explicit head_dim and QK norm); and
Gemma-3 as the multimodal ``Gemma3ForConditionalGeneration`` that gemma3_12b is, with a tiny SigLIP
vision tower, sliding/full layers, GQA and an attention width different from d_model. Any other
tested model type (:mod:`emolens.model.tiny`: mistral, opt, falcon, ...) is its config class's
defaults at the given width, depth and heads (sliding windows, soft-capping, MoE routing kept). Each is
trained from a fixed seed with AdamW on one task: predict the emotion's label token at the prompt's
last position (cross-entropy over the vocabulary), until held-out accuracy (every fifth item_id held
out; argmax over the four label logits) reaches the target and the median held-out margin of the
right label's logit over the best other label's reaches 2 logits (so patching pairs separate).
Inputs: the dataset JSONL and one organism's settings. Outputs: ``<out_dir>/`` as an ordinary
Hugging Face checkpoint with its tokenizer, loadable by :func:`emolens.model.loading.load_model`, and
``readout_accuracy.json``; an organism below the target is refused (error, nothing written). """

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from emolens.config import ModelLoadError
from emolens.data.dataset import load_dataset
from emolens.data.readout import DEFAULT, Readout
from emolens.io import provenance, save_json
from emolens.model.adapter import FAMILY_NAMES
from emolens.model.tiny import ORGANISM_POSITIONS, ORGANISM_VISION, ORGANISM_VOCAB, TRAINING_KEYS, tested, tiny_config
from emolens.stopwatch import charged

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
TARGET_ACCURACY = 0.9
TARGET_MARGIN = 2.0  # median held-out margin (logits) of the right label over the best other: pairs patching can use


class OrganismError(ModelLoadError):
    """An organism cannot be built or did not learn the readout task well enough: the message names the setting
    to change, and the command line refuses it in one line (exit 2) like any model that cannot be loaded."""


# --- tokenizer -------------------------------------------------------------------------------------
def train_tokenizer(texts: list[str], vocab_size: int = ORGANISM_VOCAB,
                    readout: Readout = DEFAULT) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer on the readout's prompts, each of its label words one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Label words repeated so their merges come first: each becomes one token with its leading space.
    corpus = [readout.prompt(t) for t in texts] + [w for w in readout.labels.values() for _ in range(1000)]
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                        unk_token=EOS, padding_side="right")
    for word in readout.labels.values():
        if len(tokenizer.encode(word, add_special_tokens=False)) != 1:
            raise OrganismError(f"label word {word!r} is not one token; raise the tokenizer vocab_size")
    readout.label_token_ids(tokenizer)  # distinct tokens, or a ValueError
    return tokenizer


# --- models ----------------------------------------------------------------------------------------
def build_organism(family: str, d_model: int, n_layers: int, n_heads: int, vocab_size: int, seed: int = 0,
                   d_head: int | None = None, max_positions: int = ORGANISM_POSITIONS,
                   **extras: Any) -> PreTrainedModel:
    """A randomly initialised fp32 causal LM of one family; ``extras`` go to its (text) config.

    Recognised extras: ``d_mlp`` (MLP width, default 4 * d_model, 3 * d_model for Llama/Qwen3),
    ``n_kv_heads`` (GQA families, default n_heads // 2), ``window`` (GPT-Neo local attention and
    Gemma-3 sliding window, default 8); anything else is passed to the Hugging Face config as is.
    ``max_positions`` bounds the prompt length (learned position tables of GPT-2 and GPT-Neo).
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoConfig,
        GPTNeoForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        SiglipVisionConfig,
    )

    if family not in FAMILY_NAMES:
        return _any_type(family, d_model, n_layers, n_heads, vocab_size, seed, d_head, max_positions, **extras)
    extras = dict(extras)
    d_mlp = extras.pop("d_mlp", (3 if family in ("llama", "qwen3") else 4) * d_model)
    n_kv = extras.pop("n_kv_heads", max(1, n_heads // 2))
    window = extras.pop("window", 8)
    d_head = d_head or d_model // n_heads
    if family in ("gpt2", "gpt_neox", "gpt_neo", "llama") and d_head * n_heads != d_model:
        raise OrganismError(f"{family}: n_heads * d_head must equal d_model ({n_heads} * {d_head} != {d_model})")
    common = {"vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_inner=d_mlp,
                            n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            tie_word_embeddings=True, **common, **extras)
        model = GPT2LMHeadModel(config)
    elif family == "gpt_neox":
        config = GPTNeoXConfig(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                               intermediate_size=d_mlp, max_position_embeddings=max_positions,
                               rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
                               **common, **extras)
        model = GPTNeoXForCausalLM(config)
    elif family == "gpt_neo":
        if n_layers % 2:
            raise OrganismError("gpt_neo: n_layers must be even (global/local layers alternate)")
        config = GPTNeoConfig(hidden_size=d_model, num_layers=n_layers, num_heads=n_heads,
                              intermediate_size=d_mlp, attention_types=[[["global", "local"], n_layers // 2]],
                              window_size=window, max_position_embeddings=max_positions,
                              embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
                              tie_word_embeddings=True, **common, **extras)
        model = GPTNeoForCausalLM(config)
    elif family == "llama":
        config = LlamaConfig(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                             num_key_value_heads=n_kv, intermediate_size=d_mlp,
                             max_position_embeddings=max_positions, tie_word_embeddings=False, **common, **extras)
        model = LlamaForCausalLM(config)
    elif family == "qwen3":
        config = Qwen3Config(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                             num_key_value_heads=n_kv, head_dim=d_head, intermediate_size=d_mlp,
                             max_position_embeddings=max_positions, tie_word_embeddings=False, **common, **extras)
        model = Qwen3ForCausalLM(config)
    else:  # gemma3: the multimodal checkpoint class, as gemma3_12b
        layer_types = ["full_attention" if (i + 1) % 6 == 0 or i == n_layers - 1 else "sliding_attention"
                       for i in range(n_layers)]
        text = Gemma3TextConfig(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                                num_key_value_heads=n_kv, head_dim=d_head, intermediate_size=d_mlp,
                                query_pre_attn_scalar=d_head, sliding_window=window, layer_types=layer_types,
                                max_position_embeddings=max_positions, **common, **extras)
        vision = SiglipVisionConfig(**ORGANISM_VISION, num_attention_heads=2,
                                    vision_use_head=False)  # as in Gemma-3 checkpoints
        config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                              tie_word_embeddings=True)
        model = Gemma3ForConditionalGeneration(config)
    return model.float()


def _any_type(model_type: str, d_model: int, n_layers: int, n_heads: int, vocab_size: int, seed: int,
              d_head: int | None, max_positions: int, **extras: Any) -> PreTrainedModel:
    """An organism of a tested type outside the six families: the type's defaults at these sizes."""
    from transformers import AutoModelForCausalLM

    if model_type not in tested():
        raise OrganismError(f"unknown organism family {model_type!r}: not one of the six families "
                            f"{list(FAMILY_NAMES)} nor a tested model type ({len(tested())} of them, "
                            "docs/model-types.md)")
    config = tiny_config(model_type, d_model, n_layers, n_heads, vocab_size, max_positions, d_head, **extras)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).float()


# --- training --------------------------------------------------------------------------------------
def heldout_mask(records: list[dict[str, Any]], every: int = 5) -> list[bool]:
    """True for records whose item_id is held out: every ``every``-th item in sorted order."""
    items = sorted({r["item_id"] for r in records})
    held = {item for i, item in enumerate(items) if i % every == every - 1}
    return [r["item_id"] in held for r in records]


def _encode(tokenizer: Any, records: list[dict[str, Any]],
            readout: Readout = DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt ids [N, T] and each prompt's length [N]."""
    ids = [tokenizer.encode(readout.prompt(r["text"]), add_special_tokens=False) for r in records]
    lengths = torch.tensor([len(x) for x in ids])
    padded = torch.full((len(ids), int(lengths.max())), tokenizer.pad_token_id, dtype=torch.long)
    for i, x in enumerate(ids):
        padded[i, : len(x)] = torch.tensor(x)
    return padded, lengths


def _last_logits(model: PreTrainedModel, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits at each prompt's real last token [B, vocab]. Right padding never reaches the real
    positions of a causal model, so the batch runs without an attention mask, trimmed to its longest
    prompt, and the unembedding runs only at the batch's distinct last positions."""
    ids = ids[:, : int(lengths.max())]  # [B, T]
    keep, where = torch.unique(lengths - 1, return_inverse=True)  # distinct last positions [K], [B]
    logits = model(input_ids=ids, logits_to_keep=keep).logits  # [B, K, vocab]
    return logits[torch.arange(len(ids)), where]


@torch.no_grad()
def readout_accuracy(model: PreTrainedModel, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                     label_ids: list[int], batch_size: int = 256) -> tuple[float, float]:
    """(fraction of prompts whose largest label logit of the four is the right emotion, median margin of
    the right label's logit over the largest other label logit)."""
    model.eval()
    logits = torch.cat([_last_logits(model, ids[s:s + batch_size], lengths[s:s + batch_size])[:, label_ids]
                        for s in range(0, len(ids), batch_size)])  # [N, 4]
    right = logits.gather(1, labels[:, None])[:, 0]
    other = logits.scatter(1, labels[:, None], float("-inf")).max(-1).values
    return float((logits.argmax(-1) == labels).float().mean()), float((right - other).median())


@charged("forward")  # forwards and backwards: the organism's training is its model work
def train_readout(model: PreTrainedModel, tokenizer: Any, records: list[dict[str, Any]], *,
                  max_steps: int = 1500, min_steps: int = 100, lr: float = 1e-3, batch_size: int = 64,
                  eval_every: int = 25, target: float = TARGET_ACCURACY, margin: float = TARGET_MARGIN,
                  seed: int = 0, readout: Readout = DEFAULT) -> tuple[float, float]:
    """Train the last-position readout with AdamW until held-out accuracy >= target and the median
    held-out margin >= ``margin`` logits (so most patching pairs separate cleanly); return both.

    Held out: every fifth item_id (all four emotions of a scenario on the same side). Training runs at
    least ``min_steps`` and stops at the first evaluation that reaches both targets, or at ``max_steps``.
    """
    emotions = list(readout.labels)
    label_map = readout.label_token_ids(tokenizer)
    label_ids = [label_map[e] for e in emotions]
    held = heldout_mask(records)
    train = [r for r, h in zip(records, held, strict=True) if not h]
    test = [r for r, h in zip(records, held, strict=True) if h]
    tr_ids, tr_len = _encode(tokenizer, train, readout)
    te_ids, te_len = _encode(tokenizer, test, readout)
    tr_target = torch.tensor([label_map[r["emotion"]] for r in train])  # vocabulary ids
    te_labels = torch.tensor([emotions.index(r["emotion"]) for r in test])  # 0..3
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    accuracy = median_margin = 0.0
    for step in range(1, max_steps + 1):
        model.train()
        batch = torch.randint(len(train), (batch_size,), generator=gen)
        loss = torch.nn.functional.cross_entropy(_last_logits(model, tr_ids[batch], tr_len[batch]),
                                                 tr_target[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == max_steps:
            accuracy, median_margin = readout_accuracy(model, te_ids, te_len, te_labels, label_ids)
            log.debug("step %d loss %.4f held-out accuracy %.3f, margin %.2f", step, loss.item(), accuracy,
                      median_margin)
            if step >= min_steps and accuracy >= target and median_margin >= margin:
                break
    model.eval()
    log.info("readout trained %d steps: loss %.4f, held-out accuracy %.3f, median margin %.2f logits", step,
             loss.item(), accuracy, median_margin)
    return accuracy, median_margin


# --- run -------------------------------------------------------------------------------------------
def run(dataset_path: str | Path, name: str, organism_settings: dict[str, Any], out_dir: str | Path,
        seed: int = 0, threads: int | None = None, readout: Readout = DEFAULT) -> dict[str, Any]:
    """Train one organism and save it as a Hugging Face checkpoint directory, atomically.

    ``organism_settings``: ``family``, ``d_model``, ``n_layers``, ``n_heads``, optional ``d_head``,
    ``seed`` (else ``seed``), training knobs (``vocab_size``, ``max_steps``, ``min_steps``, ``lr``,
    ``batch_size``) and family extras for :func:`build_organism`. ``threads`` caps torch's CPU threads
    (set it to the job's cores: two jobs of two threads each on two cores run several times slower).
    ``readout``: the prompts and label words the tokenizer is trained on and the organism learns.
    """
    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    settings = dict(organism_settings)
    seed = int(settings.pop("seed", seed))
    train_kw = {k: settings.pop(k) for k in TRAINING_KEYS if k in settings}
    vocab_size = int(train_kw.pop("vocab_size", ORGANISM_VOCAB))
    missing = [k for k in ("family", "d_model", "n_layers", "n_heads") if k not in settings]
    if missing:
        raise OrganismError(f"models.{name}: organism settings lack {missing}")
    family = settings.pop("family")
    records = load_dataset(dataset_path, readout.labels)
    tokenizer = train_tokenizer([r["text"] for r in records], vocab_size=vocab_size, readout=readout)
    longest = max(len(tokenizer.encode(readout.prompt(r["text"]))) for r in records)
    settings.setdefault("max_positions", max(ORGANISM_POSITIONS, longest))
    model = build_organism(family, vocab_size=len(tokenizer), seed=seed, **settings)
    t0 = time.time()
    accuracy, median_margin = train_readout(model, tokenizer, records, seed=seed, readout=readout, **train_kw)
    train_seconds = time.time() - t0
    if accuracy < TARGET_ACCURACY:
        raise OrganismError(f"models.{name}: organism reached held-out accuracy {accuracy:.3f} < "
                            f"{TARGET_ACCURACY}; raise its max_steps or change its size")
    summary = {"name": name, "family": family, "heldout_accuracy": accuracy, "heldout_median_margin": median_margin,
               "train_seconds": round(train_seconds, 2), "n_params": sum(p.numel() for p in model.parameters()),
               "readout": readout.as_dict()}
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        summary["provenance"] = provenance({"organism": organism_settings, "seed": seed,
                                            "readout": readout.as_dict()}, started,
                                           dataset=str(dataset_path), model_id=name)
        save_json(summary, tmp / "readout_accuracy.json")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("organism %s (%s): held-out accuracy %.3f in %.1f s", name, family, accuracy, train_seconds)
    return summary
