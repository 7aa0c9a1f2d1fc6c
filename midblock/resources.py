"""Memory: turn an out-of-memory failure into advice, or halve the batch automatically (``--auto-batch``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

from midblock.errors import MidblockError

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_oom(exc: BaseException) -> bool:
    """True for CPU and GPU out-of-memory errors (torch raises several types for them)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "not enough memory" in msg or "can't allocate memory" in msg
    )


def memory_status() -> str:
    """A short description of the memory available now (CPU RSS and, if present, GPU)."""
    parts = []
    try:
        import psutil

        vm = psutil.virtual_memory()
        rss = psutil.Process(os.getpid()).memory_info().rss
        parts.append(f"RSS {rss / 2**30:.1f} GiB, {vm.available / 2**30:.1f} GiB free of {vm.total / 2**30:.1f}")
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            parts.append(f"GPU {free / 2**30:.1f} GiB free of {total / 2**30:.1f}")
    except Exception:  # a broken CUDA set-up must not hide the original error
        pass
    return "; ".join(parts) or "memory status unavailable"


def oom_error(batch_size: int, what: str = "batch") -> MidblockError:
    smaller = max(1, batch_size // 2)
    return MidblockError(
        f"out of memory with a {what} of {batch_size} ({memory_status()})",
        hint=f"use --batch-size {smaller} (with gradient accumulation to keep the effective batch), or --auto-batch",
    )


def run_with_batch(fn: Callable[[int], T], batch_size: int, auto: bool = False) -> T:
    """Call ``fn(batch_size)``; on OOM either raise advice or, with ``auto``, retry with half the batch."""
    while True:
        try:
            return fn(batch_size)
        except Exception as e:
            if not is_oom(e):
                raise
            _free_cache()
            if not auto or batch_size == 1:
                raise oom_error(batch_size) from e
            log.warning("out of memory at batch size %d; retrying with %d", batch_size, batch_size // 2)
            batch_size //= 2


def _free_cache() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so the resident
    size is what is alive: a run that follows another in one process then starts from the same floor."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the resident size may include freed pages


def reset_peak_memory(device: str | None = None) -> None:
    """Start a new peak-memory window, so runs in one process (``compare``, ``demo``) do not inherit the
    previous run's peak. On Linux, writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM) to the
    current resident size, after freed memory has been returned to the OS."""
    release_freed_memory()
    try:
        import torch

        if device and str(device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(device)
    except ImportError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: peak_memory_bytes falls back to the process-lifetime peak


def peak_memory_bytes(device: str | None = None) -> int:
    """Peak memory since the last ``reset_peak_memory``: CUDA max allocated on a GPU, peak RSS on the CPU."""
    try:
        import torch

        if device and str(device).startswith("cuda") and torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated(device))
    except ImportError:
        pass
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
