"""``midblock swap``: transplant a variant's blocks into the base (or the reverse), measure each configuration."""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command


def add_surgery_args(p: argparse.ArgumentParser) -> None:
    """Arguments swap and interpolate share: the pair of models and how each configuration is measured."""
    p.add_argument("--base", required=True, help="base model spec (smollm2-135m, random:<preset>, a directory...)")
    p.add_argument(
        "--variant", required=True, help="tuned model: HF directory, `midblock train` run, BASE+ADAPTER, random:..."
    )
    p.add_argument("--task", choices=["arith", "gsm8k"], help="measure task accuracy (Wilson 95%% intervals)")
    p.add_argument("--protocol", default="original", help="evaluation protocol: original, paper or lm-eval")
    p.add_argument("--limit", type=int, default=20, help="test items per configuration (default 20)")
    p.add_argument("--data", help="GSM8K directory or file for --task gsm8k (default $MIDBLOCK_GSM8K)")
    p.add_argument("--corpus", help="text (.txt, blank-line separated) or .jsonl corpus for token loss/perplexity")
    p.add_argument("--corpus-limit", type=int, help="use at most this many corpus texts")
    p.add_argument("--batch-size", type=int, default=8, help="batch size for generation and scoring")
    p.add_argument("--max-length", type=int, default=512, help="tokens per corpus text")
    p.add_argument("--max-new-tokens", type=int, help="override the protocol's generation limit")
    p.add_argument("--variant-seed", type=int, help="seed of a random: variant (default --seed + 1)")


def surgery_kwargs(args: argparse.Namespace) -> dict:
    from midblock.errors import MidblockError

    if not args.out:
        raise MidblockError("--out DIR is required", hint="the directory that gets the tables, plots and report")
    return dict(
        base=args.base,
        variant=args.variant,
        out=args.out,
        task=args.task,
        protocol=args.protocol,
        limit=args.limit,
        data=args.data,
        corpus=args.corpus,
        corpus_limit=args.corpus_limit,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        variant_seed=args.variant_seed,
    )


def register(sub) -> None:
    p = add_command(sub, "swap", help="swap layer blocks between base and variant, measure each", doc=__doc__)
    add_surgery_args(p)
    grid = p.add_mutually_exclusive_group(required=True)
    grid.add_argument("--segments", type=int, help="one configuration per segment of K (the paper's floor rule)")
    grid.add_argument("--bands", nargs="+", metavar="SPEC", help="one configuration per layer spec (6-23, seg2-4/5...)")
    p.add_argument("--with-head", action="store_true", help="swap the final norm and the LM head too")
    p.add_argument("--direction", default="into-base", choices=["into-base", "into-variant"], help="which way")
    common_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.surgery.runs import SwapConfig, run_swap

    cfg = SwapConfig(
        **surgery_kwargs(args),
        segments=args.segments,
        bands=args.bands,
        with_head=args.with_head,
        direction=args.direction,
    )
    rows = run_swap(cfg)
    print(f"{len(rows)} configurations measured; see {cfg.out}/swap.csv and {cfg.out}/report.html")
    return 0
