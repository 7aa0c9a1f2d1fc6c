"""The published band-landscape study: its table re-derives from the committed raw files, and the numbers
the README and docs/results.md quote are the derived ones (no model is run: the files are read)."""

import json
from pathlib import Path

import pytest

from midblock.experiments.export import derive
from midblock.experiments.table import pooled_rows

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "docs" / "results" / "band-landscape"
KEYS = ("arm", "seed", "band", "lr", "n", "accuracy", "ci_low", "ci_high", "seed_sd", "diff_vs_baseline")
KEYS += ("diff_low", "diff_high", "ppl", "ppl_change_pct", "rank_units", "trainable_params")


def test_the_committed_raw_results_rederive_the_published_table():
    published = json.loads((RAW / "compare.json").read_text())["rows"]
    again = derive(RAW)
    assert [{k: r.get(k) for k in KEYS} for r in again] == [{k: r.get(k) for k in KEYS} for r in published]


@pytest.mark.parametrize("doc", ["docs/results.md", "README.md"])
def test_the_docs_quote_the_derived_numbers(doc):
    text = (ROOT / doc).read_text().replace("**", "")
    for r in pooled_rows(derive(RAW)):
        if r["arm"] == "base" and doc == "README.md":
            continue  # the README's headline table shows the tuned arms only
        acc = f"{100 * r['accuracy']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
        assert acc in text, f"{doc}, {r['arm']}: {acc} is not quoted"
        if r["arm"] not in ("base", "uniform"):
            diff = f"{100 * r['diff_vs_baseline']:+.1f}".replace("+", "")
            low, high = f"{100 * r['diff_low']:+.1f}", f"{100 * r['diff_high']:+.1f}"
            assert f"{diff} [{low}, {high}]" in text, f"{doc}, {r['arm']}"
            assert f"{r['ppl_change_pct']:+.1f}%" in text, f"{doc}, {r['arm']}"
