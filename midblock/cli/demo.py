"""``midblock demo``: analyse, train two arms, evaluate, analyse again, and write one report."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.layers import PAPER_BAND


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job end to end, with a report", description=__doc__)
    p.add_argument("--model", default="smollm2-135m", help="model spec (default: the embedded SmolLM2-135M)")
    p.add_argument("--task", default="arith", help="arith (built in) or gsm8k")
    p.add_argument("--data", help="GSM8K directory or file for --task gsm8k (default: $MIDBLOCK_GSM8K or the hub)")
    p.add_argument("--profile", default="quick", help="quick (~10 min on 2 CPU cores) | full (3 seeds, longer) | smoke")
    p.add_argument("--band", default=PAPER_BAND, help=f"the mid-block band (default {PAPER_BAND}: the paper's band)")
    p.add_argument("--steps", type=int, help="override the profile's training steps per arm")
    p.add_argument("--eval-items", type=int, help="override the profile's number of held-out problems")
    common_args(p)
    p.set_defaults(func=run, out="runs/demo")


def run(args: argparse.Namespace) -> int:
    from midblock.experiments.demo import DemoConfig, run_demo
    from midblock.reporting.demo_report import format_table

    cfg = DemoConfig(
        model=args.model,
        task=args.task,
        data=args.data,
        profile=args.profile,
        band=args.band,
        out=args.out or "runs/demo",
        seed=args.seed,
        steps=args.steps,
        eval_items=args.eval_items,
    )
    summary = run_demo(cfg)
    print()
    print(format_table(summary["comparison"]))
    print(f"\nwall time {summary['wall_s']:.0f} s; report: {cfg.out}/report.html")
    return 0
