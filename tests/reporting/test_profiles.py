"""``midblock profiles``: runs grouped by label into seeds, the table, JSON and figure, one-line errors."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli


def write_run(path, top: float, L: int = 10, variant: str = "tuned"):
    """A metrics.csv whose 1 - CKA is 0.1 on the first eight blocks and ``top`` on the last two."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "dataset", "layer", "depth", "metric", "value"])
        for layer in range(L + 1):
            change = 0.0 if layer == 0 else (top if layer > L - 2 else 0.1)
            w.writerow([variant, "arith", layer, layer / L, "cka", 1 - change])
            w.writerow(["base", "arith", layer, layer / L, "l2_norm", 3.0])
    return path


def test_profiles_groups_seeds_under_a_label_and_writes_table_json_and_figure(tmp_path):
    runs = [f"inst={write_run(tmp_path / f'i{s}', top)}" for s, top in enumerate((0.3, 0.5))]
    runs.append(str(write_run(tmp_path / "gemma-uniform", 0.1, L=18)))
    rc, out, err = run_cli("profiles", *runs, "--out", str(tmp_path / "p"))
    assert rc == 0, err
    res = json.loads((tmp_path / "p" / "profiles.json").read_text())
    inst, flat = res["groups"]["inst"], res["groups"]["gemma-uniform"]  # unlabelled: the directory's name
    assert len(inst["runs"]) == 2 and inst["region_blocks"] == {"bottom": "0-1", "middle": "2-7", "top": "8-9"}
    top = inst["summary"]["1-cka"]["top/middle"]
    assert top["mean"] == pytest.approx(4.0) and top["n"] == 2 and top["lo"] < 3 < 5 < top["hi"]
    assert flat["summary"]["1-cka"]["top/middle"]["mean"] == pytest.approx(1.0)
    assert inst["mean_profiles"]["1-cka"][-1] == pytest.approx(0.4)
    table = (tmp_path / "p" / "profiles.md").read_text()
    assert "| inst | 1-cka | 2 |" in table and "| gemma-uniform | 1-cka | 1 |" in table
    assert (tmp_path / "p" / "profiles.png").stat().st_size > 1000


def test_bad_runs_are_one_line_errors(tmp_path):
    a, b = write_run(tmp_path / "a", 0.3), write_run(tmp_path / "b", 0.3, L=12)
    rc, _, err = run_cli("profiles", f"x={a}", f"x={b}", "--out", str(tmp_path / "p"))
    assert rc == 2 and "have 10 and 12 blocks" in err and "LABEL=DIR" in err and len(err.strip().splitlines()) == 1
    base = write_run(tmp_path / "base-only", 0.3, variant="base")
    rc, _, err = run_cli("profiles", str(base), "--out", str(tmp_path / "q"))
    assert rc == 2 and "analysed the base alone" in err
    rc, _, err = run_cli("profiles", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"))
    assert rc == 2 and "does not exist" in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


def test_a_published_analysis_re_derives_independently(tmp_path):
    """The first study's base-vs-uniform analysis (committed): the region means equal a plain re-computation
    from its metrics.csv (block b at layer b + 1; regions 0-5, 6-23, 24-29 of 30 blocks)."""
    from pathlib import Path

    src = Path(__file__).parents[2] / "docs" / "results" / "band-landscape" / "auto" / "pilot-uniform.metrics.csv"
    rc, _, err = run_cli("profiles", f"smollm2={src}", "--out", str(tmp_path / "p"))
    assert rc == 0, err
    got = json.loads((tmp_path / "p" / "profiles.json").read_text())["groups"]["smollm2"]["summary"]
    with open(src, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] != "base"]
    for metric, name, flip in (("cka", "1-cka", True), ("lora_delta_rel", "weight_delta_rel", False)):
        per_block = {
            int(r["layer"]) - 1: float(r["value"]) for r in rows if r["metric"] == metric and r["layer"] != "0"
        }
        vals = [1 - per_block[b] if flip else per_block[b] for b in range(30)]
        for region, blocks in (("bottom", range(0, 6)), ("middle", range(6, 24)), ("top", range(24, 30))):
            want = sum(vals[b] for b in blocks) / len(blocks)
            assert got[name][region]["mean"] == pytest.approx(want, rel=1e-12)
    # the figures docs/metrics.md quotes from this run
    quoted = {"1-cka": ("0.0099", "0.052", "5.3"), "mean_shift_rel": ("0.11", "0.33", "2.9")}
    quoted["weight_delta_rel"] = ("0.018", "0.026", "1.5")
    for name, (middle, top, ratio) in quoted.items():
        assert f"{got[name]['middle']['mean']:.2g}" == middle and f"{got[name]['top']['mean']:.2g}" == top
        assert f"{got[name]['top/middle']['mean']:.2g}" == ratio


def test_two_models_share_a_colour_per_arm_and_a_line_style_per_model():
    from midblock.reporting.profiles import line_styles

    labels = ["instruct uniform", "base uniform", "instruct paper", "base paper"]
    st = line_styles(labels)
    assert st["instruct uniform"][0] == st["base uniform"][0] != st["instruct paper"][0] == st["base paper"][0]
    assert st["instruct uniform"][1] == st["instruct paper"][1] == "-" and st["base paper"][1] == "--"
    # anything else: one colour per label, solid
    for other in (["uniform", "paper"], ["a x", "b y"], ["instruct uniform", "instruct paper"], ["a b c", "d b c"]):
        assert line_styles(other) == {lb: (f"C{i}", "-") for i, lb in enumerate(other)}
