"""``midblock analyze --base SPEC --variant SPEC --data gsm8k``: where, layer by layer, a variant differs.
Every flag but --resume is an AnalyzeConfig field."""

from __future__ import annotations

import argparse
from dataclasses import replace

from midblock.analysis.config import AnalyzeConfig
from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args, config_kwargs
from midblock.errors import MidblockError

_CLI_OWN = ("seed",)  # from common_args


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "analyze", help="layer-wise metrics of base vs variants, and a recommended band", doc=__doc__)
    add_config_args(p, AnalyzeConfig, skip=_CLI_OWN)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    common_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.analysis.analyze import analyze
    from midblock.resources import run_with_batch

    if not args.out:
        raise MidblockError("analyze needs --out DIR")
    if not args.base:
        raise MidblockError("analyze needs --base SPEC", hint="e.g. --base smollm2-135m")
    cfg = AnalyzeConfig(**config_kwargs(args, AnalyzeConfig, skip=_CLI_OWN), seed=args.seed)
    # out of memory: a one-line message with a batch size that should fit
    res = run_with_batch(lambda bs: analyze(replace(cfg, batch_size=bs), args.out, resume=args.resume), cfg.batch_size)
    if res.get("rank", 0) != 0:
        return 0  # data-parallel worker: the main process reports and writes the outputs
    band = res["recommended_band"]
    print(f"wrote {args.out}/metrics.csv ({res['rows']} rows), results.json, report.html")
    print(f"recommended band: {band['spec']} ({band['evidence'].get('mode')})")
    if band["evidence"].get("stable_tau"):
        lo, hi = band["evidence"]["stable_tau"]
        by_tau = ", ".join(f"{r['tau']:.2f}: {r['spec']}" for r in band["evidence"]["sensitivity"])
        print(f"  the same band for tau in ({lo:.4g}, {hi:.4g}]; by tau: {by_tau}")
    for w in res["warnings"]:
        print(f"warning: {w}")
    return 0
