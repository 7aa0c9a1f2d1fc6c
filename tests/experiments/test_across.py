"""``export --mode across``: an effect in one study set against the same effect in another."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from midblock.experiments.across import across
from tests.conftest import run_cli
from tests.experiments.by_hand import seed_differences

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


@pytest.fixture
def exports(tmp_path):
    """Copies of the published selection study (arith v2) and the first band study (arith v1)."""
    for name in ("selection-landscape", "band-landscape"):
        shutil.copytree(RESULTS / name, tmp_path / name)
    return tmp_path / "selection-landscape", tmp_path / "band-landscape"


def test_across_two_published_studies_agrees_with_items_csv(exports):
    sl, bl = exports
    rc, stdout, stderr = run_cli("export", "--mode", "across", "--dest", str(sl), "--other", str(bl))
    assert rc == 0, stderr
    res = json.loads((sl / "across-band-landscape.json").read_text())
    assert [r["arm"] for r in res["rows"]] == ["paper", "auto"]  # the arms both ran, in this table's order
    for r in res["rows"]:
        here, there = seed_differences(sl, r["arm"], "uniform"), seed_differences(bl, r["arm"], "uniform")
        want = np.mean(list(here.values())) - np.mean(list(there.values()))
        d = r["difference"]
        assert d["estimate"] == pytest.approx(want, abs=1e-12)
        assert d["estimate"] == pytest.approx(r["this"]["pooled"]["estimate"] - r["other"]["pooled"]["estimate"])
        assert d["sim_lo"] <= d["lo"] <= d["estimate"] <= d["hi"] <= d["sim_hi"] and d["n_comparisons"] == 2
        assert not d["shared_items"]  # arith v1 and v2: other test items, resampled on their own
    ps = sorted(r["difference"]["p"] for r in res["rows"])
    assert sorted(r["difference"]["p_holm"] for r in res["rows"]) == pytest.approx(
        [min(1, 2 * ps[0]), min(1, max(2 * ps[0], ps[1]))]
    )
    md = (sl / "across-band-landscape.md").read_text()
    assert md == stdout and "| paper |" in md and "each study's items" in md and "2 arms compared" in md


def test_a_study_against_itself_shares_its_items_and_differs_by_nothing(exports):
    sl, _ = exports
    res = across(sl, sl, ["paper"])
    d = res["rows"][0]["difference"]
    assert d["shared_items"] and d["estimate"] == 0 and d["lo"] < 0 < d["hi"]
    assert res["this"]["name"] == res["other"]["name"] == "selection-landscape"  # one model: directory names


def test_across_with_other_arm_names_and_bad_input(exports, tmp_path):
    sl, bl = exports
    shutil.copytree(RESULTS / "paper-protocol-replay", tmp_path / "ppr")
    rc, stdout, stderr = run_cli(
        "export",
        "--mode",
        "across",
        "--dest",
        str(sl),
        "--other",
        f"{tmp_path / 'ppr'},mid-seg2-4,uniform-r64",
        "--arm",
        "paper",
    )
    assert rc == 0, stderr
    res = json.loads((sl / "across-ppr.json").read_text())
    (row,) = res["rows"]
    assert (row["other"]["arm"], row["other"]["baseline"], len(row["other"]["seeds"])) == (
        "mid-seg2-4",
        "uniform-r64",
        10,
    )
    assert "| paper (ppr: mid-seg2-4) |" in stdout
    for args, msg in [
        (["--other", str(bl), "--arm", "nope"], "unknown arm 'nope'"),
        (["--other", f"{bl},paper"], "is not EXPORT_DIR or EXPORT_DIR,ARM,BASELINE"),
        (["--other", f"{bl},paper,uniform"], "pass --arm ARM"),
        ([], "needs --other"),
        (["--other", str(tmp_path / "ppr")], "share no arm"),
    ]:
        rc, _, stderr = run_cli("export", "--mode", "across", "--dest", str(sl), *args)
        assert rc == 2 and msg in stderr and "Traceback" not in stderr, (args, stderr)
    rc, _, stderr = run_cli("export", "--mode", "derive", "--dest", str(sl), "--other", str(bl))
    assert rc == 2 and "--other applies to --mode across only" in stderr
