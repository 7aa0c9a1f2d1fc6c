"""A study's lanes (grid files beside its grid.yaml that run some of its cells in another process) key every
cell exactly as the main grid keys it, so the main grid reuses what a lane finished instead of training it
again. The keys are computed by the engine's own ``Keys`` with the model swapped for a random one of the same
family (the real model is an optional install; the model enters every key the same way on both sides)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from midblock.cli import build_parser
from midblock.cli.compare import grid_from_args
from midblock.experiments.grid import CompareConfig
from midblock.experiments.runner import Keys, forgetting_texts

REPO = Path(__file__).resolve().parents[2]
LANES = sorted(
    p for p in (REPO / "studies").glob("*/*.yaml") if (p.parent / "grid.yaml").exists() and p.name != "grid.yaml"
)


def _grid(path: Path) -> tuple[CompareConfig, Keys]:
    """The grid as the study's run.sh reads it (`--preset band-landscape --config FILE`), on a random model."""
    assert "--preset band-landscape" in (path.parent / "run.sh").read_text()
    args = build_parser().parse_args(["compare", "--preset", "band-landscape", "--config", str(path), "--out", "x"])
    cc = CompareConfig.from_dict(grid_from_args(args) | {"model": "random:gemma3-tiny"})
    # band auto as compare resolves it, from the base model's analysis: one band on both sides
    cc = replace(cc, methods=[m | {"band": "1"} if m.get("band") == "auto" else m for m in cc.methods])
    return cc, Keys(cc, forgetting_texts(cc))


def _key(keys: Keys, cell) -> str:
    return keys.training(cell)["key"]


@pytest.mark.parametrize("lane", LANES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_cell_of_a_lane_is_keyed_as_the_main_grid_keys_it(lane):
    main, main_keys = _grid(lane.parent / "grid.yaml")
    mine, keys = _grid(lane)
    assert keys.evaluation(mine.eval_config())["key"] == main_keys.evaluation(main.eval_config())["key"]
    if mine.lr_search:  # the lane searches an arm's rate: the same runs as the main grid's search of that arm
        assert mine.lr_search == main.lr_search
        theirs = {(c.label, c.train["lr"]): _key(main_keys, c) for c in main.search_cells()}
        for c in mine.search_cells():
            assert _key(keys, c) == theirs[(c.label, c.train["lr"])], c
    grid = {(c.label, c.seed): c for c in main.cells()}
    for c in mine.cells():  # at the lane's rate (or, where it searches, any rate: the same one on both sides)
        lr = c.train.get("lr", 1e-3)
        assert (c.label, c.seed) in grid, f"{lane.name}: {c.label} seed {c.seed} is not in grid.yaml"
        theirs = grid[(c.label, c.seed)]
        assert _key(keys, replace(c, train=c.train | {"lr": lr})) == _key(
            main_keys, replace(theirs, train=theirs.train | {"lr": lr})
        )


def test_a_changed_setting_is_told_apart():
    """The comparison above can fail: the same arm with another setting keys differently."""
    main, keys = _grid(REPO / "studies" / "gemma-base" / "grid.yaml")
    c = replace(main.cells()[0], train={"lr": 1e-3})
    assert _key(keys, c) != _key(keys, replace(c, train={"lr": 1e-3, "warmup_steps": 0}))
    assert _key(keys, c) != _key(keys, replace(c, seed=c.seed + 1))
