"""``export --mode replay``: one-seed, small-test studies replayed from an export with many seeds."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from midblock.experiments.replay import replay
from tests.conftest import run_cli
from tests.experiments.by_hand import seed_differences

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "results" / "band-landscape"


def test_replay_of_the_published_study_agrees_with_items_csv(tmp_path):
    dest = tmp_path / "exp"
    shutil.copytree(PUBLISHED, dest)
    rc, stdout, stderr = run_cli(
        "export", "--mode", "replay", "--dest", str(dest), "--arm", "paper", "--draws", "50", "--reported", "0.102"
    )
    assert rc == 0, stderr
    res = json.loads((dest / "replay.json").read_text())
    by_hand = seed_differences(dest, "paper", "uniform")
    assert res["seeds"] == sorted(by_hand) and res["items"] == 400
    assert res["per_seed_full_test"] == pytest.approx([by_hand[s] for s in res["seeds"]], abs=1e-12)
    assert res["seeds_win"] == sum(by_hand[s] >= 0.05 - 1e-12 for s in res["seeds"])
    assert f"| {res['seeds_win']} of 3 |" in (dest / "replay.md").read_text()
    diffs = np.array(res["diffs"])
    assert diffs.shape == (3, 50)
    # a 100-item subset's mean is unbiased for the seed's full-test mean; 50 draws: within 4 standard errors
    for k, s in enumerate(res["seeds"]):
        se = diffs[k].std(ddof=1) / np.sqrt(50)
        assert abs(diffs[k].mean() - by_hand[s]) < 4 * se + 1e-9
    assert res["pooled"]["estimate"] == pytest.approx(np.mean(list(by_hand.values())), abs=1e-12)
    assert res["replays"]["share_at_least_reported"] == pytest.approx((diffs >= 0.102 - 1e-12).mean())
    assert "one-seed" in (dest / "replay.md").read_text() and (dest / "replay.png").stat().st_size > 1000
    assert "pooled" in stdout


def test_replay_with_a_controlled_export_and_bad_input(tmp_path):
    dest = tmp_path / "exp"
    shutil.copytree(PUBLISHED, dest)
    res = replay(dest, "top", "uniform", n_items=400, draws_per_seed=3, controlled=(dest, "paper", "uniform"))
    # all 400 items in every draw: each replay is the seed's full-test difference exactly
    assert np.allclose(np.array(res["diffs"]), np.array(res["per_seed_full_test"])[:, None])
    assert res["controlled"]["arm"] == "paper" and res["controlled"]["pooled"]["covers"]
    rc, _, stderr = run_cli("export", "--mode", "replay", "--dest", str(dest), "--arm", "nope")
    assert rc == 2 and "unknown arm 'nope'" in stderr
    rc, _, stderr = run_cli("export", "--mode", "replay", "--dest", str(dest))
    assert rc == 2 and "--arm" in stderr
    rc, _, stderr = run_cli("export", "--mode", "derive", "--dest", str(dest), "--arm", "paper")
    assert rc == 2 and "replay only" in stderr
