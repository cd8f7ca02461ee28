"""Shared fixtures: a trained tokenizer and two-layer, random-weight checkpoints of all six families.

Fixtures (all session-scoped, built once per test run in a few seconds on CPU):

- ``tiny_settings``: ``{family: settings}`` the tiny checkpoints were built from (:data:`TINY`).
- ``tokenizer``: the organism tokenizer (byte-level BPE, 512 tokens) trained on the built-in dataset;
  label words are single tokens; ``<|endoftext|>`` is eos and pad (right padding).
- ``tiny_checkpoints``: ``{family: Path}`` for the six families in :data:`TINY`, each an ordinary
  Hugging Face checkpoint directory (``save_pretrained`` + tokenizer), fp32, random init, untrained.
  Gemma-3 is the multimodal ``Gemma3ForConditionalGeneration`` (as gemma3_12b). Widths differ across
  families and Qwen3/Gemma-3 have an attention width n_heads * d_head different from d_model.
- ``tiny_adapters``: ``{family: ModelAdapter}`` loaded from those directories with the real loader,
  ``load_model({"path": dir, "dtype": "float32"}, name=family, device="cpu")``. Shared by every test:
  use ``adapter.hooks(...)`` freely (hooks are removed on exit) but never change the weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emolens.data.dataset import build_dataset
from emolens.model.adapter import ModelAdapter
from emolens.model.loading import load_model
from emolens.model.organisms import build_organism, train_tokenizer

# Two-layer organisms for tests: family -> build_organism settings (widths differ on purpose).
TINY: dict[str, dict] = {
    "gpt2": {"d_model": 32, "n_layers": 2, "n_heads": 4},
    "gpt_neox": {"d_model": 48, "n_layers": 2, "n_heads": 4},
    "gpt_neo": {"d_model": 32, "n_layers": 2, "n_heads": 4},
    "llama": {"d_model": 64, "n_layers": 2, "n_heads": 4},
    "qwen3": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_head": 24},
    "gemma3": {"d_model": 48, "n_layers": 2, "n_heads": 4, "d_head": 16},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The mini workflow's first test goes first: one worker builds the mini DAG (the longest chain of the suite)
    while the other runs the unit tests, instead of both waiting on it at the end."""
    first = [item for item in items if item.nodeid.startswith("tests/workflow/test_demo_e2e.py::test_every_phase")]
    items[:] = first + [item for item in items if item not in first]


@pytest.fixture(scope="session")
def tiny_settings() -> dict[str, dict]:
    """``{family: build_organism settings}`` of the tiny checkpoints (n_layers, n_heads, d_head...)."""
    return TINY


@pytest.fixture(scope="session")
def varied_records() -> list[dict]:
    """The built-in dataset with every anger text one to three words longer. The built-in texts are matched in
    tokens within each item; the tests that line prompts of different lengths up by role need some that are not."""
    extra = ("Honestly.", "Honestly, again.", "Honestly, again and again.")
    return [r | {"text": f"{r['text']} {extra[int(r['item_id'][1:]) % 3]}"} if r["emotion"] == "anger" else r
            for r in build_dataset()]


@pytest.fixture(scope="session")
def tokenizer():
    """The organism tokenizer trained on the built-in dataset's texts."""
    return train_tokenizer([r["text"] for r in build_dataset()])


@pytest.fixture(scope="session")
def tiny_checkpoints(tokenizer, tmp_path_factory) -> dict[str, Path]:
    """``{family: checkpoint dir}``: two-layer random-weight fp32 checkpoints with the tokenizer."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    out = {}
    for seed, (family, settings) in enumerate(TINY.items()):
        model = build_organism(family, vocab_size=len(tokenizer), seed=seed, **settings)
        out[family] = root / family
        model.save_pretrained(out[family])
        tokenizer.save_pretrained(out[family])
    return out


@pytest.fixture(scope="session")
def tiny_adapters(tiny_checkpoints) -> dict[str, ModelAdapter]:
    """``{family: ModelAdapter}`` loaded from :func:`tiny_checkpoints` through ``load_model``."""
    return {family: load_model({"path": str(path), "dtype": "float32"}, name=family, device="cpu")
            for family, path in tiny_checkpoints.items()}


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Two-layer models and the simulations' small matrices gain nothing from intra-op or BLAS threads, and lose
    several-fold when two test workers share two cores (torch's threads and numpy's BLAS pool both at one)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)
