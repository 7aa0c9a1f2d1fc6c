"""``midblock compare``: train and evaluate a grid (method x band x seed) and write one comparison table.

The grid comes from ``--preset`` (quick, full, smoke, band-landscape, paper-segments), a YAML file
(``--config``), or flags; flags override the file, which overrides the preset. Finished cells are skipped
on a rerun with the same --out; a cell whose settings changed is computed again in a directory of its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args, config_kwargs
from midblock.errors import MidblockError
from midblock.experiments.grid import PRESETS, PROFILES, CompareConfig, load_grid, preset
from midblock.tuning.trainconfig import PRECISIONS, TrainConfig

_PRECISION_HELP = TrainConfig.__dataclass_fields__["precision"].metadata["help"] + " (default: the preset's)"

# Grid settings that only a preset or a YAML file can express (mappings and lists of mappings); the
# flags below give the common cases (one method per name, bands, a rank, shared training settings).
_FILE_ONLY = ("methods", "train", "forgetting", "lr_search", "auto_analysis")


def _csv(s: str | None, kind=str) -> list | None:
    if s is None:
        return None
    try:
        return [kind(x) for x in s.split(",") if x.strip() != ""]
    except ValueError:
        raise MidblockError(f"cannot parse '{s}' as a comma-separated list of {kind.__name__}") from None


def register(sub) -> None:
    p = add_command(sub, "compare", help="train and evaluate a grid of methods side by side", doc=__doc__)
    p.add_argument("--preset", default=None, choices=[*PROFILES, *PRESETS], help="a named grid")
    p.add_argument("--config", default=None, help="YAML grid file (see docs/evaluation.md)")
    add_config_args(p.add_argument_group("grid settings"), CompareConfig, skip=_FILE_ONLY, only_given=True)
    m = p.add_argument_group("methods from flags (a YAML file can say more)")
    m.add_argument("--methods", default=None, help="comma list of methods (lora, midblock, midblock-full, full...)")
    m.add_argument("--band", action="append", default=None, help="band for band methods (repeat for several)")
    m.add_argument("--rank", type=int, default=None, help="LoRA rank; band LoRA is matched to it by rank units")
    m.add_argument("--alpha-policy", default=None, help="constant-ratio (default), fixed (the paper's) or rslora")
    t = p.add_argument_group("training settings shared by every cell")
    t.add_argument("--steps", type=int, default=None, help="training steps per cell")
    t.add_argument("--lr", type=float, default=None, help="learning rate")
    t.add_argument("--batch-size", type=int, default=None, help="training batch size")
    t.add_argument("--precision", default=None, choices=PRECISIONS, help=_PRECISION_HELP)
    p.add_argument("--forgetting-data", default=None, help="corpus for the loss check: general, gsm8k, arith or a file")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common_args(p, seed=False)
    p.set_defaults(func=run)


def grid_from_args(args: argparse.Namespace) -> dict:
    """Merge preset, YAML file and flags into one grid dict (validated by CompareConfig)."""
    grid: dict = {}
    if args.preset:
        grid = preset(args.preset, args.alpha_policy or "constant-ratio")
    if args.config:
        grid |= load_grid(args.config)
    grid |= config_kwargs(args, CompareConfig, skip=_FILE_ONLY)
    train = grid.get("train") or {}
    if isinstance(train, dict):  # anything else is left for CompareConfig to refuse in one line
        train = dict(train)
        given = (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size), ("precision", args.precision))
        for key, val in given:
            if val is not None:
                train[key] = val
    grid["train"] = train
    if args.forgetting_data:
        fm = grid.get("forgetting") if isinstance(grid.get("forgetting"), dict) else {"limit": 32, "max_length": 256}
        grid["forgetting"] = fm | {"data": args.forgetting_data}
    methods = _csv(args.methods)
    if methods:
        grid["methods"] = [_method_entry(m, args) for m in methods]
    elif args.rank is not None or args.band:
        if not grid.get("methods"):
            raise MidblockError("--rank/--band need --methods (or a preset or --config)")
    if not grid.get("methods"):
        raise MidblockError("nothing to compare", hint="pass --preset quick, --config FILE or --methods lora,midblock")
    return grid


def _method_entry(method: str, args: argparse.Namespace) -> dict:
    rank = args.rank or 8
    e = {"name": method, "method": method, "rank": rank}
    if method in ("midblock", "midblock-full") and args.band:
        e["bands"] = args.band
    if method == "midblock":
        e["budget_baseline_rank"] = rank  # same rank units as all-block LoRA of this rank
    if args.alpha_policy:
        e["alpha_policy"] = args.alpha_policy
    return e


def run(args: argparse.Namespace) -> int:
    from midblock.experiments.runner import compare

    if not args.out:
        raise MidblockError("compare needs --out DIR", hint="the table and every cell's run are written there")
    cc = CompareConfig.from_dict(grid_from_args(args))
    res = compare(cc, args.out, progress=not args.no_progress)
    print((Path(args.out) / "compare.md").read_text(), end="")
    print(f"table: {args.out}/compare.csv, compare.md, compare.png ({len(res['rows'])} rows)")
    return 0
