"""Renamed flags (midblock/aliases.py): the new spelling in --help, the old one still accepted (hidden, one
warning line), both at once refused in one line; a grid file with old setting names runs with a warning."""

import pytest

from midblock.aliases import RenamedWarning
from midblock.cli import build_parser
from tests.conftest import run_cli


def _help(command: str) -> str:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return sub.format_help()


@pytest.mark.parametrize(
    "command, new, old",
    [
        (
            "train",
            ["--train-rows", "--eval-loss-items", "--no-labelled-head"],
            ["--limit", "--eval-limit", "--full-logits"],
        ),
        ("eval", ["--eval-items"], ["--limit"]),
        ("swap", ["--eval-items"], ["--limit"]),
        ("interpolate", ["--eval-items"], ["--limit"]),
        ("compare", ["--eval-items"], ["--eval-limit"]),
    ],
)
def test_help_shows_the_new_flags_only(command, new, old):
    text = _help(command)
    assert all(f in text for f in new), text
    assert not any(f"{f} " in text or f"{f}\n" in text or f"{f}," in text for f in old), text


@pytest.mark.parametrize(
    "argv, field, value",
    [
        (["train", "--limit", "7"], "train_rows", 7),
        (["train", "--eval-limit", "3"], "eval_loss_items", 3),
        (["train", "--full-logits"], "labelled_head", False),
        (["eval", "--limit", "5"], "eval_items", 5),
        (["swap", "--base", "b", "--variant", "v", "--segments", "2", "--limit", "4"], "eval_items", 4),
        (["compare", "--eval-limit", "9"], "eval_items", 9),
    ],
)
def test_an_old_flag_sets_the_new_field_with_one_warning(argv, field, value):
    with pytest.warns(RenamedWarning, match=f"'{argv[-1] if argv[-1].startswith('--') else argv[-2]}' is deprecated"):
        args = build_parser().parse_args([*argv, "--out", "x"])
    assert getattr(args, field) == value


def test_the_new_flags_parse_without_a_warning(recwarn):
    args = build_parser().parse_args(
        ["train", "--train-rows", "7", "--eval-loss-items", "3", "--no-labelled-head", "--out", "x"]
    )
    assert (args.train_rows, args.eval_loss_items, args.labelled_head) == (7, 3, False)
    assert not [w for w in recwarn if issubclass(w.category, RenamedWarning)]
    assert build_parser().parse_args(["train", "--out", "x"]).labelled_head is True


def test_the_command_line_prints_the_warning_as_one_line(tmp_path):
    rc, _, err = run_cli("train", "--model", "random:llama-tiny", "--limit", "0", "--out", str(tmp_path / "r"))
    assert rc == 2
    lines = err.strip().splitlines()
    assert lines[0] == "midblock: warning: midblock train: '--limit' is deprecated, use '--train-rows'"
    assert lines[1].startswith("midblock: error: train_rows must be >= 1") and len(lines) == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--limit", "5", "--train-rows", "5"],
        ["train", "--no-labelled-head", "--full-logits"],
        ["eval", "--eval-items", "2", "--limit", "2"],
    ],
)
def test_the_old_and_the_new_flag_together_is_one_line(tmp_path, argv):
    rc, _, err = run_cli(*argv, "--out", str(tmp_path / "o"))
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert "both given" in last and "is the old name of" in last and "keep only" in last


def test_a_grid_file_with_old_names_runs_and_the_flags_still_override_it(tmp_path):
    from midblock.cli.compare import grid_from_args
    from midblock.experiments.grid import CompareConfig

    grid = tmp_path / "g.yaml"
    grid.write_text(
        "model: random:llama-tiny\neval_limit: 4\ntrain: {steps: 1, limit: 8, head_at_labels: false}\n"
        "methods: [{name: a, method: lora}]\n"
    )
    with pytest.warns(RenamedWarning) as w:
        cc = CompareConfig.from_dict(grid_from_args(build_parser().parse_args(["compare", "--config", str(grid)])))
    assert (cc.eval_items, cc.train["train_rows"], cc.train["labelled_head"]) == (4, 8, False)
    assert any(f"grid file {grid}: 'eval_limit' is deprecated" in str(x.message) for x in w)
    with pytest.warns(RenamedWarning):
        args = build_parser().parse_args(["compare", "--config", str(grid), "--eval-items", "2"])
        assert CompareConfig.from_dict(grid_from_args(args)).eval_items == 2  # the flag over the file
