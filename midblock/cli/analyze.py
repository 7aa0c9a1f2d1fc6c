"""``midblock analyze --base SPEC --variant SPEC --data gsm8k``: where, layer by layer, a variant differs."""

from __future__ import annotations

import argparse

from midblock.cli import common_args


def register(sub) -> None:
    p = sub.add_parser(
        "analyze", help="layer-wise metrics of base vs variants, and a recommended band", description=__doc__
    )
    p.add_argument("--base", required=True, help="base model spec (smollm2-135m, random:<preset>, a directory...)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="variant model spec (a tuned model, BASE+ADAPTER, a `midblock train` run dir); repeatable",
    )
    p.add_argument(
        "--data", action="append", default=None, help="gsm8k, arith or FILE.jsonl; repeatable (default gsm8k)"
    )
    p.add_argument("--samples", type=int, default=200, help="samples per dataset (default 200)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sample; longer texts are truncated")
    p.add_argument(
        "--layers",
        default="all",
        help="layer indices 0..L to analyse (0 = embedding output); any band spec, default all",
    )
    p.add_argument(
        "--metrics", default="default", help="comma list of metric families, 'default' or 'all' (see docs/metrics.md)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    p.add_argument(
        "--device-map",
        default=None,
        help="from_pretrained device_map of checkpoints, e.g. auto (spreads a big model over GPUs and CPU)",
    )
    p.add_argument(
        "--sequential",
        "--one-model-at-a-time",
        dest="sequential",
        action="store_true",
        help="keep one model in memory: the base over all batches first (what the paired metrics need is spilled "
        "to OUT/cache/spill, deleted on success), then each variant in turn; same results as the default lockstep",
    )
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument(
        "--grad-batches", type=int, default=4, help="batches of the analysed data averaged for grad_norm (default 4)"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    common_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.analysis.analyze import analyze
    from midblock.errors import MidblockError

    if not args.out:
        raise MidblockError("analyze needs --out DIR")
    from midblock.resources import run_with_batch

    # out of memory: a one-line message with a batch size that should fit
    res = run_with_batch(
        lambda bs: analyze(
            args.base,
            variants=args.variant,
            datasets=args.data or ["gsm8k"],
            samples=args.samples,
            max_length=args.max_length,
            layers=args.layers,
            metrics=args.metrics,
            batch_size=bs,
            device=args.device,
            dtype=args.dtype,
            out=args.out,
            seed=args.seed,
            resume=args.resume,
            split=args.split,
            grad_batches=args.grad_batches,
            device_map=args.device_map,
            sequential=args.sequential,
        ),
        args.batch_size,
    )
    if res.get("rank", 0) != 0:
        return 0  # data-parallel worker: the main process reports and writes the outputs
    band = res["recommended_band"]
    print(f"wrote {args.out}/metrics.csv ({res['rows']} rows), results.json, report.html")
    print(f"recommended band: {band['spec']} ({band['evidence'].get('mode')})")
    for w in res["warnings"]:
        print(f"warning: {w}")
    return 0
