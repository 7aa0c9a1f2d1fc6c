"""``midblock train``: fine-tune a band of blocks (or all of them) and write a loadable run directory.

A thin wrapper over :func:`midblock.tuning.train.train`; every flag maps onto a ``TrainConfig`` or
``MidBlockConfig`` field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from midblock.cli import common_args
from midblock.tuning.config import ALPHA_POLICIES, METHODS


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="Mid-Block Efficient Tuning (LoRA or full parameters on a band)", description=__doc__
    )
    p.add_argument("--model", default="smollm2-135m", help="model spec (smollm2-135m, random:<preset>, a directory)")
    p.add_argument("--task", default=None, help="gsm8k | arith | jsonl (default: from --data, else arith)")
    p.add_argument("--data", default=None, help="data file or directory for the task")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    g = p.add_argument_group("what to train")
    g.add_argument("--method", default="midblock", choices=METHODS, help="default: midblock (LoRA on the band)")
    g.add_argument("--band", default="seg2-4/5", help="layer spec of the band, or 'auto' with --analysis DIR")
    g.add_argument("--analysis", default=None, help="analysis directory (results.json) for --band auto")
    g.add_argument("--rank", type=int, default=8, help="LoRA rank")
    g.add_argument("--alpha", type=float, default=None, help="lora_alpha (default depends on --alpha-policy)")
    g.add_argument("--alpha-policy", default="constant-ratio", choices=ALPHA_POLICIES)
    g.add_argument(
        "--match-rank-of",
        type=int,
        default=None,
        metavar="R",
        help="set the band's rank to match all-block LoRA at rank R (budget)",
    )
    g.add_argument("--budget-by", default="rank-units", choices=["rank-units", "params"])
    g.add_argument("--targets", default="attn", help="modules: attn, mlp, all-linear or names (q_proj,v_proj)")
    g.add_argument("--segments", default=None, help="segments method: per-segment ranks, e.g. -1,113,113,113,-1")
    g.add_argument("--freeze-first", type=int, default=0, help="freeze method: frozen bottom blocks")
    g.add_argument("--freeze-last", type=int, default=0, help="freeze method: frozen top blocks")
    g.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    g.add_argument("--grad-checkpointing", action="store_true", help="non-reentrant, band and above only")
    h = p.add_argument_group("how to train")
    h.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3 LoRA, 2e-5 full)")
    h.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"])
    h.add_argument("--warmup", type=int, default=0, help="warmup steps")
    h.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    h.add_argument("--epochs", type=float, default=None, help="passes over the data (default 1)")
    h.add_argument("--batch-size", type=int, default=8, help="examples per process per micro-batch")
    h.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    h.add_argument("--max-length", type=int, default=512, help="longer examples are dropped and reported")
    h.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 autocast on GPU, fp32 on CPU; bf16 also autocasts on CPU",
    )
    h.add_argument("--full-logits", action="store_true", help="apply the LM head at every position (slower)")
    h.add_argument("--weight-decay", type=float, default=0.0)
    h.add_argument("--max-grad-norm", type=float, default=1.0)
    h.add_argument("--eval-every", type=int, default=0, help="evaluation loss every N steps")
    h.add_argument("--eval-limit", type=int, default=64, help="examples in the evaluation-loss set")
    h.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps")
    h.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")
    h.add_argument(
        "--fsdp",
        action="store_true",
        help="shard parameters with FSDP across the processes of torchrun / accelerate launch "
        "(automatic under an accelerate FSDP config)",
    )
    common_args(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """Build (and so validate) the ``TrainConfig`` of a command line."""
    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.trainconfig import TrainConfig

    tuning = MidBlockConfig(
        method=args.method,
        band=args.band,
        analysis=args.analysis,
        rank=args.rank,
        alpha=args.alpha,
        alpha_policy=args.alpha_policy,
        budget_baseline_rank=args.match_rank_of,
        budget_by=args.budget_by,
        target_modules=args.targets,
        segments=args.segments,
        freeze_first=args.freeze_first,
        freeze_last=args.freeze_last,
        dropout=args.dropout,
        gradient_checkpointing=args.grad_checkpointing,
    )
    return TrainConfig(
        model=args.model,
        out=args.out,
        task=args.task,
        data=args.data,
        limit=args.limit,
        tuning=tuning,
        lr=args.lr,
        schedule=args.schedule,
        warmup_steps=args.warmup,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        seed=args.seed,
        precision=args.precision,
        head_at_labels=not args.full_logits,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        eval_every=args.eval_every,
        eval_limit=args.eval_limit,
        save_every=args.save_every,
        resume=args.resume,
        progress=not args.no_progress,
        fsdp=args.fsdp,
    )


def run(args: argparse.Namespace) -> int:
    from midblock.resources import run_with_batch
    from midblock.tuning.train import train

    config = config_from_args(args)
    # Out of memory: a message with a batch size that should fit (the run can then --resume with it
    # only in a new --out, since the batch is part of the run's configuration).
    result = run_with_batch(lambda bs: train(config), config.batch_size, auto=False)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch only rank 0 reports
        return 130 if result.stopped else 0
    summary = {
        k: getattr(result, k)
        for k in (
            "run_dir",
            "method",
            "steps",
            "final_loss",
            "eval_loss",
            "median_step_s",
            "tokens_per_s",
            "trainable_params",
            "rank_units",
            "backward_depth",
            "predicted_vs_lora",
            "adapter",
            "delta",
        )
    }
    print(json.dumps(summary, indent=2))
    if result.stopped:
        print(f"stopped early; continue with: midblock train ... --out {result.run_dir} --resume", file=sys.stderr)
        return 130
    return 0
