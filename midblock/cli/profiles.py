"""``midblock profiles [LABEL=]RUN_DIR [...]``: where along the depth tuning changed each model, on one axis.

The change profiles of several `midblock analyze` runs (base against a tuned model; models, arms or seeds),
on relative depth, with their means over the paper's depth regions: the first fifth of the blocks, the middle
three fifths, the last fifth. Runs under one label are the seeds of one arm: their means get a 95% interval
over those seeds. Writes profiles.md, profiles.json and profiles.png into --out."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "profiles", help="change profiles of analyses on one depth axis, by region", doc=__doc__)
    p.add_argument(
        "runs", nargs="+", metavar="[LABEL=]RUN_DIR", help="`midblock analyze` run directories (or metrics.csv)"
    )
    common_args(p, seed=False, out="required", models=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.reporting.profiles import run_profiles

    res = run_profiles(args.runs, args.out)
    print(f"{len(res['groups'])} profile(s) by depth region; see {args.out}/profiles.md")
    return 0
