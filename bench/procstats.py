"""Process measurements shared by the bench scripts that run each arm in a worker process: resident memory
sampled on a thread, the CPU in one line, the machine's load. Times nothing itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampler:
    """RSS every 2 ms on a thread (torch releases the GIL), with the time of each sample."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop:
            self.samples.append((time.perf_counter(), rss()))
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._t.join()

    def rise(self, start: float, end: float) -> int:
        """Peak RSS between ``start`` and ``end`` minus the RSS at ``start``."""
        inside = [r for t, r in self.samples if start <= t <= end]
        before = [r for t, r in self.samples if t <= start] or inside[:1]
        return max(inside) - before[-1] if inside else 0


def cpu_line() -> str:
    """``<model>, N cores, avx512_bf16 yes|no`` from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    return f"{model}, {os.cpu_count()} cores, avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}"


def uptime() -> str:
    """``uptime``'s line (the load averages: how quiet the machine was)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def gib(b: float | None) -> str:
    return "" if b is None else f"{b / 2**30:.2f}"


def run_worker(cmd: list[str], name: str) -> dict:
    """Run one worker process (``cmd``) and return the JSON it printed on its ``RESULT `` line; a worker
    that printed none stops the benchmark with the tail of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"worker {name} failed (exit {proc.returncode})")
    return json.loads(line[len("RESULT ") :])


def write_report(out: str | None, report: str, results: list[dict]) -> None:
    """Print the markdown report; with ``out``, write it there and the raw results beside it as ``.json``."""
    print(report)
    if out:
        Path(out).write_text(report)
        Path(out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
