"""The selection-family preset: LoRA and full-parameter arms in one grid, each with its own learning-rate
grid searched on the dev split; the whole preset validates, and a scaled-down copy runs end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from midblock.errors import MidblockError
from midblock.experiments.grid import LANDSCAPE_LRS, CompareConfig, preset
from midblock.experiments.runner import Keys, beyond_edge, compare, grid_edge, search_learning_rates

LORA_ARMS = ["uniform", "paper", "auto", "cka-select:0.5"]
FULL_ARMS = ["paper-full", "spectrum:60:blocks", "lisa:18/20:blocks"]


def test_selection_family_preset_has_lora_and_full_arms_each_with_a_factor_2_grid():
    g = preset("selection-family")
    methods = {m["name"]: m for m in g["methods"]}
    assert list(methods) == LORA_ARMS + FULL_ARMS
    for name in LORA_ARMS:
        m = methods[name]
        assert m["method"] == ("lora" if name == "uniform" else "midblock") and m["lrs"] == LANDSCAPE_LRS
        assert m.get("rank") == 8 or m.get("budget_baseline_rank") == 8  # the rank units of uniform r8
    assert methods["paper-full"]["band"] == "seg2-4/5"
    for name in FULL_ARMS:
        m = methods[name]
        assert m["method"] == "midblock-full" and m["lrs"] != LANDSCAPE_LRS
    for m in methods.values():
        assert all(math.isclose(b / a, 2.0) for a, b in zip(m["lrs"], m["lrs"][1:]))  # factor-2 steps
    assert g["seeds"] == [0, 1, 2] and g["eval_items"] == 400 and g["train"]["precision"] == "auto"
    assert g["forgetting"]["data"] == "general" and "lrs" not in g["lr_search"] and g["lr_search"]["extend"] == 2
    cc = CompareConfig.from_dict(g)
    assert len(cc.cells()) == 7 * 3 and len(cc.search_cells()) == 7 * 4
    assert {c.train["lr"] for c in cc.search_cells() if c.label == "lisa:18/20:blocks"} == set(
        methods["lisa:18/20:blocks"]["lrs"]
    )


def test_an_arm_grid_leaves_the_cell_keys_of_existing_grids_alone():
    """``lrs`` is the search's, not the run's: the same entry with or without it has the same cells and keys,
    so grids written before per-arm grids keep their results."""
    base = {
        "model": "random:llama-tiny",
        "eval_items": 2,
        "seeds": [0],
        "train": {"steps": 1, "train_rows": 4},
        "lr_search": {"lrs": [1e-3, 2e-3], "split": "dev", "eval_items": 2},
        "methods": [{"name": "lora", "method": "lora", "rank": 2}],
    }
    own = base | {"methods": [{"name": "lora", "method": "lora", "rank": 2, "lrs": [1e-3, 2e-3]}]}
    a, b = CompareConfig.from_dict(base), CompareConfig.from_dict(own)
    assert a.cells() == b.cells() and a.search_cells() == b.search_cells()
    keys = Keys(a, None)
    assert [keys.training(c)["key"] for c in a.search_cells()] == [keys.training(c)["key"] for c in b.search_cells()]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lr_search": None}, "has 'lrs' but the grid has no lr_search"),
        ({"methods": [{"name": "a", "method": "lora", "lrs": [1e-3, 1e-3]}]}, "lists a rate twice"),
        ({"methods": [{"name": "a", "method": "lora", "lrs": []}]}, "non-empty list"),
        ({"methods": [{"name": "a", "method": "lora", "lrs": [1e-3]}, {"name": "b", "method": "lora"}]}, "'b' has no"),
    ],
)
def test_bad_arm_grids_are_one_line_errors(change, match):
    grid = {
        "model": "random:llama-tiny",
        "lr_search": {"split": "dev", "eval_items": 2},
        "methods": [{"name": "a", "method": "lora", "lrs": [1e-3]}],
    }
    with pytest.raises(MidblockError, match=match):
        CompareConfig.from_dict(grid | change)


def test_grid_edge():
    assert grid_edge(1e-3, [1e-3, 2e-3, 4e-3]) == "lowest"
    assert grid_edge(4e-3, [1e-3, 2e-3, 4e-3]) == "highest"
    assert grid_edge(2e-3, [1e-3, 2e-3, 4e-3]) is None and grid_edge(1e-3, [1e-3]) is None


def test_beyond_edge_steps_out_by_the_grids_own_ratio():
    assert beyond_edge(8e-3, [1e-3, 2e-3, 4e-3, 8e-3]) == 0.016
    assert beyond_edge(1e-3, [1e-3, 2e-3, 4e-3, 8e-3]) == 0.0005
    assert beyond_edge(5e-5, [4e-4, 2e-4, 1e-4, 5e-5]) == 2.5e-5  # order does not matter
    assert beyond_edge(2e-3, [1e-3, 2e-3, 4e-3]) is None and beyond_edge(1e-3, [1e-3]) is None


def _fake_search(monkeypatch, peak: float, extend: int, lrs=(1e-3, 2e-3, 4e-3, 8e-3)):
    """search_learning_rates with run_cell replaced: dev accuracy rises towards ``peak`` (in log2 steps) and
    falls past it, on 16 items; returns (tried rates in order, records, chosen rate)."""
    import midblock.experiments.runner as runner

    def fake_run_cell(cc, keys, cell, out, ecfg, texts, ctl):
        lr = cell.train["lr"]
        right = max(0, 16 - 3 * round(abs(math.log2(lr / peak))))
        items = [{"index": i, "scores": {cc.metric: {"correct": i < right}}} for i in range(16)]
        return {"label": cell.label, "seed": cell.seed, "items": items, "run_dir": "-", "eval_dir": "-"}

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    cc = CompareConfig.from_dict(
        {
            "model": "random:llama-tiny",
            "seeds": [0],
            "lr_search": {"split": "dev", "eval_items": 16, "extend": extend},
            "methods": [{"name": "a", "method": "lora", "lrs": list(lrs)}],
        }
    )
    new, recs = search_learning_rates(cc, keys=None, out=Path("."), ctl=runner.RunControl(progress=False))
    return [r["lr"] for r in recs], recs, new.methods[0]["train"]["lr"]


@pytest.mark.parametrize(
    ("peak", "extend", "tried", "chosen", "edge"),
    [
        (4e-3, 2, [1e-3, 2e-3, 4e-3, 8e-3], 4e-3, None),  # inside: nothing added
        (0.016, 2, [1e-3, 2e-3, 4e-3, 8e-3, 0.016, 0.032], 0.016, None),  # one step out, then inside
        (0.064, 2, [1e-3, 2e-3, 4e-3, 8e-3, 0.016, 0.032], 0.032, "highest"),  # still at the end: flagged
        (2.5e-4, 2, [1e-3, 2e-3, 4e-3, 8e-3, 5e-4, 2.5e-4], 2.5e-4, "lowest"),  # downwards too
        (0.016, 0, [1e-3, 2e-3, 4e-3, 8e-3], 8e-3, "highest"),  # extend 0: the grid as given, flagged
    ],
)
def test_a_best_rate_at_an_end_extends_the_grid_until_it_is_inside(
    monkeypatch, tmp_path, caplog, peak, extend, tried, chosen, edge
):
    with caplog.at_level("INFO", logger="midblock.experiments.runner"):
        got, recs, lr = _fake_search(monkeypatch, peak, extend)
    assert got == tried and lr == chosen
    # each run says where the search stands: its number of the grid's planned runs, "+" past them
    said = [m for m in caplog.messages if m.startswith("learning-rate search ") and " at lr " in m]
    assert [m.split(":")[0] for m in said] == [
        f"learning-rate search {k}/4" + ("+" if k > 4 else "") for k in range(1, len(tried) + 1)
    ]
    assert [r["extended"] for r in recs] == [False] * 4 + [True] * (len(tried) - 4)
    assert [(r["lr"], r["edge"]) for r in recs if r["chosen"]] == [(chosen, edge)]
    from midblock.experiments.runner import _search_row
    from midblock.reporting.compare_report import write_lr_search

    write_lr_search([_search_row(r) for r in recs], tmp_path, "original")
    md = (tmp_path / "lr_search.md").read_text()
    assert md.count("(extended)") == len(tried) - 4 + (len(tried) > 4)  # the rows, and the legend once


def test_bad_extend_is_a_one_line_error():
    grid = {
        "model": "random:llama-tiny",
        "lr_search": {"lrs": [1e-3, 2e-3], "extend": -1},
        "methods": [{"method": "lora"}],
    }
    with pytest.raises(MidblockError, match="'lr_search.extend' must be an integer >= 0"):
        CompareConfig.from_dict(grid)


def test_the_selection_family_scaled_down_runs_end_to_end(tmp_path):
    """The preset as shipped, shrunk in size: a 6-block model (the paper's band: blocks 1-3, so spectrum:60
    selects 3 matrices per type and LISA trains 3 blocks, switching every 2 steps), 3 steps, two rates per
    arm, one seed, one test item (the LoRA forms of Spectrum and LISA: tests/selection/test_lora_forms.py)."""
    g = preset("selection-family")
    methods = []
    for m in g["methods"]:
        m = dict(m)
        m["lrs"] = [1e-3, 2e-3] if m["method"] != "midblock-full" else [1e-5, 2e-5]
        if m["name"].startswith("lisa"):
            m["band"] = "lisa:3/2:blocks"
        methods.append(m)
    grid = g | {
        "model": "random:llama-tiny",
        "eval_items": 1,
        "max_new_tokens": 2,
        "seeds": [0],
        "train": g["train"] | {"steps": 3, "batch_size": 1, "train_rows": 4, "eval_loss_items": 0, "warmup_steps": 1},
        "lr_search": g["lr_search"] | {"eval_items": 1, "extend": 0},  # extension: the tests above
        "methods": methods,
        "auto_analysis": {"data": "arith", "samples": 4, "max_length": 64},
        "forgetting": None,
        "include_base": False,
    }
    res = compare(grid, tmp_path / "c", progress=False)
    rows = {r["arm"]: r for r in res["rows"] if r["seed"] == 0}
    assert set(rows) == {m["name"] for m in methods}
    # every arm searched its own grid and trains at a rate from it
    for m in methods:
        tried = [r["lr"] for r in res["lr_search"] if r["arm"] == m["name"]]
        assert tried == m["lrs"] and rows[m["name"]]["lr"] in m["lrs"]
        chosen = [r for r in res["lr_search"] if r["arm"] == m["name"] and r["chosen"]]
        assert len(chosen) == 1 and chosen[0]["edge"] == grid_edge(chosen[0]["lr"], m["lrs"])
    # LoRA arms: the rank units of uniform r8 on 6 blocks
    assert {rows[a]["rank_units"] for a in LORA_ARMS} == {48}
    # full arms: the paper band's parameters (Spectrum: less the band's norm weights), no rank units
    full, spec, lisa = (rows[a] for a in ("paper-full", "spectrum:60:blocks", "lisa:18/20:blocks"))
    assert full["trainable_params"] == lisa["trainable_params"]
    assert 0 < full["trainable_params"] - spec["trainable_params"] < 0.01 * full["trainable_params"]
    assert full["rank_units"] is spec["rank_units"] is lisa["rank_units"] is None
    assert spec["selection"] == "spectrum:60:blocks"  # the spec says ':blocks': no "blocks only" after it
    assert lisa["selection"].startswith("lisa:3/2:blocks (depth")
    md = (tmp_path / "c" / "lr_search.md").read_text()
    assert md.count("| yes |") == len(methods)
    edges = [r for r in res["lr_search"] if r["chosen"] and r["edge"]]
    assert ("at the edge of its arm's grid" in (tmp_path / "c" / "compare.md").read_text()) == bool(edges)
    cell = next(c for c in res["cells"] if c["label"] == "lisa:18/20:blocks")
    sel = json.loads((Path(cell["run_dir"]) / "train_config.json").read_text())["plan"]["selection"]
    assert sel["schedule"] == {"gamma": 3, "period": 2, "seed": 0, "train_ends": False, "adapters_only": False}
