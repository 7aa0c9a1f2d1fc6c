"""``midblock swap``: transplant a variant's blocks into the base (or the reverse), measure each configuration.

Every flag is a SwapConfig field (generated from the dataclass)."""

from __future__ import annotations

import argparse
from typing import TypeVar

from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args, config_kwargs
from midblock.surgery.config import SwapConfig

CLI_OWN = ("out", "seed")  # from common_args

_Config = TypeVar("_Config")


def surgery_config(cls: type[_Config], args: argparse.Namespace) -> _Config:
    """The surgery config of a command line (``--out``, ``--base`` and ``--variant`` are required flags)."""
    return cls(**config_kwargs(args, cls, skip=CLI_OWN), out=args.out, seed=args.seed)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "swap", help="swap layer blocks between base and variant, measure each", doc=__doc__)
    add_config_args(p, SwapConfig, skip=CLI_OWN)
    common_args(p, out="required")  # the tables, plots and report go there
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.surgery.runs import run_swap

    cfg = surgery_config(SwapConfig, args)
    rows = run_swap(cfg)
    print(f"{len(rows)} configurations measured; see {cfg.out}/swap.csv and {cfg.out}/report.html")
    return 0
