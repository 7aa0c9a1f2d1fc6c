"""``midblock interpolate``: per-segment theta = (1 - a) base + a variant (``0,1,1,1,0`` = mid-block merge)."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command
from midblock.cli.swap import add_surgery_args, surgery_kwargs


def register(sub) -> None:
    p = add_command(sub, "interpolate", help="per-segment weight interpolation, measured", doc=__doc__)
    add_surgery_args(p)
    p.add_argument(
        "--weights",
        action="append",
        metavar="A1,..,AK",
        help="a per segment (K = number of values); repeat for several (default 0,1,1,1,0)",
    )
    p.add_argument("--extrapolate", action="store_true", help="allow weights outside [0, 1]")
    p.add_argument("--save", metavar="DIR", help="write the first --weights model as a Hugging Face directory")
    common_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.surgery.runs import InterpolateConfig, run_interpolate

    cfg = InterpolateConfig(
        **surgery_kwargs(args),
        weights=args.weights or ["0,1,1,1,0"],
        extrapolate=args.extrapolate,
        save=args.save,
    )
    rows = run_interpolate(cfg)
    print(f"{len(rows)} configurations measured; see {cfg.out}/interpolate.csv and {cfg.out}/report.html")
    if cfg.save:
        print(f"saved {rows[2]['config']} to {cfg.save}")
    return 0
