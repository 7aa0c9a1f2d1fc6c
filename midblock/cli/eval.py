"""``midblock eval``: score a model on gsm8k/arith under a protocol, or its loss/perplexity on a corpus."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args, config_kwargs
from midblock.evaluation.config import EVAL_TASKS, EvalConfig
from midblock.evaluation.prompts import FEWSHOT_SEED

_CLI_OWN = ("seed", "task")  # --seed from common_args (the few-shot seed here); --task also takes ppl


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "eval", help="evaluate a model (GSM8K protocols, arith, perplexity)", doc=__doc__)
    p.add_argument("--model", default="smollm2-135m", help="model spec: base, BASE+ADAPTER, BASE+DELTA, run dir...")
    p.add_argument("--task", default="gsm8k", help=", ".join(EVAL_TASKS) + ", or ppl (loss on --data) (default: gsm8k)")
    add_config_args(p, EvalConfig, skip=_CLI_OWN)
    p.add_argument("--auto-batch", action="store_true", help="on out-of-memory, halve the batch and continue")
    p.add_argument("--max-length", type=int, default=512, help="ppl: tokens per text (longer ones are cut)")
    p.add_argument("--dtype", default=None, help="fp32 (default), bf16 or fp16")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    common_args(p)
    # --seed seeds the few-shot exemplar sampler; the harness's default is 1234
    p.set_defaults(func=run, seed=FEWSHOT_SEED)


def run(args: argparse.Namespace) -> int:
    if args.task == "ppl":
        return _run_ppl(args)
    from midblock.evaluation.evaluate import evaluate, format_summary
    from midblock.resources import run_with_batch

    cfg = EvalConfig(**config_kwargs(args, EvalConfig, skip=_CLI_OWN), task=args.task, seed=args.seed)
    # Out of memory: advice with a smaller batch, or (--auto-batch) halve and go on; finished items are
    # kept in the per-item file, so a retry does not redo them.
    summary = run_with_batch(
        lambda bs: evaluate(
            args.model,
            replace(cfg, batch_size=bs),
            out=args.out,
            dtype=args.dtype,
            progress=not args.no_progress,
        ),
        args.batch_size,
        auto=args.auto_batch,
    )
    print(format_summary(summary))
    if args.out:
        print(f"per-item results: {Path(args.out) / 'items.jsonl'}; summary: {Path(args.out) / 'summary.json'}")
    return 0


def _run_ppl(args: argparse.Namespace) -> int:
    from midblock.data.general import general_texts, is_bundled
    from midblock.errors import MidblockError
    from midblock.evaluation.ppl import load_texts, token_loss
    from midblock.io import fresh_output_dir, provenance, write_json
    from midblock.models import load_model
    from midblock.models.loading import parse_spec

    if not args.data:
        raise MidblockError("--task ppl needs --data FILE (.txt or .jsonl) or general (the bundled probe)")
    if args.eval_items is not None and args.eval_items < 1:
        raise MidblockError(f"--eval-items must be >= 1, got {args.eval_items}", hint="omit it to use every text")
    if args.batch_size < 1:
        raise MidblockError(f"--batch-size must be >= 1, got {args.batch_size}")
    parse_spec(args.model)
    if is_bundled(args.data) and not Path(args.data).exists():  # the bundled probe: --data general
        texts = general_texts(args.data, args.eval_items)
    else:
        texts = load_texts(args.data, args.eval_items)
    if args.out:
        fresh_output_dir(args.out)
    model, tok = load_model(args.model, dtype=args.dtype)
    res = token_loss(
        model, tok, texts, batch_size=args.batch_size, max_length=args.max_length, progress=not args.no_progress
    )
    print(
        f"ppl on {args.data} with {args.model}: loss {res['loss']:.4f}, perplexity {res['ppl']:.3f} "
        f"({res['n_tokens']} tokens, {res['n_texts']} texts, {res['n_truncated']} cut at {args.max_length})"
    )
    if args.out:
        cfg = {
            "model": args.model,
            "task": "ppl",
            "data": args.data,
            "eval_items": args.eval_items,
            "max_length": args.max_length,
            "batch_size": args.batch_size,
        }
        write_json(
            Path(args.out) / "ppl.json",
            res | {"model": args.model, "data": args.data, "provenance": provenance(cfg, args.seed)},
        )
    return 0
