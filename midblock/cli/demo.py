"""``midblock demo``: analyse the base, compare all-block LoRA with mid-block LoRA on the paper's band
(the same grid as ``midblock compare --preset PROFILE``), analyse the tuned models, and write one report."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args, config_kwargs
from midblock.experiments.demo import DemoConfig

_CLI_OWN = ("out", "seed")  # common to every command: added by common_args


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", help="the main job end to end, with a report", doc=__doc__)
    add_config_args(p, DemoConfig, skip=_CLI_OWN)
    common_args(p)
    p.set_defaults(func=run, out="runs/demo")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(**config_kwargs(args, DemoConfig, skip=_CLI_OWN), out=args.out or "runs/demo", seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from midblock.experiments.demo import run_demo
    from midblock.reporting.demo_report import format_table

    cfg = config_from_args(args)
    print(f"band of the mid-block arm: {cfg.band} (the paper's band: the middle three of five segments)")
    summary = run_demo(cfg)
    print()
    print(format_table(summary["comparison"], baseline=summary["settings"].get("baseline") or "lora"))
    print(f"\nwall time {summary['wall_s']:.0f} s; report: {cfg.out}/report.html")
    return 0
