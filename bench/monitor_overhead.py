"""The per-layer monitor's cost: ``midblock train`` with ``--monitor-every N`` against the same run without it,
interleaved in ONE process (off, on, on, off, ...), SmolLM2-135M at the demo's batch and settings.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python bench/monitor_overhead.py --steps 10 --every 5 --rounds 2 \\
        --out bench/results/monitor_overhead.md

Two figures, both from the real training loop:

- *measured*: the training loop's wall time with the monitor over the time without it, per round (same steps,
  same data, same seed). With few steps this is dominated by the step-to-step noise of a shared machine;
- *per reading*: the time of one reading (probe forward, weight change, plus the gradient read) and the median
  training step, timed inside the same runs (the monitor's own methods are wrapped with a timer). The cost at
  ``--monitor-every`` = K is one reading per K steps, reading / (K x step), in a long run; a run of S steps
  also pays the base states and the step-0 reading once (two more passes of the same size), so a 50-step run
  at K = 50 pays three passes: 3 x reading / (50 x step).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from midblock.experiments.grid import PROFILE_PRECISION, PROFILES
from midblock.layers import PAPER_BAND
from midblock.tuning import monitor as mon
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.monitorconfig import MonitorConfig
from midblock.tuning.train import TrainConfig, train

TIMES: dict[str, list[float]] = {"read": [], "grads": []}


def _timed(name: str, fn):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMES[name].append(time.perf_counter() - t0)

    return wrapper


def run_once(args, every: int, out: Path) -> dict:
    s = PROFILES["quick"]
    cfg = TrainConfig(
        model=args.model,
        task="arith",
        out=str(out),
        tuning=MidBlockConfig(method="midblock", band=PAPER_BAND, rank=s["rank"], budget_baseline_rank=s["rank"]),
        steps=args.steps,
        batch_size=s["batch_size"],
        lr=s["lr"],
        max_length=384,
        precision=PROFILE_PRECISION["quick"],
        eval_loss_items=args.rows,  # the evaluation set doubles as the probe; only the final eval loss uses it
        progress=False,
        monitor=MonitorConfig(every=every, rows=args.rows),
    )
    t0 = time.perf_counter()
    res = train(cfg)
    return {"wall": res.wall_s, "loop": time.perf_counter() - t0, "median_step": res.median_step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--every", type=int, default=5, help="monitor interval of the measured runs")
    p.add_argument("--rows", type=int, default=32, help="probe rows (the default of --monitor-rows)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="bench/results/monitor_overhead.md")
    args = p.parse_args()
    mon.LayerMonitor.read = _timed("read", mon.LayerMonitor.read)
    mon.LayerMonitor.record_grads = _timed("grads", mon.LayerMonitor.record_grads)
    tmp = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    rows = []
    try:
        for r in range(args.rounds):
            order = [0, args.every] if r % 2 == 0 else [args.every, 0]
            got = {}
            for every in order:
                d = tmp / f"r{r}-e{every}"
                got[every] = run_once(args, every, d)
                shutil.rmtree(d)
                print(f"round {r} every={every}: {got[every]}", flush=True)
            rows.append(got)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [g[args.every]["wall"] / g[0]["wall"] for g in rows]
    step = statistics.median([g[0]["median_step"] for g in rows] + [g[args.every]["median_step"] for g in rows])
    read = statistics.median(TIMES["read"])
    grads = statistics.median(TIMES["grads"]) if TIMES["grads"] else 0.0
    per50 = (read + grads) / (50 * step)
    demo = 3 * read / (50 * step)  # a 50-step run: base states, step-0 reading, step-50 reading
    from machine import machine_line  # bench/machine.py: the CPU capability next to every timing

    lines = [
        "# Monitor overhead (bench/monitor_overhead.py)",
        "",
        f"Command: `HF_HUB_OFFLINE=1 OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} .venv/bin/python "
        f"bench/monitor_overhead.py --model {args.model} --steps {args.steps} --every {args.every} --rounds "
        f"{args.rounds} --rows {args.rows}`",
        "",
        f"Date {dt.date.today()}; the machine was shared with other jobs (contended): the figures are noisy.",
        machine_line(),
        f"Run: Mid-Block LoRA on {PAPER_BAND}, the demo's quick profile (batch {PROFILES['quick']['batch_size']}, "
        f"rank {PROFILES['quick']['rank']} matched, max length 384, precision {PROFILE_PRECISION['quick']}), "
        f"{args.steps} steps, probe {args.rows} held-out rows.",
        "",
        f"| round | without monitor (s) | with --monitor-every {args.every} (s) | ratio |",
        "|---|---|---|---|",
        *(
            f"| {i} | {g[0]['wall']:.1f} | {g[args.every]['wall']:.1f} | {ratio:.3f} |"
            for i, (g, ratio) in enumerate(zip(rows, ratios))
        ),
        "",
        f"Measured (whole runs, {args.steps} steps, readings at step 0 and every {args.every}): median ratio "
        f"{statistics.median(ratios):.3f}.",
        "",
        f"Per reading (median of {len(TIMES['read'])} readings): {read:.2f} s, gradient read "
        f"{grads * 1000:.1f} ms; median training step {step:.2f} s.",
        f"Cost at --monitor-every 50: {100 * per50:.1f}% of training time in a long run, {100 * demo:.1f}% in a "
        "50-step run (base states and step-0 reading included). Target: at most 5%.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
