"""An early, honest estimate: after the first timed steps of a run, say once if it will be far slower than
this kind of machine should be, with the measured pace, the projection and the likely cause.

Progress bars show the rate; a newcomer needs the sentence "this will take 2 hours, not 5 minutes, because
bf16 is emulated on this CPU". The rule, on a CPU (a GPU run is not checked: the reference below is a CPU's):

- **expected** time of one unit of work = its predicted compute / (reference rate per core x cores used, at
  most :data:`CORE_CAP`). The reference rates were measured on a 2-core AVX2 machine without bf16
  instructions, in fp32: SmolLM2-135M LoRA training ran at about 40 GFLOP/s per core (409 predicted GFLOP per
  step in 5.15 s on 2 cores), greedy generation at about 24 GFLOP/s per core (1.3 problems/s of at most 96
  new tokens, counting 2 FLOP per parameter per token). Counting more cores than :data:`CORE_CAP` would
  expect a speed-up that small batches do not get;
- **slow** = the median of the first timed units (the first one, which warms up, is skipped) is more than
  :data:`SLOW_FACTOR` times the expected time, and the projected total exceeds the expected total by more
  than :data:`MIN_LOST_S`. A machine a few times slower than the reference passes quietly, and so does a
  tiny model whose steps are all overhead; emulated bf16 (25-35x) or a CPU shared by many processes does not;
- **cause**, the first that applies: bf16 emulated on this CPU; fewer torch threads than cores; a load
  average above the cores; else a CPU slower than the reference (or memory swapping).

:func:`pace_verdict` and :func:`likely_cause` are pure (unit-tested with made-up timings);
:func:`machine_facts` reads the machine, :func:`note_if_slow` logs.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass

from midblock.tuning.precision import EMULATED_SLOWDOWN, NATIVE_BF16_FLAGS, cpu_native_bf16

log = logging.getLogger(__name__)

TRAIN_GFLOPS_PER_CORE = 40.0  # fp32 LoRA training on the reference 2-core AVX2 machine (see the docstring)
GENERATE_GFLOPS_PER_CORE = 24.0  # fp32 greedy generation, same machine
CORE_CAP = 4
SLOW_FACTOR = 4.0
MIN_LOST_S = 120.0  # and the slowness costs at least this much in all (tiny models: overhead, not compute)
WARMUP_UNITS = 1  # the first step (or batch) allocates and warms caches: not timed
TIMED_UNITS = 2  # the units after it that decide


@dataclass(frozen=True)
class MachineFacts:
    """What the likely cause of a slow run is read from."""

    device_type: str
    precision: str  # the resolved precision: fp32 or bf16
    native_bf16: bool
    threads: int  # torch's intra-op threads
    cores: int  # the cores this process may use
    load_avg: float | None  # 1-minute load average (None where the OS has none)


@dataclass(frozen=True)
class Pace:
    """The verdict on a slow run: per-unit seconds measured and expected, and the projected total."""

    measured_s: float
    expected_s: float
    projected_s: float
    ratio: float


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_facts(device_type: str, precision: str) -> MachineFacts:
    import torch

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return MachineFacts(device_type, precision, cpu_native_bf16(), torch.get_num_threads(), usable_cores(), load)


def expected_seconds(gflop: float, gflops_per_core: float, facts: MachineFacts) -> float | None:
    """The reference time of ``gflop`` of work on this machine's cores; None off the CPU (not checked)."""
    if facts.device_type != "cpu" or gflop <= 0:
        return None
    return gflop / (gflops_per_core * max(1, min(facts.cores, CORE_CAP)))


def pace_verdict(
    unit_s: list[float],
    total_units: int,
    expected_unit_s: float | None,
    *,
    warmup: int = WARMUP_UNITS,
    timed: int = TIMED_UNITS,
    factor: float = SLOW_FACTOR,
    min_lost_s: float = MIN_LOST_S,
) -> Pace | None:
    """A :class:`Pace` when the first timed units (after ``warmup``) run more than ``factor`` times slower
    than expected and the projected total exceeds the expected one by more than ``min_lost_s``; None
    otherwise, when fewer than ``warmup + timed`` units are measured, or when nothing is expected.
    ``total_units`` is the run's total, so the projection covers the whole run."""
    if expected_unit_s is None or expected_unit_s <= 0 or len(unit_s) < warmup + timed:
        return None
    window = unit_s[warmup : warmup + timed]
    measured = statistics.median(window)
    ratio = measured / expected_unit_s
    if ratio <= factor:
        return None
    done = sum(unit_s[: warmup + timed])
    projected = done + measured * max(0, total_units - warmup - timed)
    if projected - expected_unit_s * total_units <= min_lost_s:
        return None  # a short run (a tiny model's steps are overhead, not compute): not worth a warning
    return Pace(measured, expected_unit_s, projected, ratio)


def likely_cause(facts: MachineFacts) -> str:
    """The most likely reason for a slow run on this machine, with what to do about it. Emulated bf16 alone
    explains any slowdown; a busy machine and too few threads can add up, so both are named when both hold."""
    if facts.device_type == "cpu" and facts.precision == "bf16" and not facts.native_bf16:
        return (
            f"bf16 autocast is emulated on this CPU (no {' or '.join(NATIVE_BF16_FLAGS)}), about "
            f"{EMULATED_SLOWDOWN} slower than fp32: use --precision fp32 (or auto)"
        )
    causes = []
    if facts.load_avg is not None and facts.load_avg > 1.5 * facts.cores:
        causes.append(
            f"the machine is busy (load average {facts.load_avg:.1f} on {facts.cores} cores): other processes "
            "share the CPU"
        )
    if facts.threads < min(facts.cores, CORE_CAP):
        causes.append(
            f"torch uses {facts.threads} thread(s) on {facts.cores} cores: raise --threads (or OMP_NUM_THREADS) "
            "if the cores are free"
        )
    if causes:
        return "; also ".join(causes)
    return "this CPU is slower than the reference (a 2-core AVX2 machine in fp32), or memory is swapping"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def slow_message(what: str, unit: str, pace: Pace, facts: MachineFacts) -> str:
    cores = min(facts.cores, CORE_CAP)
    return (
        f"{what} will be slow: {pace.measured_s:.2f} s per {unit} where about {pace.expected_s:.2f} s is "
        f"expected on {cores} core(s) ({pace.ratio:.0f}x); projected {_duration(pace.projected_s)} in all. "
        f"Likely cause: {likely_cause(facts)}."
    )


def note_if_slow(
    what: str, unit: str, unit_s: list[float], total_units: int, expected_unit_s: float | None, facts: MachineFacts
) -> str | None:
    """Log :func:`slow_message` when :func:`pace_verdict` says the run is slow; returns the message."""
    pace = pace_verdict(unit_s, total_units, expected_unit_s)
    if pace is None:
        return None
    msg = slow_message(what, unit, pace, facts)
    log.warning(msg)
    return msg
