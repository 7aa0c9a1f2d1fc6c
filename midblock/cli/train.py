"""``midblock train``: fine-tune a band of blocks (or all of them) and write a loadable run directory.

A thin wrapper over midblock.tuning.train.train: every flag is a TrainConfig or MidBlockConfig field,
generated from the dataclass (its help, choices and default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args, config_kwargs
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.monitorconfig import MonitorConfig
from midblock.tuning.trainconfig import TrainConfig

_CLI_OWN = ("out", "seed", "tuning", "monitor")  # --out/--seed from common_args; tuning, monitor: groups below


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", help="Mid-Block Efficient Tuning (LoRA or full parameters on a band)", doc=__doc__)
    add_config_args(p.add_argument_group("what to train"), MidBlockConfig)
    add_config_args(p.add_argument_group("how to train"), TrainConfig, skip=_CLI_OWN)
    add_config_args(
        p.add_argument_group("per-layer monitor (monitor.jsonl; draw with midblock monitor RUN)"), MonitorConfig
    )
    common_args(p, out="required")  # the run directory
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build (and so validate) the ``TrainConfig`` of a command line."""
    tuning = MidBlockConfig(**config_kwargs(args, MidBlockConfig))
    monitor = MonitorConfig(**config_kwargs(args, MonitorConfig))
    return TrainConfig(
        **config_kwargs(args, TrainConfig, skip=_CLI_OWN), out=args.out, seed=args.seed, tuning=tuning, monitor=monitor
    )


_SUMMARY = (
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
    "selection",
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
    print(json.dumps({k: getattr(result, k) for k in _SUMMARY}, indent=2))
    if result.stopped:
        print(f"stopped early; continue with: midblock train ... --out {result.run_dir} --resume", file=sys.stderr)
        return 130
    return 0
