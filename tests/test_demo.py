"""The main job end to end on a tiny random model (the smoke profile), and its report in a browser."""

import csv
import json
import re

import pytest

from midblock.demo import DemoConfig, general_corpus, run_demo
from midblock.errors import MidblockError
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
    assert [r["system"] for r in rows] == ["base", "lora", "midblock"]
    by = {r["system"]: r for r in rows}
    # matched budgets and step sizes between the arms
    assert by["lora"]["rank_units"] == by["midblock"]["rank_units"]
    assert by["lora"]["alpha_over_r"] == by["midblock"]["alpha_over_r"]
    assert int(by["lora"]["n_items"]) == 6
    for r in rows:
        assert 0.0 <= float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) <= 1.0
    saved = json.loads((out / "demo_summary.json").read_text())
    assert saved["provenance"]["config"]["model"] == "random:llama-tiny"
    assert {"torch", "transformers", "peft"} <= set(saved["provenance"]["versions"])
    assert saved["recommended_band"]["spec"]
    # mid-block trained only its band: the run manifest names the blocks
    manifest = json.loads((out / "train-midblock-s0" / "midblock_run.json").read_text())
    assert manifest["band"] == [1, 2, 3, 4]  # 0.2:0.8 of 6 blocks


def test_report_is_self_contained(demo_run):
    _, _, out = demo_run
    html = (out / "report.html").read_text()
    for title in ("What was run", "Comparison", "Where fine-tuning changed the model", "Training loss"):
        assert title in html
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "interval" in html  # the verdict says what the intervals support


def test_rerun_skips_finished_stages_and_gives_the_same_numbers(demo_run):
    cfg, summary, out = demo_run
    mtime = (out / "train-lora-s0" / "train_summary.json").stat().st_mtime
    again = run_demo(cfg)
    assert (out / "train-lora-s0" / "train_summary.json").stat().st_mtime == mtime
    assert again["comparison"] == summary["comparison"]


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
    with pytest.raises(MidblockError, match="arith or gsm8k"):
        DemoConfig(task="jsonl")
    with pytest.raises(MidblockError, match="steps"):
        DemoConfig(steps=0)
    assert len(general_corpus()) == 40
