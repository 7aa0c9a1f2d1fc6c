"""compare end to end on a tiny random model: 2 methods x 2 seeds, outputs, resume, bad grids."""

import csv
import json
from pathlib import Path

import pytest

from midblock.errors import MidblockError
from midblock.experiments.grid import CompareConfig, preset
from midblock.experiments.runner import compare
from tests.conftest import run_cli

GRID = {
    "model": "random:llama-tiny",
    "task": "arith",
    "protocol": "paper",
    "eval_items": 3,
    "max_new_tokens": 4,
    "seeds": [0, 1],
    "train": {"steps": 1, "batch_size": 2, "max_length": 512, "train_rows": 8, "eval_loss_items": 2},
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
    assert len(table) == 6 and table[0]["diff_vs_baseline"] == ""  # the baseline's own difference: empty
    assert (
        table[5]["ci_covers"] == table[5]["diff_covers"] == "seeds x items" and len(table[5]["seed_diffs"].split()) == 2
    )
    assert all(r["precision"] == "fp32" for r in table)  # auto, resolved (the suite pins auto to fp32)
    md = [line.split("|") for line in (out / "compare.md").read_text().splitlines() if line.startswith("| lora ")]
    assert len(md) == 3 and all(cells[6].strip() == "" for cells in md)  # no difference of lora against itself
    assert "Training precision: fp32." in (out / "compare.md").read_text()
    for r in rows:
        assert r["n"] == 3 and r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        assert r["trainable_params"] > 0 and r["rank_units"] == 24  # 6 blocks x r4 = 3 blocks x r8
        assert r["alpha_over_r"] == 2.0 and r["median_step_s"] > 0 and r["ppl"] > 1
        assert r["ppl_delta"] is not None
    # the two seeds trained differently (LoRA init and data order differ)
    lora = [json.loads(next((out / "cells").glob(f"lora__s{s}-*/eval-*/cell.json")).read_text()) for s in (0, 1)]
    assert lora[0]["train"]["final_loss"] != lora[1]["train"]["final_loss"]
    assert json.loads((out / "compare.json").read_text())["versions"]["torch"]
    # a rerun trains and evaluates nothing: every cell is finished
    import midblock.experiments.runner as runner

    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a finished cell was retrained"))
    tables = {f: (out / f).read_bytes() for f in ("compare.md", "compare.csv")}
    again = compare(GRID, out, progress=False)
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in rows]
    assert {f: (out / f).read_bytes() for f in tables} == tables  # ... and writes the same tables


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
        "eval_items": 1,
        "max_new_tokens": 4,
        "seeds": [0],
        "train": grid["train"] | {"train_rows": 4, "batch_size": 1, "grad_accum": 1, "steps": 1},
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


SMALL = {
    "model": "random:llama-tiny",
    "task": "arith",
    "protocol": "original",
    "eval_items": 2,
    "max_new_tokens": 2,
    "seeds": [0],
    "train": {"steps": 1, "batch_size": 2, "max_length": 256, "train_rows": 4, "eval_loss_items": 0},
    "methods": [{"name": "lora", "method": "lora", "rank": 2}],
}


def _cells(out):
    cells = out / "cells"
    return {str(p.parent.relative_to(cells)): json.loads(p.read_text()) for p in cells.glob("*/eval-*/cell.json")}


def _gsm_dir(path, answer_of_2="3"):
    path.mkdir(exist_ok=True)
    rows = [{"question": f"What is {i} plus 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(6)]
    rows[2]["answer"] = f"2 + 1 = {answer_of_2}\n#### {answer_of_2}"
    for split in ("train", "test"):
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"model": "random:qwen2-tiny"}, id="model"),
        pytest.param({"train": SMALL["train"] | {"steps": 2}}, id="steps"),
        pytest.param({"max_new_tokens": 3}, id="max_new_tokens"),
        pytest.param({"seeds": [1]}, id="seed"),
        pytest.param({"methods": [{"name": "lora", "method": "lora", "rank": 4}]}, id="rank"),
        pytest.param("data", id="data-file-contents"),
    ],
)
def test_a_rerun_with_one_changed_setting_recomputes(tmp_path, change):
    """The finding: a rerun with --steps 5 reported the 1-step cell. Now each setting keys the cell."""
    out = tmp_path / "c"
    grid = dict(SMALL)
    if change == "data":  # the same file name, other contents
        grid |= {"task": "gsm8k", "data": _gsm_dir(tmp_path / "d"), "eval_data": str(tmp_path / "d")}
        compare(grid, out, progress=False)
        _gsm_dir(tmp_path / "d", answer_of_2="4")
    else:
        compare(grid, out, progress=False)
        grid |= change
    first = _cells(out)
    again = compare(grid, out, progress=False)
    new = {k: v for k, v in _cells(out).items() if k not in first}
    assert len(new) == 1, "the changed grid reused a stored cell"
    (cell,) = new.values()
    assert again["cells"][0]["fingerprint"] == cell["fingerprint"]
    if change != "data" and "train" in change:
        assert cell["train"]["steps"] == 2 and again["rows"][0]["n"] == 2
    if change == {"max_new_tokens": 3}:  # only the evaluation changed: the same training run, evaluated again
        assert cell["run_dir"] == next(iter(first.values()))["run_dir"]
    else:
        assert cell["run_dir"] != next(iter(first.values()))["run_dir"]


def test_arms_whose_names_clean_to_the_same_text_get_their_own_cells(tmp_path):
    """The finding: 'a b' and 'a/b' shared one directory; one arm never trained."""
    grid = SMALL | {
        "methods": [{"name": "a b", "method": "lora", "rank": 2}, {"name": "a/b", "method": "lora", "rank": 4}]
    }
    res = compare(grid, tmp_path / "c", progress=False)
    cells = _cells(tmp_path / "c")
    assert len(cells) == 2 and all(k.startswith("a_b__s0-") for k in cells)
    assert sorted(c["label"] for c in cells.values()) == ["a b", "a/b"]
    ranks = {r["arm"]: r["rank_units"] for r in res["rows"] if r["seed"] == "mean(1)"}
    assert ranks == {"a b": 6 * 2, "a/b": 6 * 4}  # 6 blocks x r2 and x r4: both arms trained


@pytest.mark.parametrize(
    "yaml_text,match",
    [
        ("methods: 5\n", "'methods' must be a non-empty list"),
        ("seeds: abc\nmethods: [{name: a, method: lora}]\n", "'seeds' must be a non-empty list of integers"),
        ("train: 3\nmethods: [{name: a, method: lora}]\n", "'train' must be a mapping"),
        ("eval_items: many\nmethods: [{name: a, method: lora}]\n", "'eval_items' must be an integer"),
        ("methods: [{name: a, method: midblock, bands: 6-23}]\n", "'bands' of method entry 'a' must be a list"),
    ],
)
def test_grid_files_with_wrong_types_fail_in_one_line_leaving_nothing(tmp_path, yaml_text, match):
    grid = tmp_path / "g.yaml"
    grid.write_text("model: random:llama-tiny\n" + yaml_text)
    rc, out, err = run_cli("compare", "--config", str(grid), "--out", str(tmp_path / "o"))
    assert rc == 2 and match in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_learning_rate_search_on_dev_and_auto_band_from_the_base(tmp_path):
    """Each arm's rate is chosen on the dev split (first seed), then used for every seed; band 'auto' is
    resolved from an analysis of the base alone; the search's run at the chosen rate is the first seed's."""
    grid = SMALL | {
        "seeds": [0, 1],
        "lr_search": {"lrs": [1e-2, 1e-3], "split": "dev", "eval_items": 2},
        "auto_analysis": {"data": "arith", "samples": 4, "max_length": 64},
        "methods": [
            {"name": "lora", "method": "lora", "rank": 2},
            {"name": "auto", "method": "midblock", "band": "auto", "budget_baseline_rank": 2},
        ],
    }
    res = compare(grid, tmp_path / "c", progress=False)
    search = res["lr_search"]
    assert [(r["arm"], r["lr"]) for r in search] == [("lora", 1e-2), ("lora", 1e-3), ("auto", 1e-2), ("auto", 1e-3)]
    for arm in ("lora", "auto"):
        rows = [r for r in search if r["arm"] == arm]
        (chosen,) = [r for r in rows if r["chosen"]]
        assert chosen["dev_accuracy"] == max(r["dev_accuracy"] for r in rows)
        cells = [c for c in res["cells"] if c["label"] == arm]
        assert all(c["lr"] == chosen["lr"] for c in cells)
        assert next(c for c in cells if c["seed"] == 0)["run_dir"] == chosen["run_dir"]  # trained once
    assert (tmp_path / "c" / "lr_search.md").read_text().count("| yes |") == 2
    spec = res["auto_band"]["spec"]
    from midblock.layers import resolve_layers

    auto_cell = next(c for c in res["cells"] if c["label"] == "auto")
    assert auto_cell["band"] == resolve_layers(spec, 6) and auto_cell["tuning"]["band"] == spec
    # the search scored the dev split, which shares no question with the test split
    dev = {json.loads(line)["prompt"] for line in _items(tmp_path / "c", search[0]["run_dir"])}
    test = {it["prompt"] for it in res["cells"][0]["items"]}
    assert dev and not dev & test


def _items(out, run_dir):
    """Prompts of the dev-split evaluations of one training run."""
    from pathlib import Path

    prompts = []
    for fp in Path(run_dir).parent.glob("eval-*/fingerprint.json"):
        if json.loads(fp.read_text())["evaluation"]["split"] == "dev":
            prompts += (fp.parent / "eval" / "items.jsonl").read_text().splitlines()
    return prompts


def test_lr_search_on_the_test_split_is_refused():
    with pytest.raises(MidblockError, match="lr_search on the test split"):
        CompareConfig.from_dict(SMALL | {"lr_search": {"lrs": [1e-3], "split": "test"}})


def test_band_auto_is_chosen_on_the_train_split_and_its_analysis_is_keyed_on_its_settings(tmp_path, monkeypatch):
    """The base analysis behind band 'auto' reads the tuning data's train split (never test); a rerun with
    the same settings reuses it without measuring again, and a changed setting analyses anew elsewhere."""
    import midblock.analysis.analyze as A

    grid = SMALL | {
        "auto_analysis": {"data": "arith", "samples": 4, "max_length": 64},
        "methods": [{"name": "auto", "method": "midblock", "band": "auto", "budget_baseline_rank": 2}],
    }
    first = compare(grid, tmp_path / "c", progress=False)
    (adir,) = (tmp_path / "c").glob("analysis-base-*")
    assert json.loads((adir / "results.json").read_text())["config"]["split"] == "train"
    monkeypatch.setattr(A, "_run_lockstep", lambda *a, **k: pytest.fail("a finished analysis was measured again"))
    assert compare(grid, tmp_path / "c", progress=False)["auto_band"] == first["auto_band"]
    monkeypatch.undo()
    grid["auto_analysis"] = grid["auto_analysis"] | {"samples": 6}
    with pytest.raises(MidblockError, match="--reuse-only: the base analysis behind band 'auto'"):
        compare(grid, tmp_path / "c", progress=False, reuse_only=True)
    assert len(list((tmp_path / "c").glob("analysis-base-*"))) == 1
    compare(grid, tmp_path / "c", progress=False)
    assert len(list((tmp_path / "c").glob("analysis-base-*"))) == 2
    with pytest.raises(MidblockError, match="'auto_analysis.split' must be train or dev"):
        CompareConfig.from_dict(grid | {"auto_analysis": {"data": "arith", "split": "test"}})


def test_exported_raw_results_rederive_the_table(tmp_path):
    from midblock.experiments.export import derive, export, main

    grid = SMALL | {
        "seeds": [0, 1],
        "include_base": True,
        "forgetting": {"data": "general", "limit": 3, "max_length": 32},
        "methods": [
            {"name": "uniform", "method": "lora", "rank": 2},
            {"name": "paper", "method": "midblock", "band": "seg2-4/5", "budget_baseline_rank": 2},
        ],
    }
    res = compare(grid, tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "landscape.png").read_bytes()[:4] == b"\x89PNG"
    dest = export(tmp_path / "c", tmp_path / "raw")
    assert {p.name for p in dest.iterdir()} >= {"cells.jsonl", "items.csv", "compare.md", "landscape.png", "compute.md"}
    # where the cells ran: this machine, every cell (2 arms x 2 seeds + the base), its precision and threads
    import torch

    from midblock.tuning.precision import cpu_capability, resolve_precision

    exported = [json.loads(line) for line in (dest / "cells.jsonl").read_text().splitlines()]
    assert {c["computed"]["cpu"] for c in exported} == {cpu_capability()["model"]}
    assert {c["computed"]["torch_threads"] for c in exported} == {torch.get_num_threads()}
    assert {c["computed"]["precision"] for c in exported if c["phase"] != "base"} == {resolve_precision("auto")}
    ledger = (dest / "compute.md").read_text()
    assert "| total | | | | | 5 |" in ledger
    # each training's logged step seconds (every segment; here one): within its wall time, which adds set-up
    trained = [c["train"] for c in exported if c["train"]]
    assert len(trained) == 4 and all(0 < t["logged_step_s"] <= t["wall_s"] for t in trained)
    again = derive(dest)
    keys = ("arm", "seed", "band", "lr", "n", "accuracy", "ci_low", "ci_high", "seed_sd")
    keys += ("diff_vs_baseline", "diff_low", "diff_high", "ppl", "ppl_change_pct", "rank_units")
    assert [{k: r.get(k) for k in keys} for r in again] == [{k: r.get(k) for k in keys} for r in res["rows"]]
    assert main(["derive", str(dest)]) == 0
    # against another baseline: the paired differences are taken against that arm, the accuracies unchanged
    # make the arms differ (every uniform answer right), then take the differences against paper instead
    items = (dest / "items.csv").read_text().splitlines()
    items = [line[:-1] + "1" if line.startswith("main,uniform,") else line for line in items]
    (dest / "items.csv").write_text("\n".join(items) + "\n")
    # derive refuses items.csv rows that disagree with cells.jsonl: record the edited rows' digests there
    from midblock.experiments.export import _items_digest

    cells = [json.loads(line) for line in (dest / "cells.jsonl").read_text().splitlines()]
    for c in cells:
        if c["phase"] == "main" and c["label"] == "uniform":
            mine = [line.split(",") for line in items if line.startswith(f"main,uniform,{c['seed']},")]
            c["items_digest"] = _items_digest([(int(x[4]), int(x[5])) for x in mine])
    (dest / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    other = {(r["arm"], r["seed"]): r for r in derive(dest, baseline="paper")}
    mine = {(r["arm"], r["seed"]): r for r in derive(dest)}
    for seed in (0, 1, "mean(2)"):
        assert mine[("uniform", seed)]["accuracy"] == 1 and mine[("uniform", seed)].get("diff_vs_baseline") is None
        assert other[("paper", seed)].get("diff_vs_baseline") is None  # the baseline's own cells stay empty
        flipped = -mine[("paper", seed)]["diff_vs_baseline"]
        assert other[("uniform", seed)]["diff_vs_baseline"] == pytest.approx(flipped, abs=1e-12) and flipped > 0
    assert main(["derive", str(dest), "paper"]) == 0


def test_a_bad_training_setting_in_a_grid_file_fails_before_anything_is_created(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("model: random:llama-tiny\ntrain: {lr: .inf}\nmethods: [{name: a, method: lora}]\n")
    rc, _, err = run_cli("compare", "--config", str(grid), "--out", str(tmp_path / "o"))
    assert rc == 2 and "learning rate" in err and "finite" in err and not (tmp_path / "o").exists()
    grid.write_text("model: random:llama-tiny\nmethods: [{name: a, method: midblock, band: auto}]\n")
    rc, _, err = run_cli("compare", "--config", str(grid), "--out", str(tmp_path / "o"))
    assert rc == 2 and "band 'auto' but no analysis" in err and not (tmp_path / "o").exists()


def test_saved_state_resumes_elsewhere_without_recomputing(tmp_path, monkeypatch):
    from midblock.experiments.export import save_state

    first = compare(SMALL, tmp_path / "c", progress=False)
    assert save_state(tmp_path / "c", tmp_path / "state") == 1
    assert not list((tmp_path / "state").rglob("*.safetensors"))  # small: no adapters, no checkpoints
    import shutil

    import midblock.experiments.runner as runner

    shutil.copytree(tmp_path / "state", tmp_path / "elsewhere")
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a finished cell was retrained"))
    monkeypatch.setattr(runner, "evaluate_model", lambda *a, **k: pytest.fail("a finished cell was re-evaluated"))
    again = compare(SMALL, tmp_path / "elsewhere", progress=False)
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in first["rows"]]


def test_a_cell_whose_training_is_gone_is_trained_again_and_says_so(tmp_path, caplog):
    """A state without adapters keeps the search's results, not its weights: the main grid's first seed, which
    shares the search's training at the chosen rate, trains again on a new disk, with a warning."""
    import shutil

    from midblock.experiments.export import save_state

    grid = SMALL | {"lr_search": {"lrs": [1e-2, 1e-3], "split": "dev", "eval_items": 2}}
    res = compare(grid, tmp_path / "c", progress=False)
    save_state(tmp_path / "c", tmp_path / "state")
    cell = Path(res["cells"][0]["eval_dir"]).relative_to(tmp_path / "c")
    shutil.copytree(tmp_path / "state", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "elsewhere" / cell)  # the main evaluation is what is left to do
    with caplog.at_level("WARNING", logger="midblock.experiments.runner"):
        compare(grid, tmp_path / "elsewhere", progress=False)
    assert f"cell {cell.parent.name}: its training run is not here" in caplog.text
    assert (tmp_path / "elsewhere" / cell.parent / "train" / "COMPLETED").exists()


def test_saved_state_with_adapters_keeps_the_reported_cells_loadable(tmp_path, monkeypatch):
    """``adapters``: the LoRA adapters of the cells a table reports (not the dev search's, never checkpoints)
    travel with the state, so a study's analyses can load them in another session on another disk."""
    import shutil

    import torch

    from midblock.experiments.export import save_state
    from midblock.models import load_model

    grid = SMALL | {"lr_search": {"lrs": [1e-2, 1e-3], "split": "dev", "eval_items": 2}}
    res = compare(grid, tmp_path / "c", progress=False)
    monkeypatch.chdir(tmp_path)  # relative paths, as `session.sh save` passes them
    save_state("c", "state", adapters=True)
    kept = sorted(p.relative_to(tmp_path / "state").parts[1] for p in (tmp_path / "state").rglob("*.safetensors"))
    (main,) = res["cells"]
    assert kept == [Path(main["run_dir"]).parent.name]  # the search's other rate: dev only, not kept
    assert not list((tmp_path / "state").rglob("checkpoints"))
    shutil.copytree(tmp_path / "state", tmp_path / "elsewhere")
    moved = tmp_path / "elsewhere" / Path(main["run_dir"]).relative_to(tmp_path / "c")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        a, b = (load_model(str(r))[0](ids).logits for r in (main["run_dir"], moved))
    assert torch.equal(a, b)
    rc, _, err = run_cli(
        "export", "--mode", "raw", "--from", str(tmp_path / "c"), "--dest", str(tmp_path / "x"), "--adapters"
    )
    assert rc == 2 and "--adapters applies to --mode state only" in err


def test_saved_state_keeps_finished_analyses_of_tuned_runs_without_their_caches(tmp_path):
    from midblock.experiments.export import save_state

    compare(SMALL, tmp_path / "c", progress=False)
    for name, done in (("analysis-lora-s0", True), ("analysis-lora-s1", False)):  # studies/analyze-arms.sh
        a = tmp_path / "c" / name
        a.mkdir()
        for f in ("results.json", "metrics.csv", "fingerprint.json", "cache.safetensors"):
            (a / f).write_text("x")
        if done:
            (a / "COMPLETED").write_text("t")
    save_state(tmp_path / "c", tmp_path / "state")
    kept = sorted(p.name for p in (tmp_path / "state" / "analysis-lora-s0").iterdir())
    assert kept == ["COMPLETED", "fingerprint.json", "metrics.csv", "results.json"]
    assert not (tmp_path / "state" / "analysis-lora-s1").exists()  # unfinished: resumable only from its caches


def test_export_carries_finished_analyses_and_their_profiles(tmp_path):
    from midblock.experiments.export import export
    from tests.reporting.test_profiles import write_run

    compare(SMALL, tmp_path / "c", progress=False)
    runs = []
    for seed, top in enumerate((0.3, 0.5)):  # what studies/analyze-arms.sh leaves: analyses, then profiles
        a = write_run(tmp_path / "c" / f"analysis-lora-s{seed}", top)
        (a / "results.json").write_text("{}")
        (a / "cache.pt").write_text("x")
        (a / "COMPLETED").write_text("t")
        runs.append(f"lora={a}")
    write_run(tmp_path / "c" / "analysis-lora-s2", 0.1)  # unfinished
    assert run_cli("profiles", *runs, "--out", str(tmp_path / "c" / "profiles"))[0] == 0
    dest = export(tmp_path / "c", tmp_path / "raw")
    assert sorted(p.name for p in (dest / "analyses").iterdir()) == [
        f"analysis-lora-s{s}.{n}" for s in (0, 1) for n in ("metrics.csv", "results.json")
    ]
    assert {"profiles.md", "profiles.json", "profiles.png"} <= {p.name for p in dest.iterdir()}
    export(tmp_path / "c", tmp_path / "raw")  # a second export replaces its own files


def test_a_training_stopped_by_a_signal_stops_the_grid_without_evaluating(tmp_path, monkeypatch):
    """SIGINT/SIGTERM stop a cell's training with a checkpoint: compare stops too (the same command resumes),
    instead of trying to evaluate a run that has no adapter yet."""
    import midblock.experiments.runner as runner

    real = runner.train

    def stopped_after_one_step(cfg):
        return real(cfg, on_step=lambda step, loss: True)

    monkeypatch.setattr(runner, "train", stopped_after_one_step)
    grid = SMALL | {"train": SMALL["train"] | {"steps": 2}}
    with pytest.raises(KeyboardInterrupt):
        compare(grid, tmp_path / "c", progress=False)
    assert not list((tmp_path / "c" / "cells").glob("*/eval-*/cell.json"))
    assert list((tmp_path / "c" / "cells").glob("*/train/checkpoints/*"))
    monkeypatch.setattr(runner, "train", real)
    res = compare(grid, tmp_path / "c", progress=False)  # resumes from the checkpoint and finishes
    assert res["cells"][0]["train"]["steps"] == 2


def test_periodic_checkpoints_are_run_control_a_grid_with_them_reuses_cells_finished_without(tmp_path, monkeypatch):
    """``save_every`` (compare --save-every) checkpoints each cell's training every N steps, so a long study
    loses at most N steps to a hard stop; it is not part of a cell's key: finished cells are reused."""
    import midblock.experiments.runner as runner

    grid = SMALL | {"train": SMALL["train"] | {"steps": 2}}
    periodic = grid | {"train": grid["train"] | {"save_every": 1}}
    real, saved = runner.train, []

    def train_and_list(cfg):
        res = real(cfg)
        saved.append(sorted(c.name for c in (Path(cfg.out) / "checkpoints").glob("step-*.pt")))
        return res

    monkeypatch.setattr(runner, "train", train_and_list)
    res = compare(periodic, tmp_path / "p", progress=False)
    compare(grid, tmp_path / "c", progress=False)
    assert saved == [["step-0000001.pt", "step-0000002.pt"], []]  # every step, the newest two kept; none without
    # a finished cell's checkpoints go (they resume nothing; a full-parameter arm's are the size of its model)
    assert not list((tmp_path / "p" / "cells").glob("*/train/checkpoints/*"))
    names = [sorted(p.name for p in (tmp_path / d / "cells").iterdir()) for d in ("p", "c")]
    assert names[0] == names[1]  # the same cell keys
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a finished cell was retrained"))
    again = compare(periodic, tmp_path / "c", progress=False)
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in res["rows"]]


def _simulate_cpu(monkeypatch, native: bool) -> None:
    from midblock.tuning import precision

    flags = {"avx2"} | ({"avx512_bf16"} if native else set())
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision, "_warned_emulated", False)
    monkeypatch.setattr(precision, "default_device_type", lambda: "cpu")
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)  # the suite's conftest pins auto to fp32


def test_demo_profiles_use_auto_precision_and_the_published_preset_keeps_bf16():
    assert preset("quick")["train"]["precision"] == preset("full")["train"]["precision"] == "auto"
    assert preset("smoke")["train"]["precision"] == "fp32"  # tests compute the same numbers on every machine
    assert preset("band-landscape")["train"]["precision"] == "bf16"


def test_cells_are_keyed_on_the_resolved_precision(monkeypatch):
    """`auto` trained fp32 on one CPU and bf16 on another: those cells must never share a key."""
    from midblock.experiments.runner import Keys

    def key(precision: str, native: bool) -> str:
        _simulate_cpu(monkeypatch, native)
        monkeypatch.setattr("midblock.experiments.runner.resolve_precision", _resolver())
        cc = CompareConfig.from_dict(GRID | {"train": GRID["train"] | {"precision": precision}})
        return Keys(cc, None).training(cc.cells()[0])["key"]

    assert key("auto", native=False) == key("fp32", native=False)
    assert key("auto", native=True) == key("bf16", native=False)
    assert key("auto", native=False) != key("auto", native=True)


def _resolver():
    from midblock.tuning import precision

    return lambda requested, device_type=None: precision.resolve_precision(requested, device_type or "cpu")


@pytest.mark.parametrize("native", [False, True])
def test_a_preset_fixing_bf16_warns_before_any_work_on_a_cpu_that_emulates_it(monkeypatch, caplog, native):
    import logging

    from midblock.experiments import runner

    _simulate_cpu(monkeypatch, native)
    monkeypatch.setattr(runner, "default_device_type", lambda: "cpu")
    with caplog.at_level(logging.WARNING):
        warned = runner.warn_fixed_bf16(CompareConfig.from_dict(preset("band-landscape")))
        runner.warn_fixed_bf16(CompareConfig.from_dict(preset("quick")))
    msgs = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    assert warned is not native and len(msgs) == (0 if native else 1)
    if not native:
        assert "band-landscape" in msgs[0] and "25-35x" in msgs[0] and "--precision fp32" in msgs[0]


def test_compare_cli_precision_overrides_the_preset():
    from midblock.cli import build_parser
    from midblock.cli.compare import grid_from_args

    args = build_parser().parse_args(["compare", "--preset", "band-landscape", "--precision", "fp32", "--out", "x"])
    assert grid_from_args(args)["train"]["precision"] == "fp32"


def test_compute_ledger_groups_by_machine_and_counts_a_shared_training_once():
    from midblock.experiments.export import compute_ledger, render_ledger

    def cell(phase, fp, cpu, threads, t, train_s=3600.0, eval_s=1800.0):
        comp = {"cpu": cpu, "native_bf16": cpu == "B", "gpus": None, "torch_threads": threads, "precision": "fp32"}
        comp |= {"time_utc": t, "eval_wall_s": eval_s}
        return {"phase": phase, "fingerprint": {"training": fp}, "train": {"wall_s": train_s}, "computed": comp}

    cells = [
        cell("search", "x", "A", 2, "2026-12-01T10:00:00"),
        cell("main", "x", "A", 2, "2026-12-01T11:00:00"),  # the search's training, evaluated on test
        cell("main", "y", "B", 1, "2026-12-02T09:00:00"),
        {"phase": "base", "fingerprint": {}, "train": None, "computed": None},  # exported before it was kept
    ]
    # a run resumed by an earlier midblock: its summary's wall time is the last segment's, its log has them all
    resumed = cell("main", "z", "B", 1, "2026-12-02T10:00:00", train_s=600.0)
    resumed["train"]["logged_step_s"] = 1800.0
    assert compute_ledger([resumed])[0]["train_h"] == 0.5
    cells[2]["train"]["logged_step_s"] = 3000.0  # set-up outside the steps: the wall time stays
    a, b, old = compute_ledger(cells)
    assert (a["cpu"], a["cells"], a["train_h"], a["eval_h"]) == ("A", 2, 1.0, 1.0)
    assert (a["first"], a["last"]) == ("2026-12-01T10:00:00", "2026-12-01T11:00:00")
    assert (b["cpu"], b["native_bf16"], b["torch_threads"], b["cells"], b["train_h"]) == ("B", True, 1, 1, 1.0)
    assert old["cpu"] is None and old["cells"] == 1 and old["train_h"] == 0
    md = render_ledger([a, b, old])
    assert "| A | no | - | 2 | fp32 | 2 | 1.00 | 1.00 |" in md and "| not recorded |" in md
    assert "| total | | | | | 4 | 2.00 | 1.50 | | |" in md
    # the same key trained again on another machine (the first run's weights lost): both trainings count
    again = cell("main", "x", "B", 1, "2026-12-03T09:00:00", train_s=1800.0)
    first, second = compute_ledger(cells[:1] + [again])
    assert (first["train_h"], second["train_h"]) == (1.0, 0.5)
