"""``midblock monitor RUN``: draw a run's per-layer monitor as heatmaps (block x optimizer step).

RUN is a ``midblock train --monitor-every N`` run directory, or a Trainer's output directory with
``MidBlockMonitor`` attached (either holds ``monitor.jsonl``). Three panels: 1 - CKA between the current and
the base hidden states at each block's output, the relative weight change of each block, and each block's
share of the step's gradient norm; the trained blocks lie between dashed lines. Writes ``RUN/monitor.png``
(or ``--out``) and prints a short summary of the last reading.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midblock.cli import common_args
from midblock.cli.options import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "monitor", help="draw a training run's per-layer monitor (heatmaps)", doc=__doc__)
    p.add_argument("run", help="a run directory holding monitor.jsonl")
    p.add_argument("--out", help="the PNG to write (default: RUN/monitor.png)")
    common_args(p, seed=False, out=False, models=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.errors import MidblockError
    from midblock.reporting.monitor_plots import describe, plot_monitor
    from midblock.tuning.monitor import read_monitor

    meta, readings = read_monitor(args.run)
    out = Path(args.out) if args.out else Path(args.run) / "monitor.png"
    if out.suffix.lower() != ".png":
        raise MidblockError(f"--out {out} is not a .png file", hint="e.g. --out monitor.png")
    path = plot_monitor(meta, readings, out, title=Path(args.run).name)
    print(describe(meta, readings))
    print(f"heatmap written to {path}")
    return 0
