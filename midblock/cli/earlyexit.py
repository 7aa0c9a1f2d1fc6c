"""``midblock early-exit``: logit lens per layer for base and variant (loss, top-1, gold-answer probability)."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command


def register(sub) -> None:
    p = add_command(sub, "early-exit", help="early exit / logit lens per layer, base vs variant", doc=__doc__)
    p.add_argument("--base", required=True, help="base model spec")
    p.add_argument("--variant", required=True, help="tuned model spec (HF dir, run dir, BASE+ADAPTER, random:...)")
    p.add_argument("--task", choices=["gsm8k", "arith", "jsonl"], help="task of the texts (default: from --data)")
    p.add_argument("--data", help="data file or directory (GSM8K directory, .jsonl)")
    p.add_argument("--split", default="test", help="split to take examples from (default test)")
    p.add_argument("--samples", type=int, default=50, help="number of examples (default 50)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per forward pass")
    p.add_argument("--max-length", type=int, default=256, help="tokens per text")
    p.add_argument("--variant-seed", type=int, help="seed of a random: variant (default --seed + 1)")
    common_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.errors import MidblockError
    from midblock.surgery.lens_runs import EarlyExitConfig, run_early_exit

    if not args.out:
        raise MidblockError("--out DIR is required")
    cfg = EarlyExitConfig(
        base=args.base,
        variant=args.variant,
        out=args.out,
        task=args.task,
        data=args.data,
        split=args.split,
        samples=args.samples,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        variant_seed=args.variant_seed,
    )
    rows = run_early_exit(cfg)
    last = [r for r in rows if r["depth"] == 1.0]
    for r in last:
        print(f"{r['model']}: final-layer loss {r['loss']:.4f}, top-1 {r['top1']:.3f}")
    print(f"see {cfg.out}/early_exit.csv and {cfg.out}/report.html")
    return 0
