"""The one pooling rule over seeds, on hand-made per-item results."""

import math

import numpy as np
import pytest

from midblock.evaluation.stats import (
    compare_to_baseline,
    paired_two_level,
    ppl_change_interval,
    two_level_interval,
    wilson_interval,
)
from midblock.experiments.table import build_rows, pooled_rows, selection_text


def _rec(label, seed, correct, ppl=None):
    items = [{"index": i, "scores": {"m": {"correct": bool(c)}}} for i, c in enumerate(correct)]
    return {"label": label, "seed": seed, "items": items, "eval": {"wall_s": 1.0}, "train": None, "ppl": ppl}


A = {0: [1, 1, 0, 0, 1, 0, 1, 0], 1: [1, 0, 0, 1, 1, 0, 1, 1]}
B = {0: [0, 1, 0, 0, 1, 0, 0, 0], 1: [1, 0, 0, 0, 1, 0, 0, 1]}


def test_seed_rows_are_wilson_and_paired_and_the_pooled_row_resamples_seeds_and_items():
    results = [_rec("a", s, A[s]) for s in (0, 1)] + [_rec("b", s, B[s]) for s in (0, 1)]
    rows = build_rows(results, None, baseline="a", metric="m")
    by = {(r["arm"], r["seed"]): r for r in rows}
    assert list(by) == [("a", 0), ("a", 1), ("a", "mean(2)"), ("b", 0), ("b", 1), ("b", "mean(2)")]
    r = by[("b", 0)]
    assert (r["ci_low"], r["ci_high"]) == wilson_interval(2, 8) and r["accuracy"] == 2 / 8
    d = paired_two_level([B[0]], [A[0]], n_boot=10_000, seed=0)
    assert (r["diff_vs_baseline"], r["diff_low"], r["diff_high"]) == (d["estimate"], d["lo"], d["hi"])
    assert r["ci_covers"] == r["diff_covers"] == "items"
    pooled = by[("b", "mean(2)")]
    assert pooled["accuracy"] == pytest.approx(np.mean([B[0], B[1]])) and pooled["n"] == 8
    acc = two_level_interval([B[0], B[1]], n_boot=10_000, seed=0)
    assert (pooled["ci_low"], pooled["ci_high"]) == (acc["lo"], acc["hi"])
    assert (pooled["ci_covers"], pooled["approximate"], pooled["n_seeds"]) == ("seeds x items", True, 2)
    assert pooled["seed_accuracies"] == [2 / 8, 3 / 8]
    d = paired_two_level([B[0], B[1]], [A[0], A[1]], n_boot=10_000, seed=0)
    assert (pooled["diff_vs_baseline"], pooled["diff_low"], pooled["diff_high"]) == (d["estimate"], d["lo"], d["hi"])
    assert pooled["seed_diffs"] == [-2 / 8, -2 / 8] and pooled["diff_covers"] == "seeds x items"
    assert pooled["diff_p_holm"] == pooled["diff_p"] == d["p"] and pooled["n_comparisons"] == 1
    assert pooled["seed_sd"] == pytest.approx(((2 / 8 - 2.5 / 8) ** 2 * 2) ** 0.5)  # sample sd of 2/8, 3/8
    for k in ("diff_vs_baseline", "diff_low", "diff_p_holm", "seed_diffs"):  # the baseline's own cells stay empty
        assert by[("a", 0)].get(k) is None and by[("a", "mean(2)")].get(k) is None
    assert [r["arm"] for r in pooled_rows(rows)] == ["a", "b"]


def test_several_arms_against_one_baseline_are_holm_adjusted_and_simultaneous():
    rng = np.random.default_rng(0)
    res = {arm: {s: rng.integers(0, 2, 30).tolist() for s in (0, 1, 2)} for arm in ("a", "b", "c", "d")}
    results = [_rec(arm, s, res[arm][s]) for arm in res for s in (0, 1, 2)]
    pooled = {r["arm"]: r for r in pooled_rows(build_rows(results, None, baseline="a", metric="m"))}
    want = compare_to_baseline({k: (list(res[k].values()), list(res["a"].values())) for k in "bcd"})
    for k in "bcd":
        r, w = pooled[k], want[k]
        assert (r["diff_p"], r["diff_p_holm"], r["diff_sim_low"], r["diff_sim_high"]) == (
            w["p"],
            w["p_holm"],
            w["sim_lo"],
            w["sim_hi"],
        )
        assert r["n_comparisons"] == 3 and r["diff_sim_low"] <= r["diff_low"] <= r["diff_high"] <= r["diff_sim_high"]


def test_one_seed_pooled_row_equals_the_seed_row_and_ppl_change_is_against_the_base():
    base = _rec("base", None, [0] * 8, ppl={"ppl": 10.0})
    rows = build_rows(
        [_rec("a", 0, A[0], ppl={"ppl": 11.0}), _rec("b", 0, B[0], ppl={"ppl": 12.0})], base, baseline="a", metric="m"
    )
    assert [r["arm"] for r in pooled_rows(rows)] == ["base", "a", "b"]
    seed, pooled = rows[3], rows[4]
    for k in ("n", "accuracy", "ci_low", "ci_high", "ci_covers", "diff_vs_baseline", "diff_low", "diff_high"):
        assert seed[k] == pooled[k], k
    assert pooled["ci_covers"] == pooled["diff_covers"] == "items"
    assert rows[2]["ppl_change_pct"] == pytest.approx(10.0) and rows[0]["ppl_change_pct"] == 0.0
    assert "ppl_change_low" not in pooled  # no per-text log-likelihoods: the point value only


def _ppl(per_text):
    nll, tok = sum(p[0] for p in per_text), sum(p[1] for p in per_text)
    return {"loss": nll / tok, "ppl": math.exp(nll / tok), "n_tokens": tok, "per_text": per_text}


def test_forgetting_gets_intervals_over_seeds_and_texts_from_per_text_log_likelihoods():
    rng = np.random.default_rng(1)
    tok = rng.integers(10, 60, 25)
    tok[3] = 0  # a one-token text predicts nothing: left out of every ratio
    base_nll = tok * rng.uniform(3.0, 4.0, 25)
    base = _rec("base", None, [0] * 8, ppl=_ppl([[float(n), int(t)] for n, t in zip(base_nll, tok)]))
    nll = {(arm, s): base_nll * rng.uniform(1.0, f, 25) for arm, f in (("a", 1.3), ("b", 1.1)) for s in (0, 1, 2)}
    results = [
        _rec(arm, s, A[s % 2], ppl=_ppl([[float(n), int(t)] for n, t in zip(nll[(arm, s)], tok)]))
        for arm in ("a", "b")
        for s in (0, 1, 2)
    ]
    rows = build_rows(results, base, baseline="a", metric="m")
    pooled = {r["arm"]: r for r in pooled_rows(rows)}
    keep = tok > 0

    def arrays(arm):
        return np.array([nll[(arm, s)][keep] for s in (0, 1, 2)]), np.array([tok[keep]] * 3)

    b = (base_nll[keep], tok[keep])
    want = ppl_change_interval(arrays("b"), b, n_boot=10_000, seed=0)
    got = pooled["b"]
    assert got["ppl_change_pct"] == pytest.approx(want["estimate"])  # the point value is unchanged
    assert (got["ppl_change_low"], got["ppl_change_high"], got["ppl_covers"]) == (
        want["lo"],
        want["hi"],
        "seeds x texts",
    )
    diff = ppl_change_interval(arrays("b"), b, arrays("a"), n_boot=10_000, seed=0)
    assert (got["ppl_diff"], got["ppl_diff_low"], got["ppl_diff_high"]) == (diff["estimate"], diff["lo"], diff["hi"])
    assert got["ppl_seed_diffs"] == diff["per_seed"] and got["ppl_diff_p_holm"] == diff["p"]
    assert got["ppl_diff"] < 0  # b's texts were scaled up less than a's
    assert pooled["a"].get("ppl_diff") is None and pooled["a"]["ppl_covers"] == "seeds x texts"
    seed_row = next(r for r in rows if r["arm"] == "b" and r["seed"] == 0)
    assert seed_row["ppl_covers"] == "texts" and seed_row["ppl_change_low"] < seed_row["ppl_change_pct"]


def test_the_markdown_table_says_what_each_interval_covers():
    from types import SimpleNamespace

    from midblock.reporting.compare_report import markdown

    rng = np.random.default_rng(2)
    res = {arm: {s: rng.integers(0, 2, 20).tolist() for s in range(5)} for arm in ("a", "b", "c")}
    results = [_rec(arm, s, res[arm][s]) for arm in res for s in range(5)]
    rows = build_rows(results, None, baseline="a", metric="m")
    cc = SimpleNamespace(model="m", task="t", eval_task="t", protocol="p", metric="m", baseline="a", seeds=[0, 1])
    text = markdown(cc, rows)
    assert "The 2 arm(s) compared with the baseline" in text and "1 - 0.05/2" in text
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text.splitlines() if line.startswith("|")}
    assert "| seeds x items (5 seeds) |" in lines[("b", "mean(5)")] and "| items |" in lines[("b", "0")]
    assert lines[("a", "mean(5)")].count("|  |") >= 3  # the baseline's difference, Holm p and simultaneous CI
    three = build_rows([r for r in results if r["seed"] < 3], None, baseline="a", metric="m")
    assert "seeds x items (approx., 3 seeds)" in markdown(cc, three)


@pytest.mark.parametrize(
    "sel, text",
    [
        (None, None),
        ({"strategy": "band"}, None),
        ({"strategy": "auto"}, "auto"),
        ({"strategy": "spectrum", "spec": "spectrum:60", "form": "lora"}, "spectrum:60 LoRA"),
        ({"strategy": "spectrum", "spec": "spectrum:60", "embeddings_and_head": True}, "spectrum:60 +emb/head"),
        ({"strategy": "spectrum", "spec": "spectrum:60:blocks", "embeddings_and_head": False}, "spectrum:60:blocks"),
        (
            {"strategy": "lisa", "spec": "lisa:2/20", "embeddings_and_head": False,
             "lisa": {"switches": [{"backward_depth": 3}, {"backward_depth": 4}]}},
            "lisa:2/20 blocks only (depth 3.5/switch)",
        ),
    ],
)  # fmt: skip
def test_selection_text_names_the_form_once(sel, text):
    assert selection_text(sel) == text
