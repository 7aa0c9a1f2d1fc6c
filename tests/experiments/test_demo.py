"""The main job end to end on a tiny random model (the smoke profile), and its report in a browser."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from midblock.errors import MidblockError
from midblock.experiments.demo import DemoConfig, run_demo
from midblock.experiments.runner import compare, general_corpus
from midblock.experiments.table import pooled_rows
from midblock.layers import PAPER_BAND
from midblock.reporting.browser import check_report, find_chromium


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = DemoConfig(model="random:llama-tiny", profile="smoke", out=str(out))
    return cfg, run_demo(cfg), out


def test_demo_writes_a_complete_run(demo_run):
    cfg, summary, out = demo_run
    assert (out / "COMPLETED").exists() and not (out / "RUNNING.lock").exists()
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["arm"] for r in rows] == ["base", "lora", "midblock"]
    by = {r["arm"]: r for r in rows}
    # matched budgets and step sizes between the arms
    assert by["lora"]["rank_units"] == by["midblock"]["rank_units"]
    assert by["lora"]["alpha_over_r"] == by["midblock"]["alpha_over_r"]
    for r in rows:
        assert 0.0 <= float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) <= 1.0
    assert summary["comparison"][1]["n"] == 6
    saved = json.loads((out / "demo_summary.json").read_text())
    assert saved["provenance"]["config"]["model"] == "random:llama-tiny"
    assert {"torch", "transformers", "peft"} <= set(saved["provenance"]["versions"])
    assert saved["recommended_band"]["spec"]
    assert sorted(saved["variant_arms"].values()) == ["lora", "midblock"]  # the figure names arms, not dirs
    # the analysis (its CSV, and so every figure's legend) names the tuned models by arm, not "train", "train-2"
    variants = {r["variant"] for r in csv.DictReader(open(out / "analysis" / "metrics.csv"))}
    assert variants == {"base", "lora", "midblock"}
    # the report: the resolved precision, two tables instead of one wide one, no difference of lora against itself
    html = (out / "report.html").read_text()
    assert "Training precision: fp32" in html and "<th>precision</th>" in html
    assert "minus lora, points [95% CI]" in html and "+0.0 [+0.0, +0.0]" not in html.split("midblock</td>")[0]
    head, _, *body = [[c.strip() for c in line.strip("|").split("|")] for line in open(out / "comparison.md")]
    lora_md = dict(zip(head, next(b for b in body if b[0] == "lora")))
    assert lora_md["diff_vs_baseline"] == lora_md["diff_low"] == lora_md["diff_high"] == ""
    assert lora_md["precision"] == "fp32"
    # the demo trains the paper's band, spelled once: seg2-4/5 of 6 blocks is blocks 1..3
    assert cfg.band == PAPER_BAND == "seg2-4/5" and by["midblock"]["band"] == "1-3"
    mid = next(c for c in summary_cells(out) if c["label"] == "midblock")
    manifest = json.loads((Path(mid["run_dir"]) / "midblock_run.json").read_text())
    assert manifest["band"] == [1, 2, 3]


def test_demo_report_shows_the_monitor_heatmaps(demo_run):
    """The demo turns the per-layer monitor on (every fifth of the run) and draws both arms' heatmaps."""
    from midblock.tuning.monitor import read_monitor

    _, _, out = demo_run
    html = (out / "report.html").read_text()
    assert "How the change grew during training" in html
    arms = [c for c in summary_cells(out) if c["run_dir"]]  # the base cell trains nothing
    assert sorted(c["label"] for c in arms) == ["lora", "midblock"]
    for c in arms:
        meta, readings = read_monitor(c["run_dir"])
        assert [r["step"] for r in readings] == [0, 1, 2, 3, 4]  # smoke: 4 steps, every max(1, 4 // 5)
        assert meta["band"] == ([1, 2, 3] if c["label"] == "midblock" else list(range(6)))
        assert (out / "figures" / f"monitor_{c['label']}.png").stat().st_size > 5_000
        assert f"<figcaption>monitor_{c['label']}</figcaption>" in html  # embedded in the page


def summary_cells(out):
    return [json.loads(p.read_text()) for p in sorted((out / "compare" / "cells").glob("*/eval-*/cell.json"))]


def test_demo_numbers_are_compares_numbers(demo_run, tmp_path):
    """The demo is compare() on its two-arm grid: an independent compare run gives the very same numbers."""
    cfg, summary, out = demo_run
    rows = pooled_rows(compare(cfg.grid(), tmp_path / "cmp", progress=False)["rows"])
    assert [r["arm"] for r in rows] == [r["arm"] for r in summary["comparison"]]
    keys = ("n", "accuracy", "ci_low", "ci_high", "seed_sd", "diff_vs_baseline", "diff_low", "diff_high")
    keys += ("band", "trainable_params", "rank_units", "alpha_over_r", "final_loss", "ppl", "ppl_change_pct")
    for a, b in zip(summary["comparison"], rows):
        for key in keys:
            assert a.get(key) == b.get(key), (a["arm"], key)


def test_rerun_skips_finished_stages_and_gives_the_same_numbers(demo_run):
    cfg, summary, out = demo_run
    mid = next(c for c in summary_cells(out) if c["label"] == "lora")
    mtime = (Path(mid["run_dir"]) / "train_summary.json").stat().st_mtime
    again = run_demo(cfg)
    assert (Path(mid["run_dir"]) / "train_summary.json").stat().st_mtime == mtime
    assert again["comparison"] == summary["comparison"]


def test_rerun_with_other_settings_is_refused_naming_the_setting(demo_run):
    cfg, _, out = demo_run
    with pytest.raises(MidblockError, match=r"settings.steps \(None != 5\)"):
        run_demo(replace(cfg, steps=5))


@pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (CI installs it: apt-get install chromium)")
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    _, _, out = demo_run
    shot = tmp_path / "report.png"
    errors = check_report(out / "report.html", shot)
    assert errors == []
    assert shot.stat().st_size > 10_000


def test_demo_config_validation():
    with pytest.raises(MidblockError, match="profile"):
        DemoConfig(profile="huge")
    with pytest.raises(MidblockError, match="the demo runs task gsm8k or arith, not .jsonl."):
        DemoConfig(task="jsonl")
    with pytest.raises(MidblockError, match="steps"):
        DemoConfig(steps=0)
    assert len(general_corpus("general-v1")) == 40 and len(general_corpus()) == 98


def test_demo_config_from_the_cli_carries_precision_and_threads():
    from midblock.cli import build_parser
    from midblock.cli.demo import config_from_args

    args = build_parser().parse_args(["demo", "--precision", "fp32", "--threads", "2", "--out", "o"])
    cfg = config_from_args(args)
    assert cfg.precision == "fp32" and cfg.threads == 2
    assert cfg.grid()["train"]["precision"] == "fp32"
    default = config_from_args(build_parser().parse_args(["demo"]))
    assert default.precision is None and default.grid()["train"]["precision"] == "auto"  # the quick profile's
    smoke = config_from_args(build_parser().parse_args(["demo", "--profile", "smoke"]))
    assert smoke.grid()["train"]["precision"] == "fp32"
    with pytest.raises(MidblockError, match="threads"):
        DemoConfig(threads=0)


def test_threads_do_not_change_the_demo_fingerprint_and_precision_does():
    from midblock.experiments.demo import _fingerprint

    base = DemoConfig(model="random:llama-tiny", profile="smoke")
    assert _fingerprint(base)["key"] == _fingerprint(replace(base, threads=1))["key"]
    assert _fingerprint(base)["key"] != _fingerprint(replace(base, precision="bf16"))["key"]


def test_lr_overrides_the_profile_rate_and_keys_the_run_only_when_given():
    from midblock.cli import build_parser
    from midblock.cli.demo import config_from_args
    from midblock.experiments.demo import _fingerprint

    cfg = config_from_args(build_parser().parse_args(["demo", "--lr", "1e-3"]))
    assert cfg.lr == 1e-3 and cfg.grid()["train"]["lr"] == 1e-3
    assert DemoConfig().grid()["train"]["lr"] == 4e-3  # the quick profile's
    base = DemoConfig(model="random:llama-tiny", profile="smoke")
    # not given: the settings demo runs were keyed under before --lr existed, so they resume
    assert "lr" not in _fingerprint(base)["settings"]
    assert _fingerprint(base)["key"] != _fingerprint(replace(base, lr=2e-3))["key"]
    with pytest.raises(MidblockError, match="--lr must lie in"):
        DemoConfig(lr=0.0)
    with pytest.raises(MidblockError, match="--lr does not apply to the full profile"):
        DemoConfig(profile="full", lr=1e-3)


def test_another_model_at_the_smollm2_rate_gets_a_note():
    from midblock.experiments.demo import rate_note

    assert rate_note(DemoConfig()) is None  # the model the rate was chosen on
    assert rate_note(DemoConfig(model="gemma3-270m", lr=2e-3)) is None  # a rate given
    assert rate_note(DemoConfig(model="gemma3-270m", profile="full")) is None  # searched on dev
    note = rate_note(DemoConfig(model="gemma3-270m"))
    assert note is not None and "lr 0.004" in note and "--lr" in note


def test_tables_leave_comparisons_of_a_system_with_itself_empty():
    from midblock.reporting.demo_report import cost_table, format_table, results_table

    row = {"n": 64, "accuracy": 0.1, "ci_low": 0.05, "ci_high": 0.2}
    rows = [
        {"arm": "base", "seed": "-", **row, "ppl_change_pct": 0.0},
        {"arm": "lora", "seed": "mean(1)", **row, "diff_vs_baseline": 0.0, "diff_low": 0.0, "diff_high": 0.0}
        | {"ppl_change_pct": 3.0, "precision": "fp32"},
        {"arm": "midblock", "seed": "mean(1)", **row, "diff_vs_baseline": 0.05, "diff_low": -0.01, "diff_high": 0.1},
    ]
    base, lora, mid = format_table(rows, baseline="lora").splitlines()[2:]
    assert "+" not in base and "+0.000" not in lora and "+3.0" in lora and "+0.050" in mid
    html = results_table(rows, "lora")
    assert "+0.0 [+0.0, +0.0]" not in html and "+5.0 [-1.0, +10.0]" in html
    assert "<td>fp32</td>" in cost_table(rows) and "<td>base</td>" not in cost_table(rows)


def test_the_forgetting_column_shows_its_interval_and_what_it_covers():
    from midblock.reporting.demo_report import results_table

    row = {"n": 64, "accuracy": 0.1, "ci_low": 0.05, "ci_high": 0.2, "seed": "mean(1)"}
    rows = [
        {"arm": "lora", **row, "ppl_change_pct": 25.0, "ppl_change_low": 21.5, "ppl_change_high": 29.2}
        | {"ppl_covers": "texts"},
        {"arm": "old", **row, "ppl_change_pct": 3.0},  # a cell without per-text losses: the point value only
    ]
    html = results_table(rows, "lora")
    assert "+25.0 [+21.5, +29.2] (texts)" in html and "<td>+3.0</td>" in html
