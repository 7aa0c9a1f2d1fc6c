"""``midblock compare``: train and evaluate a grid (method x band x seed) and write one comparison table.

The grid comes from ``--preset`` (the presets are listed below), a YAML file (``--config``), or flags; flags
override the file, which overrides the preset. Finished cells are skipped on a rerun with the same --out; a
cell whose settings changed is computed again in a directory of its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midblock.aliases import renamed
from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args, config_kwargs
from midblock.errors import MidblockError
from midblock.experiments.grid import FORGETTING_DATA, PRESETS, CompareConfig, load_grid, preset
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.trainconfig import TrainConfig

# Grid settings that only a preset or a YAML file can express (mappings and lists of mappings); the
# flags below give the common cases (one method per name, bands, a rank, shared training settings).
_FILE_ONLY = ("methods", "train", "forgetting", "lr_search", "auto_analysis")
_METHOD_FLAGS = ("rank", "alpha_policy")  # MidBlockConfig fields given to every arm built from --methods
# TrainConfig fields shared by every cell; save_every is run control: it never enters a cell's key, so a long
# grid can checkpoint its cells periodically and still reuse the ones finished without it
_TRAIN_FLAGS = ("steps", "lr", "batch_size", "precision", "save_every")


def _csv(s: str | None, kind=str) -> list | None:
    if s is None:
        return None
    try:
        return [kind(x) for x in s.split(",") if x.strip() != ""]
    except ValueError:
        raise MidblockError(f"cannot parse '{s}' as a comma-separated list of {kind.__name__}") from None


def register(sub: argparse._SubParsersAction) -> None:
    doc = f"{__doc__}\nPresets (--preset NAME):\n{PRESETS.describe()}\n"
    p = add_command(sub, "compare", help="train and evaluate a grid of methods side by side", doc=doc)
    p.add_argument("--preset", default=None, choices=PRESETS.names(), help="a named grid (listed above)")
    p.add_argument("--config", default=None, help="YAML grid file (see docs/evaluation.md)")
    add_config_args(p.add_argument_group("grid settings"), CompareConfig, skip=_FILE_ONLY, only_given=True)
    m = p.add_argument_group("methods from flags (a YAML file can say more)")
    # shorthands that build method entries (CompareConfig.methods itself is a list of mappings: file only)
    m.add_argument(
        "--methods",
        dest="method_names",
        default=None,
        help="comma list of methods (lora, midblock, midblock-full, full...), one arm each",
    )
    # the method entries' `bands` list (one arm per band), not MidBlockConfig.band (one band per arm)
    m.add_argument(
        "--band", dest="bands", action="append", default=None, help="band for band methods (repeat for several)"
    )
    # the arms' settings are MidBlockConfig's and TrainConfig's own flags (band LoRA is matched to --rank)
    add_config_args(m, MidBlockConfig, only=_METHOD_FLAGS, only_given=True)
    t = p.add_argument_group("training settings shared by every cell")
    add_config_args(t, TrainConfig, only=_TRAIN_FLAGS, only_given=True)
    p.add_argument("--forgetting-data", default=None, help=f"corpus for the loss check: {FORGETTING_DATA}")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="run nothing: count the grid's work, time a few steps and decodes here, print the projected hours "
        "and write them to --out/cost_estimate.json (every later compare on that --out prints them first)",
    )
    p.add_argument(
        "--reuse-only",
        action="store_true",
        help="compute nothing: rewrite the tables from the finished cells in --out (exit 2 naming the first "
        "cell that is not finished); checks that a finished study reruns without recomputing",
    )
    common_args(p, seed=False)
    p.set_defaults(func=run)


def grid_from_args(args: argparse.Namespace) -> dict:
    """Merge preset, YAML file and flags into one grid dict (validated by CompareConfig)."""
    grid: dict = {}
    if args.preset:
        grid = preset(args.preset, getattr(args, "alpha_policy", None))
    if args.config:  # old setting names read as the new ones first, so that the flags below override them
        grid |= renamed(load_grid(args.config), CompareConfig, label=f"grid file {args.config}")
    grid |= config_kwargs(args, CompareConfig, skip=_FILE_ONLY)
    train = grid.get("train") or {}
    if isinstance(train, dict):  # anything else is left for CompareConfig to refuse in one line
        train = dict(train)
        train |= {k: getattr(args, k) for k in _TRAIN_FLAGS if hasattr(args, k)}
    grid["train"] = train
    if args.forgetting_data:
        fm = grid.get("forgetting") if isinstance(grid.get("forgetting"), dict) else {"max_length": 512}
        grid["forgetting"] = fm | {"data": args.forgetting_data}
    methods = _csv(args.method_names)
    if methods:
        grid["methods"] = [_method_entry(m, args) for m in methods]
    elif hasattr(args, "rank") or args.bands:
        if not grid.get("methods"):
            raise MidblockError("--rank/--band need --methods (or a preset or --config)")
    if not grid.get("methods"):
        raise MidblockError("nothing to compare", hint="pass --preset quick, --config FILE or --methods lora,midblock")
    return grid


def _method_entry(method: str, args: argparse.Namespace) -> dict:
    rank = getattr(args, "rank", 8)  # a generated flag: absent unless typed; MidBlockConfig refuses --rank 0
    e = {"name": method, "method": method, "rank": rank}
    if method in ("midblock", "midblock-full") and args.bands:
        e["bands"] = args.bands
    if method == "midblock":
        e["budget_baseline_rank"] = rank  # same rank units as all-block LoRA of this rank
    if hasattr(args, "alpha_policy"):
        e["alpha_policy"] = args.alpha_policy
    return e


def run(args: argparse.Namespace) -> int:
    from midblock.experiments.runner import compare

    if not args.out:
        raise MidblockError("compare needs --out DIR", hint="the table and every cell's run are written there")
    cc = CompareConfig.from_dict(grid_from_args(args))
    if args.estimate:
        from midblock.experiments.cost import describe
        from midblock.experiments.runner import estimate

        rec = estimate(cc, args.out, progress=not args.no_progress)
        print(describe(cc, rec["work"], rec["hours"]))
        rates = rec["rates"]
        print(
            f"  measured: {rates['step_s']:.2f} s per optimizer step (baseline arm), {rates['full_step_s']:.2f} s "
            f"(first full-parameter arm, or the baseline's), {rates['decode_item_s']:.2f} s "
            f"per decoded item, {rates['forgetting_text_s']:.2f} s per forgetting text"
        )
        return 0
    res = compare(cc, args.out, progress=not args.no_progress, reuse_only=args.reuse_only)
    print((Path(args.out) / "compare.md").read_text(), end="")
    print(f"table: {args.out}/compare.csv, compare.md, compare.png ({len(res['rows'])} rows)")
    return 0
