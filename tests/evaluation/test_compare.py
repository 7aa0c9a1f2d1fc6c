"""compare end to end on a tiny random model: 2 methods x 2 seeds, outputs, resume, bad grids."""

import csv
import json

import pytest

from midblock.errors import MidblockError
from midblock.evaluation.compare import CompareConfig, compare, preset
from tests.conftest import run_cli

GRID = {
    "model": "random:llama-tiny",
    "task": "arith",
    "protocol": "paper",
    "eval_limit": 3,
    "max_new_tokens": 4,
    "seeds": [0, 1],
    "train": {"steps": 1, "batch_size": 2, "max_length": 512, "limit": 8, "eval_limit": 2},
    "methods": [
        {"name": "lora", "method": "lora", "rank": 4},
        {"name": "mid", "method": "midblock", "band": "seg2-4/5", "budget_baseline_rank": 4},
    ],
    "forgetting": {"data": "arith", "limit": 3, "max_length": 64},
}


def test_compare_two_methods_two_seeds_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    res = compare(GRID, out, progress=False)
    rows = res["rows"]
    assert [(r["arm"], r["seed"]) for r in rows] == [
        ("lora", 0),
        ("lora", 1),
        ("lora", "mean(2)"),
        ("mid", 0),
        ("mid", 1),
        ("mid", "mean(2)"),
    ]
    for f in ("compare.csv", "compare.md", "compare.png", "compare.json"):
        assert (out / f).stat().st_size > 0
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    table = list(csv.DictReader(open(out / "compare.csv")))
    assert len(table) == 6 and table[0]["diff_vs_baseline"] == "0.0"
    for r in rows:
        assert r["n"] == 3 and r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        assert r["trainable_params"] > 0 and r["rank_units"] == 24  # 6 blocks x r4 = 3 blocks x r8
        assert r["alpha_over_r"] == 2.0 and r["median_step_s"] > 0 and r["ppl"] > 1
        assert r["ppl_delta"] is not None
    # the two seeds trained differently (LoRA init and data order differ)
    lora = [json.loads((out / "cells" / f"lora__s{s}" / "cell.json").read_text()) for s in (0, 1)]
    assert lora[0]["train"]["final_loss"] != lora[1]["train"]["final_loss"]
    assert json.loads((out / "compare.json").read_text())["versions"]["torch"]
    # a rerun trains and evaluates nothing: every cell is finished
    import midblock.tuning.train as tt

    monkeypatch.setattr(tt, "train", lambda *a, **k: pytest.fail("a finished cell was retrained"))
    again = compare(GRID, out, progress=False)
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in rows]


def test_bad_grids_fail_before_any_work(tmp_path):
    with pytest.raises(MidblockError, match="unknown method 'dora'"):
        CompareConfig.from_dict(GRID | {"methods": [{"name": "x", "method": "dora"}]})
    with pytest.raises(MidblockError, match="unknown compare setting"):
        CompareConfig.from_dict(GRID | {"sedes": [0]})
    with pytest.raises(MidblockError, match="baseline 'nope'"):
        CompareConfig.from_dict(GRID | {"baseline": "nope"})
    with pytest.raises(MidblockError, match="unknown train setting"):
        CompareConfig.from_dict(GRID | {"train": {"stepz": 3}})
    with pytest.raises(MidblockError, match="unknown preset"):
        preset("slow")


def test_compare_cli_unknown_method_is_one_line_exit_2(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("model: random:llama-tiny\nmethods:\n  - {name: a, method: lora}\n  - {name: b, method: loar}\n")
    rc, out, err = run_cli("compare", "--config", str(grid), "--out", str(tmp_path / "o"))
    assert rc == 2 and "unknown method 'loar'" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()
    rc, out, err = run_cli("compare", "--methods", "lora,bogus", "--out", str(tmp_path / "o"))
    assert rc == 2 and "unknown method 'bogus'" in err and not (tmp_path / "o").exists()


def test_presets_are_valid_grids():
    q = CompareConfig.from_dict(preset("quick"))
    assert [c.label for c in q.cells()] == ["lora", "midblock"] and q.task == "arith"
    p = CompareConfig.from_dict(preset("paper-segments", alpha_policy="fixed"))
    labels = [c.label for c in p.cells() if c.seed == 0]
    assert labels[0] == "uniform-r64" and "mid-seg2-4" in labels and len(labels) == 11
    assert all(c.tuning["alpha_policy"] == "fixed" for c in p.cells())


@pytest.mark.slow
def test_paper_segments_preset_runs_every_layout_end_to_end(tmp_path, gsm8k_path):
    """The paper-segments grid as shipped (11 layouts + the untuned base, GSM8K, lm-eval protocol), shrunk
    only in size: tiny model, one step, one test item, a few new tokens."""
    grid = preset("paper-segments", alpha_policy="fixed")
    grid |= {
        "model": "random:llama-8l",
        "data": str(gsm8k_path),
        "eval_data": str(gsm8k_path),
        "eval_limit": 1,
        "max_new_tokens": 4,
        "seeds": [0],
        "train": grid["train"] | {"limit": 4, "batch_size": 1, "grad_accum": 1, "steps": 1},
    }
    res = compare(grid, tmp_path / "ps", progress=False)
    per_seed = [r for r in res["rows"] if r["seed"] == 0]
    labels = [r["arm"] for r in per_seed]
    assert labels[0] == "uniform-r64" and len(labels) == 11 and "seg5(last)" in labels
    assert res["rows"][0]["arm"].startswith("base")
    units = {r["arm"]: r["rank_units"] for r in per_seed}
    assert units["uniform-r64"] == 8 * 64
    # rank-unit budgets: every layout within one block's rounding of the uniform arm's 512 units
    assert all(abs(u - 512) <= 512 / 8 for u in units.values()), units
    # the paper's fixed alpha = 128: alpha/r differs between layouts with different ranks
    ratios = {r["arm"]: r["alpha_over_r"] for r in per_seed}
    assert ratios["uniform-r64"] == 2.0 and ratios["mid-seg2-4"] < 2.0
    assert all((tmp_path / "ps" / f).exists() for f in ("compare.csv", "compare.md", "compare.png"))
