"""``midblock correlate RUN_DIR [...]``: correlation of analysis metrics across layers, clustered heat maps."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "correlate", help="metric-metric correlation of analysis runs", doc=__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="`midblock analyze` run directories (or metrics.csv)")
    p.add_argument("--min-rows", type=int, default=3, help="fewest common rows for a correlation (else NaN)")
    common_args(p, seed=False, out="required", models=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.errors import MidblockError
    from midblock.surgery.lens_runs import run_correlate

    if args.min_rows < 2:
        raise MidblockError(f"--min-rows must be >= 2, got {args.min_rows}")
    res = run_correlate(args.runs, args.out, args.min_rows)
    print(f"{len(res['metrics'])} metrics over {res['n_rows']} rows; see {args.out}/correlation_pearson.csv")
    return 0
