"""``midblock compare``'s flags: every one named like a config field is generated from that field."""

from __future__ import annotations

import argparse
import dataclasses

from midblock.aliases import old_flags
from midblock.cli import build_parser
from midblock.cli.compare import grid_from_args
from midblock.experiments.grid import CompareConfig
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.trainconfig import TrainConfig


def _compare_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["compare"]


def test_no_hand_written_flag_duplicates_a_config_field():
    helps = {}
    for cls in (CompareConfig, MidBlockConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            helps.setdefault(f.name, []).append(f.metadata.get("help", ""))
    seen = 0
    for action in _compare_parser()._actions:
        # --out is every command's own output directory (common_args), not a cell's TrainConfig.out
        if action.help == argparse.SUPPRESS:  # a renamed field's old flag, hidden (midblock/aliases.py)
            assert action.option_strings == [old_flags(CompareConfig)[action.dest]]
            continue
        if action.dest in helps and action.dest != "out":
            seen += 1
            assert any(
                action.help and h and action.help.startswith(h.replace("%", "%%")) for h in helps[action.dest]
            ), f"{action.option_strings} is written by hand but duplicates the config field '{action.dest}'"
    assert seen >= 8  # the grid settings, rank, alpha policy, steps, lr, batch size


def test_method_and_training_flags_fill_the_grid_only_when_given():
    p = build_parser()
    args = p.parse_args(
        ["compare", "--methods", "lora,midblock", "--rank", "4", "--alpha-policy", "fixed", "--band", "2-3"]
        + ["--band", "seg2-4/5", "--steps", "3", "--lr", "0.01", "--batch-size", "2", "--model", "random:llama-tiny"]
        + ["--save-every", "5"]
    )
    g = grid_from_args(args)
    assert g["train"] == {"steps": 3, "lr": 0.01, "batch_size": 2, "save_every": 5}
    lora, mid = g["methods"]
    assert lora == {"name": "lora", "method": "lora", "rank": 4, "alpha_policy": "fixed"}
    assert mid["bands"] == ["2-3", "seg2-4/5"] and mid["budget_baseline_rank"] == 4
    bare = grid_from_args(p.parse_args(["compare", "--preset", "smoke"]))
    assert bare["train"]["steps"] == 4 and all(m["alpha_policy"] == "constant-ratio" for m in bare["methods"])


def test_spectrum_and_lisa_bands_from_flags_take_the_lora_form_matched_to_the_rank():
    args = build_parser().parse_args(
        ["compare", "--methods", "midblock,midblock-full", "--band", "spectrum:50", "--band", "lisa:2/20"]
    )
    lora, full = grid_from_args(args)["methods"]
    assert lora["bands"] == full["bands"] == ["spectrum:50", "lisa:2/20"]
    assert lora["budget_baseline_rank"] == 8 and "budget_baseline_rank" not in full
