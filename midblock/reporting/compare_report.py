"""Rendering of a comparison (``compare`` and the demo): CSV, Markdown, PNG and JSON; no statistics here.

The rows come from :func:`midblock.experiments.table.build_rows`, which owns the one pooling rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midblock.io import atomic_path, provenance, write_csv, write_json, write_text
from midblock.layers import resolve_layers

COLUMNS = [
    "arm",
    "seed",
    "band",
    "lr",
    "precision",
    "metric",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "seed_sd",
    "diff_vs_baseline",
    "diff_low",
    "diff_high",
    "trainable_params",
    "rank_units",
    "alpha_over_r",
    "backward_depth",
    "median_step_s",
    "peak_mem_gib",
    "train_wall_s",
    "final_loss",
    "eval_wall_s",
    "ppl",
    "ppl_delta",
    "ppl_change_pct",
]


def _pct(x: Any) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    if x is None:
        return ""
    if isinstance(x, float) and x == int(x) and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:,}" if isinstance(x, int) else fmt.format(x)


def _precisions(rows: list[dict[str, Any]]) -> str:
    """The resolved training precision(s) of the rows (fp32, bf16), or a dash when nothing was trained."""
    used = sorted({str(r["precision"]) for r in rows if r.get("precision")})
    return ", ".join(used) or "-"


def markdown(cc, rows: list[dict[str, Any]]) -> str:
    head = (
        f"Model `{cc.model}`, trained on `{cc.task}`, evaluated on `{cc.eval_task}` with protocol "
        f"`{cc.protocol}` (metric `{cc.metric}`); baseline `{cc.baseline}`; seeds {cc.seeds}. "
        "Accuracy in %. 95% intervals: Wilson over the test items, per seed and for the `mean(S)` rows (each "
        "item's correctness averaged over the seeds); differences paired over the same items (bootstrap). "
        "Peak memory: the training run's own peak (RSS on a CPU, allocated memory on a GPU). "
        f"Training precision: {_precisions(rows)}.\n\n"
    )
    cols = [
        "arm",
        "seed",
        "blocks",
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
            if r.get("diff_vs_baseline") is None or r["arm"] == cc.baseline  # not against itself
            else (f"{100 * r['diff_vs_baseline']:+.1f} [{100 * r['diff_low']:+.1f}, {100 * r['diff_high']:+.1f}]")
        )
        ppl = (
            ""
            if r.get("ppl") is None
            else f"{r['ppl']:.3f}"
            + ("" if r.get("ppl_delta") is None or r["arm"] == "base" else f" ({r['ppl_delta']:+.3f})")
        )
        cells = [
            str(r["arm"]),
            str(r["seed"]),
            r.get("band") or "",
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


def plot_landscape(rows: list[dict[str, Any]], num_layers: int, path: Path, title: str = "") -> None:
    """Accuracy (95% interval) and forgetting per arm, each drawn over the blocks it trained (depth axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [r for r in rows if str(r["seed"]).startswith("mean(") and r.get("band")]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 5.6), sharex=True)
    for k, r in enumerate(arms):
        idx = resolve_layers(r["band"], num_layers)
        x0, x1 = idx[0] / num_layers, (idx[-1] + 1) / num_layers
        color = f"C{k}"
        top.fill_between([x0, x1], 100 * r["ci_low"], 100 * r["ci_high"], color=color, alpha=0.15)
        top.plot([x0, x1], [100 * r["accuracy"]] * 2, color=color, lw=2.5, label=f"{r['arm']} (blocks {r['band']})")
        if r.get("ppl_change_pct") is not None:
            bottom.plot([x0, x1], [r["ppl_change_pct"]] * 2, color=color, lw=2.5)
    top.set_ylabel("accuracy % (95% interval)")
    top.legend(fontsize=7, loc="best")
    bottom.axhline(0, color="grey", lw=0.8, ls="--")
    bottom.set_ylabel("perplexity change %\n(general text)")
    bottom.set_xlabel("relative depth of the trained blocks (block i spans [i/L, (i+1)/L))")
    bottom.set_xlim(0, 1)
    if title:
        top.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_outputs(cc, rows: list[dict[str, Any]], out: Path, wall_s: float, extra: dict | None = None) -> None:
    from dataclasses import asdict

    write_csv(out / "compare.csv", rows, fieldnames=COLUMNS)
    write_text(out / "compare.md", markdown(cc, rows))
    plot_png(cc, rows, out / "compare.png")
    if (extra or {}).get("num_layers"):
        title = f"{cc.model} on {cc.eval_task}: accuracy and forgetting by trained band"
        plot_landscape(rows, extra["num_layers"], out / "landscape.png", title)
    write_json(
        out / "compare.json", {"rows": rows, "wall_s": wall_s, **(extra or {}), **provenance(asdict(cc), cc.seeds)}
    )


def write_lr_search(rows: list[dict[str, Any]], out: Path, metric: str) -> None:
    """The learning-rate search: each arm's dev accuracy at each rate, the chosen rate marked."""

    lines = [
        f"Learning-rate search on the dev split (metric `{metric}`, one seed); the chosen rate is marked.\n",
        "| arm | lr | dev n | dev accuracy % | chosen |",
        "|---|---:|---:|---:|:---:|",
    ]
    for r in rows:
        mark = "yes" if r["chosen"] else ""
        lines.append(f"| {r['arm']} | {r['lr']:g} | {r['n']} | {_pct(r['dev_accuracy'])} | {mark} |")
    write_text(out / "lr_search.md", "\n".join(lines) + "\n")
