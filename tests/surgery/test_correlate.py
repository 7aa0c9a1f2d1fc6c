"""Correlation of analysis metrics: closed forms on synthetic metrics.csv files, clustering, the CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from midblock.errors import MidblockError
from midblock.surgery.correlate import _rank, cluster_order, correlation_matrix, pivot, read_metrics
from tests.conftest import run_cli


def write_metrics(path, variants=("sft",), layers=7, seed=0):
    """Synthetic analysis output: a = depth, b = 2a + 1 (r = 1), c = -a^3 (Spearman -1), d = noise."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "dataset", "layer", "depth", "metric", "value"])
        for v in variants:
            for l in range(layers):
                d = l / (layers - 1)
                vals = {"a": d, "b": 2 * d + 1, "c": -(d**3), "d": float(rng.normal())}
                for m, x in vals.items():
                    w.writerow([v, "gsm8k", l, d, m, x])
    return path


def test_pivot_and_closed_forms(tmp_path):
    run = write_metrics(tmp_path / "run1", variants=("sft", "dpo"))
    keys, names, X = pivot(read_metrics([run]))
    assert names == ["a", "b", "c", "d"] and X.shape == (14, 4)
    assert keys[0] == ("run1", "sft", "gsm8k", "0")
    R, N = correlation_matrix(X, "pearson")
    assert R[0, 1] == pytest.approx(1.0) and N[0, 1] == 14
    assert -1 < R[0, 2] < -0.9  # cubic: not exactly linear
    S, _ = correlation_matrix(X, "spearman")
    assert S[0, 2] == pytest.approx(-1.0) and S[0, 1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diag(R), 1.0)


def test_missing_values_use_pairwise_rows_and_constant_is_nan():
    X = np.array([[1, 2, 5], [2, 4, 5], [3, np.nan, 5], [4, 8, 5]], dtype=float)
    R, N = correlation_matrix(X, "pearson")
    assert N[0, 1] == 3 and R[0, 1] == pytest.approx(1.0)
    assert math.isnan(R[0, 2])
    R2, _ = correlation_matrix(X, "pearson", min_rows=4)
    assert math.isnan(R2[0, 1])


def test_rank_ties_averaged():
    np.testing.assert_array_equal(_rank(np.array([10.0, 20.0, 10.0, 30.0])), [1.5, 3.0, 1.5, 4.0])


def test_cluster_order_groups_correlated_metrics():
    # Metrics 0 and 2 move together (|r| = 0.9), 1 and 3 together; across groups |r| = 0.1.
    R = np.array([[1, 0.1, -0.9, 0.1], [0.1, 1, 0.1, 0.95], [-0.9, 0.1, 1, 0.1], [0.1, 0.95, 0.1, 1]])
    order = cluster_order(R)
    pos = {m: order.index(m) for m in range(4)}
    assert abs(pos[0] - pos[2]) == 1 and abs(pos[1] - pos[3]) == 1
    assert sorted(order) == [0, 1, 2, 3]


def test_bad_inputs(tmp_path):
    with pytest.raises(MidblockError, match="does not exist"):
        read_metrics([tmp_path / "nope"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.csv").write_text("variant,layer,value\nx,0,1\n")
    with pytest.raises(MidblockError, match="lacks column"):
        read_metrics([bad])
    with pytest.raises(MidblockError, match="unknown correlation"):
        correlation_matrix(np.zeros((3, 2)), "kendall")


def test_cli_writes_csv_png_json_and_report(tmp_path):
    r1 = write_metrics(tmp_path / "r1")
    r2 = write_metrics(tmp_path / "r2", variants=("lora",), seed=1)
    out = tmp_path / "corr"
    rc, stdout, err = run_cli("correlate", str(r1), str(r2), "--out", str(out))
    assert rc == 0, err
    assert "4 metrics over 14 rows" in stdout
    for f in (
        "correlation_pearson.csv",
        "correlation_spearman.csv",
        "correlation_pearson.png",
        "correlation.json",
        "report.html",
    ):
        assert (out / f).exists(), f
    rows = list(csv.DictReader(open(out / "correlation_pearson.csv")))
    by = {r["metric"]: r for r in rows}
    assert float(by["a"]["b"]) == pytest.approx(1.0)
    import json

    res = json.loads((out / "correlation.json").read_text())
    assert res["provenance"]["versions"]["torch"] and res["n_rows"] == 14
    assert "Metric correlation" in (out / "report.html").read_text()


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "corr"
    rc, _, err = run_cli("correlate", str(tmp_path / "missing"), "--out", str(out))
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1
    one = tmp_path / "one"
    one.mkdir()
    (one / "metrics.csv").write_text("variant,dataset,layer,depth,metric,value\nv,d,0,0,a,1\nv,d,1,1,a,2\n")
    rc, _, err = run_cli("correlate", str(one), "--out", str(out))
    assert rc == 2 and "at least two" in err
    assert not out.exists()
