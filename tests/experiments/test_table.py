"""The one pooling rule over seeds, on hand-made per-item results."""

import pytest

from midblock.evaluation.stats import paired_bootstrap, wilson_interval
from midblock.experiments.table import build_rows, pooled_rows


def _rec(label, seed, correct, ppl=None):
    items = [{"index": i, "scores": {"m": {"correct": bool(c)}}} for i, c in enumerate(correct)]
    return {"label": label, "seed": seed, "items": items, "eval": {"wall_s": 1.0}, "train": None, "ppl": ppl}


A = {0: [1, 1, 0, 0, 1, 0, 1, 0], 1: [1, 0, 0, 1, 1, 0, 1, 1]}
B = {0: [0, 1, 0, 0, 1, 0, 0, 0], 1: [1, 0, 0, 0, 1, 0, 0, 1]}


def test_seed_rows_are_wilson_and_paired_and_the_pooled_row_averages_items_over_seeds():
    results = [_rec("a", s, A[s]) for s in (0, 1)] + [_rec("b", s, B[s]) for s in (0, 1)]
    rows = build_rows(results, None, baseline="a", metric="m")
    by = {(r["arm"], r["seed"]): r for r in rows}
    assert list(by) == [("a", 0), ("a", 1), ("a", "mean(2)"), ("b", 0), ("b", 1), ("b", "mean(2)")]
    r = by[("b", 0)]
    assert (r["ci_low"], r["ci_high"]) == wilson_interval(2, 8) and r["accuracy"] == 2 / 8
    d = paired_bootstrap(B[0], A[0])
    assert (r["diff_vs_baseline"], r["diff_low"], r["diff_high"]) == (d["diff"], d["lo"], d["hi"])
    pooled = by[("b", "mean(2)")]
    avg_b = [(x + y) / 2 for x, y in zip(B[0], B[1])]
    avg_a = [(x + y) / 2 for x, y in zip(A[0], A[1])]
    assert pooled["accuracy"] == pytest.approx(sum(avg_b) / 8) and pooled["n"] == 8
    assert (pooled["ci_low"], pooled["ci_high"]) == wilson_interval(sum(avg_b), 8)
    d = paired_bootstrap(avg_b, avg_a)
    assert (pooled["diff_vs_baseline"], pooled["diff_low"], pooled["diff_high"]) == (d["diff"], d["lo"], d["hi"])
    assert pooled["seed_sd"] == pytest.approx(((2 / 8 - 2.5 / 8) ** 2 * 2) ** 0.5)  # sample sd of 2/8, 3/8
    assert [r["arm"] for r in pooled_rows(rows)] == ["a", "b"]


def test_one_seed_pooled_row_equals_the_seed_row_and_ppl_change_is_against_the_base():
    base = _rec("base", None, [0] * 8, ppl={"ppl": 10.0})
    rows = build_rows([_rec("a", 0, A[0], ppl={"ppl": 11.0})], base, baseline="a", metric="m")
    assert [r["arm"] for r in pooled_rows(rows)] == ["base", "a"]
    seed, pooled = rows[1], rows[2]
    for k in ("n", "accuracy", "ci_low", "ci_high", "ppl", "ppl_change_pct"):
        assert seed[k] == pooled[k], k
    assert pooled["ppl_change_pct"] == pytest.approx(10.0) and rows[0]["ppl_change_pct"] == 0.0
