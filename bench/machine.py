"""What every benchmark's timings depend on, recorded next to them: the CPU (its model, whether it has bf16
instructions, the bf16 flags, torch's ISA level), torch's threads and the versions.

A bf16 timing from a CPU with ``avx512_bf16`` and one from an AVX2-only CPU differ by 25-35x, so a figure
without this line cannot be compared with anything. Each bench script prints :func:`machine_line` with its
results and puts :func:`machine_info` into any JSON it writes. ``python bench/machine.py`` prints both.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any


def machine_info() -> dict[str, Any]:
    """The CPU capability (``midblock.tuning.precision.cpu_capability``), cores, threads, versions."""
    import torch

    from midblock.tuning.precision import cpu_capability

    return {
        "cpu": cpu_capability(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line for a results file: ``Machine: <cpu>, N cores (T torch threads); native bf16: yes (flags)...``."""
    info = info or machine_info()
    cpu = info["cpu"]
    bf16 = f"yes ({', '.join(cpu['bf16_flags'])})" if cpu["native_bf16"] else "no (bf16 autocast is emulated)"
    gpu = f"; GPU {info['cuda']}" if info.get("cuda") else ""
    return (
        f"Machine: {cpu.get('model') or platform.machine()}, {info['cores']} cores ({info['torch_threads']} torch "
        f"threads); native bf16: {bf16}; torch CPU capability {cpu.get('torch_cpu_capability')}; "
        f"torch {info['torch']}{gpu}"
    )


def shown_argv(argv: list[str], data: str | None) -> list[str]:
    """A command line as recorded in a results file: the local GSM8K directory written as ``$GSM8K_DIR``, so
    that the record names no path of the machine it ran on."""
    return ["$GSM8K_DIR" if data and a == data else a for a in argv]


if __name__ == "__main__":  # pragma: no cover
    info = machine_info()
    print(machine_line(info))
    print(json.dumps(info, indent=1))
