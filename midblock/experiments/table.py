"""The comparison table: one statistic per question, used by ``compare`` and the demo alike.

The pooling rule (one, everywhere):

- **One seed**: accuracy ``k/n`` with its Wilson 95% interval; the difference against the baseline arm of
  the same seed is paired over the same test items (percentile bootstrap of the items).
- **Several seeds** (the ``mean(S)`` row): each test item's correctness is averaged over the seeds, giving
  one score per item in [0, 1]. The arm's accuracy is the mean of those scores, its interval the Wilson
  interval of that mean over the ``n`` items (the test items are the sample; seeds average out training
  noise), and the difference against the baseline is the paired bootstrap over items of the
  seed-averaged scores of the seeds both arms ran. ``seed_sd`` reports the spread of the per-seed
  accuracies beside it. With one seed the pooled row equals the seed's row.

Reporting (``reporting/``) renders these rows and computes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from midblock.evaluation.stats import paired_bootstrap, wilson_interval
from midblock.layers import format_indices

_TRAIN_MEANS = ("median_step_s", "peak_mem_gib", "train_wall_s", "final_loss", "eval_wall_s", "ppl", "ppl_delta")


def correctness(rec: dict[str, Any], metric: str) -> dict[int, float]:
    """Test item index -> 1.0 / 0.0 for one evaluated cell."""
    return {int(it["index"]): float(bool(it["scores"][metric]["correct"])) for it in rec["items"]}


def pooled_scores(recs: list[dict[str, Any]], metric: str) -> dict[int, float]:
    """Per item, correctness averaged over the seeds (the items every seed evaluated)."""
    per_seed = [correctness(r, metric) for r in recs]
    items = sorted(set.intersection(*(set(c) for c in per_seed)))
    return {i: sum(c[i] for c in per_seed) / len(per_seed) for i in items}


def accuracy_row(scores: dict[int, float]) -> dict[str, Any]:
    """Accuracy and Wilson 95% interval of per-item scores (0/1, or seed averages in [0, 1])."""
    n = len(scores)
    k = sum(scores.values())
    lo, hi = wilson_interval(k, n)
    return {"n": n, "accuracy": k / n if n else 0.0, "ci_low": lo, "ci_high": hi}


def paired_difference(mine: dict[int, float], theirs: dict[int, float]) -> dict[str, float] | None:
    """``mine - theirs`` over the items both have, with the paired bootstrap interval."""
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    d = paired_bootstrap([mine[i] for i in common], [theirs[i] for i in common])
    return {"diff_vs_baseline": d["diff"], "diff_low": d["lo"], "diff_high": d["hi"]}


def _band_text(band: list[int] | None) -> str | None:
    if not band:
        return None

    return format_indices(band)


def _train_cols(rec: dict[str, Any]) -> dict[str, Any]:
    tr = rec.get("train")
    if not tr:
        return {}
    mem = tr.get("peak_mem_bytes")
    return {
        "band": _band_text(rec.get("band")),
        "lr": rec.get("lr"),
        "precision": tr.get("precision"),
        "trainable_params": tr.get("trainable_params"),
        "rank_units": tr.get("rank_units"),
        "alpha_over_r": tr.get("scaling"),
        "backward_depth": tr.get("backward_depth"),
        "median_step_s": tr.get("median_step_s"),
        "peak_mem_gib": round(mem / 2**30, 3) if mem else None,
        "train_wall_s": tr.get("wall_s"),
        "final_loss": tr.get("final_loss"),
    }


def _ppl_cols(rec: dict[str, Any], base_ppl: float | None) -> dict[str, Any]:
    if not rec.get("ppl"):
        return {}
    ppl = rec["ppl"]["ppl"]
    return {
        "ppl": ppl,
        "ppl_delta": ppl - base_ppl if base_ppl else None,
        "ppl_change_pct": 100 * (ppl / base_ppl - 1) if base_ppl else None,
    }


def _mean(vals: list[Any]) -> Any:
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(vals) / len(vals) if vals else None


def build_rows(
    results: list[dict[str, Any]], base: dict[str, Any] | None, *, baseline: str, metric: str
) -> list[dict[str, Any]]:
    """One row per (arm, seed), then one pooled ``mean(S)`` row per arm; the base model's row first."""
    base_ppl = base["ppl"]["ppl"] if base and base.get("ppl") else None
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_arm[r["label"]].append(r)
    bl = {r["seed"]: correctness(r, metric) for r in by_arm.get(baseline, [])}
    rows: list[dict[str, Any]] = []
    if base is not None and base.get("eval"):
        rows.append(
            {"arm": "base", "seed": "-", "metric": metric, **accuracy_row(correctness(base, metric))}
            | _ppl_cols(base, base_ppl)
            | {"eval_wall_s": base["eval"].get("wall_s")}
        )
    for arm, recs in by_arm.items():
        recs = sorted(recs, key=lambda r: r["seed"])
        per_seed = []
        for r in recs:
            row = {"arm": arm, "seed": r["seed"], "metric": metric, **accuracy_row(correctness(r, metric))}
            row |= _train_cols(r) | _ppl_cols(r, base_ppl) | {"eval_wall_s": r["eval"].get("wall_s")}
            if r["seed"] in bl:
                row |= paired_difference(correctness(r, metric), bl[r["seed"]]) or {}
            per_seed.append(row)
        rows += per_seed
        rows.append(_pooled_row(arm, recs, per_seed, bl, metric, base_ppl))
    return rows


def _pooled_row(arm, recs, per_seed, bl, metric, base_ppl) -> dict[str, Any]:
    accs = [r["accuracy"] for r in per_seed]
    row: dict[str, Any] = {
        "arm": arm,
        "seed": f"mean({len(recs)})",
        "metric": metric,
        **accuracy_row(pooled_scores(recs, metric)),
        "seed_sd": (sum((a - sum(accs) / len(accs)) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
        if len(accs) > 1
        else None,
    }
    first = per_seed[0]
    for k in ("band", "lr", "precision", "trainable_params", "rank_units", "alpha_over_r", "backward_depth"):
        row[k] = first.get(k)
    for k in _TRAIN_MEANS:
        row[k] = _mean([r.get(k) for r in per_seed])
    if row.get("ppl") is not None and base_ppl:
        row["ppl_change_pct"] = 100 * (row["ppl"] / base_ppl - 1)
    both = [r for r in recs if r["seed"] in bl]
    if both:
        theirs = [bl[r["seed"]] for r in both]
        items = sorted(set.intersection(*(set(x) for x in theirs)))
        pooled_bl = {i: sum(x[i] for x in theirs) / len(theirs) for i in items}
        row |= paired_difference(pooled_scores(both, metric), pooled_bl) or {}
    return row


def pooled_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The base row and each arm's pooled row: one row per system, as the demo shows them."""
    return [r for r in rows if r["seed"] == "-" or str(r["seed"]).startswith("mean(")]
