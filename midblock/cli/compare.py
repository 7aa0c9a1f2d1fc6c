"""``midblock compare``: train and evaluate a grid (method x band x seed) and write one comparison table.

The grid comes from ``--preset`` (quick, paper-segments), a YAML file (``--config``), or flags; flags
override the file, which overrides the preset. Finished cells are skipped on a rerun with the same --out.
"""

from __future__ import annotations

import argparse

from midblock.cli import common_args


def _csv(s: str | None, kind=str) -> list | None:
    if s is None:
        return None
    from midblock.errors import MidblockError

    try:
        return [kind(x) for x in s.split(",") if x.strip() != ""]
    except ValueError:
        raise MidblockError(f"cannot parse '{s}' as a comma-separated list of {kind.__name__}") from None


def register(sub) -> None:
    p = sub.add_parser("compare", help="train and evaluate a grid of methods side by side", description=__doc__)
    p.add_argument(
        "--preset",
        default=None,
        help="quick (the demo's two arms, ~10 min CPU), full, smoke, band-landscape (~3 h CPU) or paper-segments",
    )
    p.add_argument("--config", default=None, help="YAML grid file (see docs/evaluation.md)")
    p.add_argument("--model", default=None, help="base model spec")
    p.add_argument("--task", default=None, help="training task: gsm8k, arith or jsonl")
    p.add_argument("--data", default=None, help="training data file/directory")
    p.add_argument("--methods", default=None, help="comma list of methods (lora, midblock, midblock-full, full...)")
    p.add_argument("--band", action="append", default=None, help="band for band methods (repeat for several)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank; band LoRA is matched to it by rank units")
    p.add_argument("--alpha-policy", default=None, help="constant-ratio (default), fixed (the paper's) or rslora")
    p.add_argument("--seeds", default=None, help="comma list of training seeds, e.g. 0,1,2")
    p.add_argument("--baseline", default=None, help="arm the others are compared with (default: first)")
    p.add_argument("--steps", type=int, default=None, help="training steps per cell")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size")
    p.add_argument("--eval-task", default=None, help="evaluation task: gsm8k or arith")
    p.add_argument("--protocol", default=None, help="evaluation protocol: lm-eval, paper or original")
    p.add_argument("--eval-limit", type=int, default=None, help="test items per evaluation")
    p.add_argument("--forgetting-data", default=None, help="corpus for the loss check: general, gsm8k, arith or a file")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common_args(p, seed=False)
    p.set_defaults(func=run)


def grid_from_args(args: argparse.Namespace) -> dict:
    """Merge preset, YAML file and flags into one grid dict (validated by CompareConfig)."""
    from midblock.errors import MidblockError
    from midblock.experiments.grid import load_grid, preset

    grid: dict = {}
    if args.preset:
        grid = preset(args.preset, args.alpha_policy or "constant-ratio")
    if args.config:
        grid |= load_grid(args.config)
    for key, val in (
        ("model", args.model),
        ("task", args.task),
        ("data", args.data),
        ("baseline", args.baseline),
        ("eval_task", args.eval_task),
        ("protocol", args.protocol),
        ("eval_limit", args.eval_limit),
    ):
        if val is not None:
            grid[key] = val
    seeds = _csv(args.seeds, int)
    if seeds is not None:
        grid["seeds"] = seeds
    train = grid.get("train") or {}
    if isinstance(train, dict):  # anything else is left for CompareConfig to refuse in one line
        train = dict(train)
        for key, val in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size)):
            if val is not None:
                train[key] = val
    grid["train"] = train
    if args.forgetting_data:
        grid["forgetting"] = (grid.get("forgetting") or {"limit": 32, "max_length": 256}) | {
            "data": args.forgetting_data
        }
    methods = _csv(args.methods)
    if methods:
        rank = args.rank or 8
        entries = []
        for m in methods:
            e = {"name": m, "method": m, "rank": rank}
            if m in ("midblock", "midblock-full") and args.band:
                e["bands"] = args.band
            if m == "midblock":
                e["budget_baseline_rank"] = rank  # same rank units as all-block LoRA of this rank
            if args.alpha_policy:
                e["alpha_policy"] = args.alpha_policy
            entries.append(e)
        grid["methods"] = entries
    elif args.rank is not None or args.band:
        if not grid.get("methods"):
            raise MidblockError("--rank/--band need --methods (or a preset or --config)")
    if not grid.get("methods"):
        raise MidblockError("nothing to compare", hint="pass --preset quick, --config FILE or --methods lora,midblock")
    return grid


def run(args: argparse.Namespace) -> int:
    from midblock.errors import MidblockError
    from midblock.experiments.grid import CompareConfig
    from midblock.experiments.runner import compare

    if not args.out:
        raise MidblockError("compare needs --out DIR", hint="the table and every cell's run are written there")
    cc = CompareConfig.from_dict(grid_from_args(args))
    res = compare(cc, args.out, progress=not args.no_progress)
    from pathlib import Path

    print((Path(args.out) / "compare.md").read_text(), end="")
    print(f"table: {args.out}/compare.csv, compare.md, compare.png ({len(res['rows'])} rows)")
    return 0
