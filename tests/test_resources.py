import pytest

from midblock.errors import MidblockError
from midblock.resources import is_oom, run_with_batch


def _fits(limit):
    calls = []

    def fn(bs):
        calls.append(bs)
        if bs > limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return bs

    return fn, calls


def test_oom_gives_advice_with_a_smaller_batch():
    fn, calls = _fits(4)
    with pytest.raises(MidblockError, match="--batch-size 8"):
        run_with_batch(fn, 16)
    assert calls == [16]


def test_auto_batch_halves_until_it_fits():
    fn, calls = _fits(4)
    assert run_with_batch(fn, 32, auto=True) == 4
    assert calls == [32, 16, 8, 4]


def test_other_errors_pass_through():
    def fn(bs):
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError):
        run_with_batch(fn, 8, auto=True)
    assert is_oom(MemoryError()) and not is_oom(RuntimeError("size mismatch"))
