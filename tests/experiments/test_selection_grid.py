"""The selection-family preset: every strategy as an arm of one compare grid, end to end on a tiny model."""

from __future__ import annotations

from midblock.experiments.grid import CompareConfig, preset
from midblock.experiments.runner import compare


def test_selection_family_preset_lists_every_strategy_and_is_a_valid_grid():
    g = preset("selection-family")
    assert [m["name"] for m in g["methods"]] == [
        "uniform",
        "paper",
        "auto",
        "cka-select:0.5",
        "spectrum:50",
        "lisa:2/20",
    ]
    forms = {m["name"]: m["method"] for m in g["methods"]}
    assert forms["spectrum:50"] == forms["lisa:2/20"] == "midblock-full" and forms["cka-select:0.5"] == "midblock"
    CompareConfig.from_dict(g)


def test_a_grid_with_every_strategy_runs_end_to_end_on_a_tiny_model(tmp_path):
    g = preset("selection-family")
    methods = g["methods"] + [
        {"name": "spectrum:50:blocks", "method": "midblock-full", "band": "spectrum:50:blocks"},
        {"name": "lisa-matched", "method": "midblock-full", "band": "lisa:2/2:blocks", "budget_baseline_rank": 64},
    ]
    grid = g | {
        "model": "random:llama-tiny",
        "protocol": "paper",
        "eval_items": 2,
        "max_new_tokens": 4,
        "seeds": [0],
        "train": {"steps": 3, "batch_size": 2, "max_length": 512, "train_rows": 8, "eval_loss_items": 2},
        "methods": methods,
        "auto_analysis": {"data": "arith", "samples": 4, "max_length": 64},
        "forgetting": None,
        "include_base": False,
    }
    res = compare(grid, tmp_path / "c", progress=False)
    rows = {r["arm"]: r for r in res["rows"] if r["seed"] == 0}
    assert set(rows) == {m["name"] for m in methods}
    for r in rows.values():
        assert r["trainable_params"] > 0 and r["n"] == 2
    # LoRA arms share uniform r4 x 6 blocks' rank units; the full-parameter arms have none
    assert {rows[a]["rank_units"] for a in ("uniform", "paper", "auto", "cka-select:0.5")} == {48}
    assert rows["spectrum:50"]["rank_units"] == rows["lisa:2/20"]["rank_units"] == 0
    # which variant ran is in the table, and the blocks-only forms train fewer parameters
    assert rows["spectrum:50"]["selection"] == "spectrum:50 +emb/head"
    assert rows["spectrum:50:blocks"]["selection"] == "spectrum:50:blocks blocks only"
    assert rows["spectrum:50:blocks"]["trainable_params"] < rows["spectrum:50"]["trainable_params"]
    assert rows["lisa:2/20"]["selection"].startswith("lisa:2/20 +emb/head (depth 6/switch)")
    assert rows["cka-select:0.5"]["selection"] == "cka-select:0.5"
    # budget matching: G is the most whole blocks within all-block LoRA r64's parameters
    import json
    from pathlib import Path

    cell = next(c for c in res["cells"] if c["label"] == "lisa-matched")
    budget = json.loads((Path(cell["run_dir"]) / "train_config.json").read_text())["plan"]["budget"]
    block = rows["lisa-matched"]["trainable_params"] // int(budget["spec"].split(":")[1].split("/")[0])
    assert budget["params"] <= budget["baseline_params"] < budget["params"] + block
    assert rows["lisa-matched"]["selection"].startswith(budget["spec"])
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "spectrum:50 +emb/head" in md and "lisa:2/20" in md
