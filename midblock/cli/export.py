"""``midblock export``: a finished comparison's raw results in a small, committable form, and its table
re-derived from them.

``--mode raw --from COMPARE_DIR --dest DEST`` writes ``cells.jsonl`` (one line per evaluated cell of the grid)
and ``items.csv`` (one line per cell and test item) with copies of the tables and figures; ``--mode derive
--dest DEST [--baseline ARM] [--format markdown]`` recomputes the comparison's pooled rows from those two files
alone and prints them (tab-separated, or the short markdown table a report quotes); ``--mode state --from
COMPARE_DIR --dest DEST`` saves what a partly finished comparison needs to resume elsewhere; ``--mode replay
--dest DEST --arm ARM`` replays an arm against the baseline as many one-seed, small-test studies
(``replay.md``, ``replay.json``, ``replay.png`` in DEST); ``--mode across --dest DEST --other OTHER``
sets each arm's difference against the baseline beside the same arm's in another export (another model or
protocol), with an interval of the difference between the two (``across-OTHER.md`` and ``.json`` in DEST).
"""

from __future__ import annotations

import argparse

from midblock.cli import common_args
from midblock.cli.options import add_command, add_config_args, config_kwargs
from midblock.experiments.exportconfig import ExportConfig

DERIVED_COLUMNS = ("arm", "band", "lr", "n", "accuracy", "ci_low", "ci_high", "ci_covers", "diff_vs_baseline")
DERIVED_COLUMNS += ("diff_low", "diff_high", "diff_covers", "diff_p_holm", "diff_sim_low", "diff_sim_high")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", help="raw results of a comparison, or its table re-derived from them", doc=__doc__)
    add_config_args(p, ExportConfig)
    common_args(p, seed=False, out=False, models=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midblock.experiments.export import derive, export, save_state
    from midblock.experiments.table import pooled_rows

    cfg = ExportConfig(**config_kwargs(args, ExportConfig))
    if cfg.mode == "raw":
        print(export(cfg.compare_dir, cfg.dest))
    elif cfg.mode == "state":
        print(f"{save_state(cfg.compare_dir, cfg.dest, adapters=cfg.adapters)} finished cells saved to {cfg.dest}")
    elif cfg.mode == "replay":
        from midblock.experiments.replay import render, replay, write_replay

        controlled = None
        if cfg.controlled:
            parts = cfg.controlled.split(",")
            controlled = (parts[0], *(parts[1:3] if len(parts) == 3 else (cfg.arm, cfg.baseline)))
        res = replay(
            cfg.dest, cfg.arm, cfg.baseline, cfg.replay_items, cfg.draws, reported=cfg.reported, controlled=controlled
        )
        write_replay(cfg.dest, res)
        print(render(res), end="")
    elif cfg.mode == "across":
        from midblock.experiments.across import across, render, write_across

        other, *named = cfg.other.split(",")
        its_arm, its_baseline = named if len(named) == 2 else (None, None)
        arms = [cfg.arm] if cfg.arm else None
        res = across(cfg.dest, other, arms, cfg.baseline, its_baseline, [its_arm] if its_arm else None)
        write_across(cfg.dest, res)
        print(render(res), end="")
    else:  # derive: checked and computed before anything is printed
        rows = derive(cfg.dest, cfg.baseline)
        if cfg.format == "markdown":
            from midblock.experiments.export import read_export
            from midblock.reporting.compare_report import summary_markdown

            print(summary_markdown(rows, cfg.baseline or read_export(cfg.dest)[0]["baseline"]), end="")
        else:
            print_derived(pooled_rows(rows))
    return 0


def print_derived(rows: list[dict]) -> None:
    """The pooled rows, tab-separated, four decimals."""
    print("\t".join(DERIVED_COLUMNS))
    for r in rows:
        cells = (
            "" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in DERIVED_COLUMNS
        )
        print("\t".join(cells))
