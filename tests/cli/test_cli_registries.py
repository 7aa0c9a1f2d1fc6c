"""What the command line offers by name is what the registries hold: choices and help lists come from them."""

from __future__ import annotations

import argparse

import pytest

from midblock.analysis.config import FAMILIES
from midblock.cli import build_parser
from midblock.data.tasks import TASKS, builtin_tasks
from midblock.evaluation.config import EVAL_TASKS, PROTOCOLS
from midblock.experiments.grid import PRESETS, PROFILES
from midblock.registry import summary_of


@pytest.fixture(scope="module")
def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _option(p: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in p._actions if flag in a.option_strings)


def test_compare_offers_and_lists_every_registered_preset(commands):
    p = commands["compare"]
    assert _option(p, "--preset").choices == PRESETS.names()
    text = " ".join(p.format_help().split())
    for name, make in PRESETS.items():
        assert f"{name} {summary_of(make)}" in text, name


def test_the_task_and_protocol_options_come_from_the_registries(commands):
    assert _option(commands["demo"], "--task").choices == EVAL_TASKS.names()
    assert _option(commands["demo"], "--profile").choices == list(PROFILES)
    for cmd in ("swap", "interpolate"):
        assert _option(commands[cmd], "--task").choices == EVAL_TASKS.names(), cmd
        assert all(n in _option(commands[cmd], "--protocol").help for n in PROTOCOLS), cmd
    assert _option(commands["early-exit"], "--task").choices == TASKS.names()
    assert _option(commands["train"], "--task").help.startswith(" | ".join(TASKS))
    assert _option(commands["eval"], "--task").help.startswith(", ".join(EVAL_TASKS) + ", or ppl")
    assert _option(commands["eval"], "--protocol").help.startswith(", ".join(PROTOCOLS))
    assert _option(commands["compare"], "--eval-task").help.startswith(f"evaluation task ({' | '.join(EVAL_TASKS)})")
    assert ", ".join(builtin_tasks()) in _option(commands["compare"], "--forgetting-data").help


def test_analyze_lists_every_metric_family_and_builtin_task(commands):
    p = commands["analyze"]
    help_text = " ".join(_option(p, "--metrics").help.split())
    assert all(f in help_text for f in FAMILIES)
    assert _option(p, "--data").help.startswith(", ".join(builtin_tasks()) + " or FILE.jsonl")
