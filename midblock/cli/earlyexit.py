"""``midblock early-exit``: logit lens per layer for base and variant (loss, top-1, gold-answer probability).

Every flag is an EarlyExitConfig field (generated from the dataclass)."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args
from midblock.cli.swap import CLI_OWN, surgery_config
from midblock.surgery.config import EarlyExitConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "early-exit", help="early exit / logit lens per layer, base vs variant", doc=__doc__)
    add_config_args(p, EarlyExitConfig, skip=CLI_OWN)
    common_args(p, out="required")  # the tables, plots and report go there
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.surgery.lens_runs import run_early_exit

    cfg = surgery_config(EarlyExitConfig, args)
    rows = run_early_exit(cfg)
    last = [r for r in rows if r["depth"] == 1.0]
    for r in last:
        print(f"{r['model']}: final-layer loss {r['loss']:.4f}, top-1 {r['top1']:.3f}")
    print(f"see {cfg.out}/early_exit.csv and {cfg.out}/report.html")
    return 0
