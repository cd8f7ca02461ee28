"""CUDA out-of-memory backoff, exercised on CPU by raising the errors torch raises."""

import logging

import pytest
import torch

from emolens.engine import oom


def _fails_above(limit: int, error=lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")):
    calls = []

    def fn(batch_size: int) -> str:
        calls.append(batch_size)
        if batch_size > limit:
            raise error()
        return f"done at {batch_size}"

    return fn, calls


@pytest.fixture
def freed(monkeypatch):
    count = []
    monkeypatch.setattr(oom, "free_cuda_memory", lambda: count.append(1))
    return count


def test_halves_until_it_fits_and_logs_each_retry(caplog, freed):
    fn, calls = _fails_above(3)
    with caplog.at_level(logging.WARNING, logger="emolens.engine.oom"):
        result, final = oom.run_with_backoff(fn, 64, what="activations gemma3_12b")
    assert (result, final) == ("done at 2", 2)
    assert calls == [64, 32, 16, 8, 4, 2]
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 5
    assert caplog.messages == [
        f"activations gemma3_12b: CUDA out of memory at batch size {n}; retrying with {n // 2}"
        for n in (64, 32, 16, 8, 4)
    ]
    assert len(freed) == 5  # the cache is emptied before every retry


def test_runtime_error_that_reports_out_of_memory_is_retried(caplog, freed):
    fn, calls = _fails_above(3, error=lambda: RuntimeError("CUDA error: out of memory"))
    assert oom.run_with_backoff(fn, 5, what="x") == ("done at 2", 2)
    assert calls == [5, 2]


def test_no_retry_when_it_fits(caplog, freed):
    fn, calls = _fails_above(100)
    with caplog.at_level(logging.WARNING):
        assert oom.run_with_backoff(fn, 16, what="x") == ("done at 16", 16)
    assert calls == [16] and not caplog.records and not freed


@pytest.mark.parametrize("error", [ValueError("bad input"), RuntimeError("shape mismatch")])
def test_other_errors_propagate_at_once(error, freed):
    calls = []

    def fn(batch_size):
        calls.append(batch_size)
        raise error

    with pytest.raises(type(error), match=str(error)):
        oom.run_with_backoff(fn, 32, what="x")
    assert calls == [32] and not freed


def test_out_of_memory_at_batch_1_names_the_setting(caplog, freed):
    fn, calls = _fails_above(0)
    with caplog.at_level(logging.WARNING), pytest.raises(oom.BatchOutOfMemoryError) as info:
        oom.run_with_backoff(fn, 4, what="patching llama3_8b")
    assert calls == [4, 2, 1]
    message = str(info.value)
    assert message.startswith("patching llama3_8b: CUDA out of memory even at batch size 1")
    assert "batch_size 4" in message and "quantization: int8" in message
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    assert len(caplog.records) == 2


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        oom.run_with_backoff(lambda b: b, 0, what="x")


def test_is_out_of_memory():
    assert oom.is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert oom.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory"))
    assert not oom.is_out_of_memory(RuntimeError("expected scalar type"))
    assert not oom.is_out_of_memory(MemoryError())


def test_free_cuda_memory_collects_garbage_and_empties_the_cache_only_when_cuda_is_in_use(monkeypatch):
    import gc

    import torch

    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append("gc") or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    oom.free_cuda_memory()  # CUDA present but never used: nothing to return, and no CUDA context created
    assert calls == ["gc"]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    oom.free_cuda_memory()
    assert calls == ["gc", "gc", "empty_cache"]
