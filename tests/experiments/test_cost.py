"""``compare``'s cost estimate: the work counted from the grid, the rates measured, the hours projected."""

import json
import logging
from dataclasses import replace

import pytest

from midblock.experiments import cost
from midblock.experiments.grid import CompareConfig, preset
from midblock.experiments.runner import announce_cost, forgetting_texts
from tests.conftest import run_cli


def _grid(**over):
    grid = preset("smoke") | {"model": "random:llama-8l", "eval_items": 5, "seeds": [0, 1]}
    grid["forgetting"] = grid["forgetting"] | {"limit": 3, "max_length": 32}
    return CompareConfig.from_dict(grid | over)


def test_plan_counts_runs_steps_decodes_and_texts_per_phase():
    cc = _grid(lr_search={"lrs": [1e-3, 2e-3, 4e-3], "split": "dev", "eval_items": 7}, include_base=True)
    work = cost.plan(cc, ["a", "b", "c"])
    arms, seeds, steps = 2, 2, cc.train["steps"]
    assert work["search"] == {
        "runs": 3 * arms,
        "steps": 3 * arms * steps,
        "full_steps": 0,
        "decoded": 7 * 3 * arms,
        "forgetting_texts": 18,
    }
    # the search's run at the chosen rate is the first seed's main run: trained once, evaluated twice
    main_runs = arms * seeds - arms
    assert work["main"] == {
        "runs": main_runs,
        "steps": main_runs * steps,
        "full_steps": 0,
        "decoded": 5 * arms * seeds,
        "forgetting_texts": 3 * main_runs,
    }
    assert work["base"] == {"runs": 0, "steps": 0, "full_steps": 0, "decoded": 5, "forgetting_texts": 3}
    assert work["totals"]["steps"] == work["search"]["steps"] + work["main"]["steps"]


def test_plan_counts_full_parameter_steps_apart():
    grid = preset("smoke") | {"model": "random:llama-8l", "eval_items": 5}
    grid["methods"] = grid["methods"] + [{"name": "full", "method": "midblock-full", "band": "seg2-4/5"}]
    work = cost.plan(CompareConfig.from_dict(grid), None)
    assert work["main"]["full_steps"] == grid["train"]["steps"] and work["main"]["steps"] == 3 * grid["train"]["steps"]


def test_plan_counts_epochs_from_the_training_rows():
    cc = _grid(train={"epochs": 2, "batch_size": 4, "train_rows": 10, "lr": 1e-3})  # 20 rows / 4 per step
    assert cost.plan(cc, None)["main"]["steps"] == 4 * 5  # 2 arms x 2 seeds, 5 steps each


def test_project_multiplies_work_by_rates():
    work = {
        p: {"runs": 1, "steps": 100, "full_steps": 40, "decoded": 36, "forgetting_texts": 10}
        for p in ("search", "main", "base")
    }
    rates = {"step_s": 18.0, "full_step_s": 36.0, "decode_item_s": 100.0, "forgetting_text_s": 0.0}
    hours = cost.project(work, rates)
    assert hours["main"] == pytest.approx((60 * 18 + 40 * 36 + 3600) / 3600)
    assert hours["total"] == pytest.approx(3 * hours["main"])


def test_estimate_writes_rates_and_compare_prints_them_first(tmp_path, caplog):
    out = tmp_path / "cmp"
    flags = ["--preset", "smoke", "--model", "random:llama-8l", "--eval-items", "3", "--no-progress", "--out", str(out)]
    rc, stdout, stderr = run_cli("compare", *flags, "--estimate")
    assert rc == 0, stderr
    assert "total about" in stdout and "s per optimizer step" in stdout
    rec = json.loads((out / cost.ESTIMATE_FILE).read_text())
    assert rec["rates"]["step_s"] > 0 and rec["rates"]["decode_item_s"] > 0
    assert not (out / "cells").exists()  # an estimate runs no cell
    # the same grid built in Python (what `compare` with these flags runs): hours shown; another grid: counts only
    caplog.set_level(logging.INFO, logger="midblock.experiments.runner")
    same = CompareConfig.from_dict(preset("smoke") | {"model": "random:llama-8l", "eval_items": 3})
    work = announce_cost(same, forgetting_texts(same), out)
    assert "cost estimate:" in caplog.text and "total about" in caplog.text
    assert work == rec["work"]
    caplog.clear()  # run control (periodic checkpoints) is in no key: the estimate still holds
    announce_cost(replace(same, train=same.train | {"save_every": 10}), forgetting_texts(same), out)
    assert "total about" in caplog.text
    caplog.clear()
    announce_cost(replace(same, seeds=[0, 1]), forgetting_texts(same), out)
    assert "cost estimate:" in caplog.text and "total about" not in caplog.text
    assert "cost_estimate.json here was measured for other settings" in caplog.text
