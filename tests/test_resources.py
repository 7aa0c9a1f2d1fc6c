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


def test_peak_memory_window_resets_between_runs():
    import sys

    from midblock.resources import peak_memory_bytes, reset_peak_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("peak reset uses /proc/self/clear_refs (Linux)")
    reset_peak_memory()
    before = peak_memory_bytes()
    blob = bytearray(400 * 2**20)  # touch 400 MiB
    blob[::4096] = b"x" * len(blob[::4096])
    high = peak_memory_bytes()
    del blob
    reset_peak_memory()
    assert high - before > 300 * 2**20
    assert peak_memory_bytes() < high - 300 * 2**20


_PEAK_SCRIPT = """
import torch
from midblock.resources import peak_memory_bytes, reset_peak_memory
reset_peak_memory()
floor = peak_memory_bytes()
# ~200 MB in 100 KB tensors: heap memory (below glibc's mmap threshold), then a small tensor on top of
# the heap pins it, so freeing the rest does not shrink the heap by itself
chunks = [torch.ones(25_000) for _ in range(2_000)]
pin = torch.ones(10)
del chunks
reset_peak_memory()
print((peak_memory_bytes() - floor) // 2**20)
"""


def test_a_new_peak_window_starts_from_live_memory_not_freed_memory():
    """Runs one after another in one process (compare, the demo) each report their own peak: memory the
    previous run freed is handed back before the window opens. Before, the second arm inherited it."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS windows need Linux /proc/self/clear_refs")
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) < 50  # MiB above the floor; 190 without handing freed memory back
