"""Which precision a training run computes in: ``auto`` picks what this machine runs fast.

- ``auto`` is bf16 autocast on a CUDA device that supports bf16 and on a CPU with bf16 instructions
  (``avx512_bf16`` or AMX, read from the CPU's flags), fp32 everywhere else. torch's
  ``get_cpu_capability()`` says ``AVX512`` for CPUs with and without ``avx512_bf16``, so it cannot decide
  this; the flags can.
- bf16 autocast on a CPU without those instructions works, but every bf16 matrix product is emulated: a
  training step is roughly 25-35x slower than in fp32 (measured on a 2-core AVX2 machine: 185 s against
  5.15 s per step). An explicit ``bf16`` there is the user's choice and is kept, with one warning per
  process naming the cause and the alternative.

Results are keyed on the *resolved* precision (``fp32`` or ``bf16``), never on ``auto``: what ``auto``
means depends on the machine, and a cell trained in bf16 elsewhere must not be reused as an fp32 cell.
This module reads ``/proc/cpuinfo`` once per process and imports torch only to ask about CUDA.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# the slowdown of emulated bf16 autocast against fp32 on CPUs without NATIVE_BF16_FLAGS (see the docstring)
EMULATED_SLOWDOWN = "25-35x"
RESOLVED = ("fp32", "bf16")
# "0" or "1" overrides what the CPU's flags say (simulate a CPU without bf16 instructions; the tests set "0")
CPU_BF16_ENV = "MIDBLOCK_CPU_BF16"

_warned_emulated = False


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX-BF16), unless
    ``MIDBLOCK_CPU_BF16`` says otherwise (``0`` or ``1``)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def cpu_capability() -> dict[str, object]:
    """What a timing on this CPU depends on: native bf16 or not, the bf16 flags present, torch's ISA level."""
    bf16_flags = sorted(f for f in cpu_flags() if f in NATIVE_BF16_FLAGS)
    info: dict[str, object] = {
        "model": cpu_model_name(),
        "native_bf16": bool(bf16_flags),  # the hardware's answer, whatever MIDBLOCK_CPU_BF16 says
        "bf16_flags": bf16_flags,
        "auto_precision_on_cpu": "bf16" if cpu_native_bf16() else "fp32",
        "avx512": "avx512f" in cpu_flags(),
        "avx2": "avx2" in cpu_flags(),
    }
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    except (ImportError, AttributeError):
        pass
    return info


def default_device_type() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu`` (what :func:`midblock.tuning.train.train` runs on)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cuda_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device_type: str | None = None) -> str:
    """``fp32`` or ``bf16``: ``requested`` itself unless it is ``auto``, which picks what ``device_type``
    (default: the one training would use) runs fast."""
    if requested in RESOLVED:
        return requested
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}")
    device_type = device_type or default_device_type()
    if device_type == "cuda":
        return "bf16" if _cuda_bf16() else "fp32"
    if device_type == "cpu":
        return "bf16" if cpu_native_bf16() else "fp32"
    return "fp32"


def emulated_bf16(resolved: str, device_type: str) -> bool:
    """True when ``resolved`` is bf16 on a CPU without bf16 instructions (slow, see the module docstring)."""
    return resolved == "bf16" and device_type == "cpu" and not cpu_native_bf16()


def emulation_message(source: str = "--precision bf16") -> str:
    """The warning for bf16 autocast on a CPU without bf16 instructions; ``source`` names who asked."""
    return (
        f"{source} on a CPU without bf16 instructions (no {' or '.join(NATIVE_BF16_FLAGS)} in its flags): "
        f"bf16 is emulated here, so training runs about {EMULATED_SLOWDOWN} slower than in fp32; "
        "use --precision fp32 (or auto, which picks fp32 on this CPU) unless bf16 is the point"
    )


def warn_if_emulated(resolved: str, device_type: str, source: str = "--precision bf16") -> bool:
    """Log :func:`emulation_message` once per process when ``resolved`` is emulated bf16; True when it is."""
    global _warned_emulated
    if not emulated_bf16(resolved, device_type):
        return False
    if not _warned_emulated:
        _warned_emulated = True
        log.warning(emulation_message(source))
    return True
