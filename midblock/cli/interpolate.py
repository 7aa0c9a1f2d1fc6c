"""``midblock interpolate``: per-segment theta = (1 - a) base + a variant (``0,1,1,1,0`` = mid-block merge).

Every flag is an InterpolateConfig field (generated from the dataclass)."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args
from midblock.cli.swap import CLI_OWN, surgery_config
from midblock.surgery.config import InterpolateConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "interpolate", help="per-segment weight interpolation, measured", doc=__doc__)
    add_config_args(p, InterpolateConfig, skip=CLI_OWN)
    common_args(p, out="required")  # the tables, plots and report go there
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.surgery.runs import run_interpolate

    cfg = surgery_config(InterpolateConfig, args)
    rows = run_interpolate(cfg)
    print(f"{len(rows)} configurations measured; see {cfg.out}/interpolate.csv and {cfg.out}/report.html")
    if cfg.save:
        print(f"saved {rows[2]['config']} to {cfg.save}")
    return 0
