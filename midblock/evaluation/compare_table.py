"""The comparison table of ``compare``: per-seed and mean rows, paired differences, CSV/Markdown/PNG/JSON."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from midblock.evaluation.stats import mean_ci, paired_bootstrap, wilson_interval

COLUMNS = [
    "arm",
    "seed",
    "metric",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "diff_vs_baseline",
    "diff_low",
    "diff_high",
    "trainable_params",
    "rank_units",
    "alpha_over_r",
    "median_step_s",
    "peak_mem_gib",
    "train_wall_s",
    "eval_wall_s",
    "ppl",
    "ppl_delta",
]


def _correct(rec: dict[str, Any], metric: str) -> dict[int, float]:
    return {int(it["index"]): float(it["scores"][metric]["correct"]) for it in rec["items"]}


def _paired(a: dict[int, float], b: dict[int, float]) -> dict[str, float] | None:
    common = sorted(set(a) & set(b))
    if not common:
        return None
    return paired_bootstrap([a[i] for i in common], [b[i] for i in common])


def _train_cols(tr: dict[str, Any] | None) -> dict[str, Any]:
    if not tr:
        return {}
    mem = tr.get("peak_mem_bytes")
    return {
        "trainable_params": tr.get("trainable_params"),
        "rank_units": tr.get("rank_units"),
        "alpha_over_r": tr.get("scaling"),
        "median_step_s": tr.get("median_step_s"),
        "peak_mem_gib": round(mem / 2**30, 3) if mem else None,
        "train_wall_s": tr.get("wall_s"),
    }


def _mean(vals: list[Any]) -> Any:
    vals = [v for v in vals if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def build_rows(cc, results: list[dict[str, Any]], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per (arm, seed), then one ``seed='mean'`` row per arm; the baseline's rows have diff 0."""
    metric = cc.metric
    base_ppl = base["ppl"]["ppl"] if base and base.get("ppl") else None
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_arm[r["label"]].append(r)
    bl = {r["seed"]: _correct(r, metric) for r in by_arm[cc.baseline]}
    rows: list[dict[str, Any]] = []
    if base is not None and base.get("eval"):
        s = base["eval"]["scores"][metric]
        rows.append(
            {
                "arm": "base (untuned)",
                "seed": "-",
                "metric": metric,
                "n": s["n"],
                "accuracy": s["accuracy"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "ppl": base_ppl,
                "ppl_delta": 0.0 if base_ppl else None,
                "eval_wall_s": base["eval"].get("wall_s"),
            }
        )
    for arm, recs in by_arm.items():
        per_seed = []
        for r in sorted(recs, key=lambda r: r["seed"]):
            s = r["eval"]["scores"][metric]
            row = {
                "arm": arm,
                "seed": r["seed"],
                "metric": metric,
                "n": s["n"],
                "accuracy": s["accuracy"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                **_train_cols(r.get("train")),
                "eval_wall_s": r["eval"].get("wall_s"),
            }
            if r["seed"] in bl:
                d = _paired(_correct(r, metric), bl[r["seed"]])
                if d:
                    row |= {"diff_vs_baseline": d["diff"], "diff_low": d["lo"], "diff_high": d["hi"]}
            if r.get("ppl"):
                row["ppl"] = r["ppl"]["ppl"]
                row["ppl_delta"] = r["ppl"]["ppl"] - base_ppl if base_ppl else None
            per_seed.append(row)
            rows.append(row)
        rows.append(_mean_row(arm, recs, per_seed, bl, metric))
    return rows


def _mean_row(arm, recs, per_seed, bl, metric) -> dict[str, Any]:
    accs = [r["accuracy"] for r in per_seed]
    if len(accs) > 1:
        m = mean_ci(accs)
        lo, hi = m["lo"], m["hi"]
    else:  # one seed: the Wilson interval of that run
        s = recs[0]["eval"]["scores"][metric]
        lo, hi = wilson_interval(s["correct"], s["n"])
    row: dict[str, Any] = {
        "arm": arm,
        "seed": f"mean({len(accs)})",
        "metric": metric,
        "n": per_seed[0]["n"],
        "accuracy": sum(accs) / len(accs),
        "ci_low": lo,
        "ci_high": hi,
    }
    for k in (
        "trainable_params",
        "rank_units",
        "alpha_over_r",
        "median_step_s",
        "peak_mem_gib",
        "train_wall_s",
        "eval_wall_s",
        "ppl",
        "ppl_delta",
    ):
        row[k] = _mean([r.get(k) for r in per_seed])
    # pooled paired difference: per item, correctness averaged over the seeds both arms ran
    seeds = [r["seed"] for r in recs if r["seed"] in bl]
    if seeds:
        mine = [_correct(r, metric) for r in recs if r["seed"] in seeds]
        theirs = [bl[s] for s in seeds]
        items = sorted(set.intersection(*(set(x) for x in mine + theirs)))
        if items:
            a = [sum(x[i] for x in mine) / len(mine) for i in items]
            b = [sum(x[i] for x in theirs) / len(theirs) for i in items]
            d = paired_bootstrap(a, b)
            row |= {"diff_vs_baseline": d["diff"], "diff_low": d["lo"], "diff_high": d["hi"]}
    return row


# --------------------------------------------------------------------------- outputs


def _pct(x: Any) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    if x is None:
        return ""
    if isinstance(x, float) and x == int(x) and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:,}" if isinstance(x, int) else fmt.format(x)


def markdown(cc, rows: list[dict[str, Any]]) -> str:
    head = (
        f"Model `{cc.model}`, trained on `{cc.task}`, evaluated on `{cc.eval_task}` with protocol "
        f"`{cc.protocol}` (metric `{cc.metric}`); baseline `{cc.baseline}`; seeds {cc.seeds}. "
        "Accuracy in %, 95% intervals: Wilson per seed, t over seeds for means; differences paired over the "
        "same items (bootstrap).\n\n"
    )
    cols = [
        "arm",
        "seed",
        "n",
        "accuracy % [95% CI]",
        "diff vs baseline [95% CI]",
        "trainable params",
        "rank units",
        "alpha/r",
        "step s",
        "peak mem GiB",
        "train wall s",
        "eval wall s",
        "ppl (delta)",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        diff = (
            ""
            if r.get("diff_vs_baseline") is None
            else (f"{100 * r['diff_vs_baseline']:+.1f} [{100 * r['diff_low']:+.1f}, {100 * r['diff_high']:+.1f}]")
        )
        ppl = (
            ""
            if r.get("ppl") is None
            else f"{r['ppl']:.3f}" + ("" if r.get("ppl_delta") is None else f" ({r['ppl_delta']:+.3f})")
        )
        cells = [
            str(r["arm"]),
            str(r["seed"]),
            str(r["n"]),
            f"{_pct(r['accuracy'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
            diff,
            _num(r.get("trainable_params"), "{:,.0f}"),
            _num(r.get("rank_units"), "{:.0f}"),
            _num(r.get("alpha_over_r")),
            _num(r.get("median_step_s")),
            _num(r.get("peak_mem_gib")),
            _num(r.get("train_wall_s"), "{:.1f}"),
            _num(r.get("eval_wall_s"), "{:.1f}"),
            ppl,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot_png(cc, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from midblock.io import atomic_path

    means = [r for r in rows if str(r["seed"]).startswith("mean") or r["seed"] == "-"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(means) + 2), 4.0))
    for x, m in enumerate(means):
        ax.errorbar(
            [x],
            [100 * m["accuracy"]],
            yerr=[[100 * (m["accuracy"] - m["ci_low"])], [100 * (m["ci_high"] - m["accuracy"])]],
            fmt="o",
            color="C0",
            capsize=4,
        )
        seeds = [r for r in rows if r["arm"] == m["arm"] and not str(r["seed"]).startswith("mean") and r is not m]
        for j, r in enumerate(seeds):
            ax.plot([x + 0.12 + 0.05 * j], [100 * r["accuracy"]], ".", color="C1", alpha=0.8)
        if m["arm"] == cc.baseline:
            ax.axhline(100 * m["accuracy"], color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(means)), [m["arm"] for m in means], rotation=30, ha="right")
    ax.set_ylabel(f"{cc.metric} accuracy (%)")
    ax.set_title(f"{cc.model} on {cc.eval_task} ({cc.protocol}); mean and 95% CI, dots: seeds", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_outputs(cc, rows: list[dict[str, Any]], out: Path, wall_s: float) -> None:
    from dataclasses import asdict

    from midblock.io import provenance, write_csv, write_json, write_text

    write_csv(out / "compare.csv", rows, fieldnames=COLUMNS)
    write_text(out / "compare.md", markdown(cc, rows))
    plot_png(cc, rows, out / "compare.png")
    write_json(out / "compare.json", {"rows": rows, "wall_s": wall_s, **provenance(asdict(cc), cc.seeds)})
