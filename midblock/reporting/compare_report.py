"""Rendering of a comparison (``compare`` and the demo): CSV, Markdown, PNG and JSON; no statistics here.

The rows come from :func:`midblock.experiments.table.build_rows`, which owns the one pooling rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.io import atomic_path, provenance, write_csv, write_json, write_text
from midblock.layers import index_runs, resolve_layers

if TYPE_CHECKING:
    from midblock.experiments.grid import CompareConfig

COLUMNS = [
    "arm",
    "seed",
    "band",
    "selection",
    "lr",
    "precision",
    "metric",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "ci_covers",
    "approximate",
    "n_seeds",
    "seed_accuracies",
    "seed_sd",
    "diff_vs_baseline",
    "diff_low",
    "diff_high",
    "diff_covers",
    "seed_diffs",
    "diff_p",
    "diff_p_holm",
    "diff_sim_low",
    "diff_sim_high",
    "n_comparisons",
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
    "ppl_change_low",
    "ppl_change_high",
    "ppl_covers",
    "ppl_seed_changes",
    "ppl_diff",
    "ppl_diff_low",
    "ppl_diff_high",
    "ppl_diff_p",
    "ppl_diff_p_holm",
    "ppl_seed_diffs",
]


def _pct(x: Any) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    if x is None:
        return ""
    if isinstance(x, float) and x == int(x) and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:,}" if isinstance(x, int) else fmt.format(x)


def _p(x: Any) -> str:
    return "" if x is None else "<0.001" if x < 0.001 else f"{x:.3f}"


def interval_text(r: dict[str, Any], key: str, low: str, high: str, scale: float = 100) -> str:
    """``+1.2 [-0.3, +2.7]`` from a row's estimate and interval (empty where the row has none)."""
    if r.get(key) is None:
        return ""
    if r.get(low) is None:
        return f"{scale * r[key]:+.1f}"
    return f"{scale * r[key]:+.1f} [{scale * r[low]:+.1f}, {scale * r[high]:+.1f}]"


def _covers(r: dict[str, Any]) -> str:
    """What the row's intervals cover: test items (one seed), or seeds x items (approximate under 5 seeds)."""
    cov = r.get("ci_covers") or "items"
    if r.get("n_seeds", 1) > 1:
        cov += f" ({'approx., ' if r.get('approximate') else ''}{r['n_seeds']} seeds)"
    return cov


def _seed_list(vals: list[float] | None, scale: float = 100) -> str:
    return "" if not vals else ", ".join(f"{scale * v:+.1f}" for v in vals)


def _precisions(rows: list[dict[str, Any]]) -> str:
    """The resolved training precision(s) of the rows (fp32, bf16), or a dash when nothing was trained."""
    used = sorted({str(r["precision"]) for r in rows if r.get("precision")})
    return ", ".join(used) or "-"


def markdown(cc: CompareConfig, rows: list[dict[str, Any]]) -> str:
    m = max((r.get("n_comparisons") or 0 for r in rows), default=0)
    head = (
        f"Model `{cc.model}`, trained on `{cc.task}`, evaluated on `{cc.eval_task}` with protocol "
        f"`{cc.protocol}` (metric `{cc.metric}`); baseline `{cc.baseline}`; seeds {cc.seeds}. "
        "Accuracy and differences in % (points). 95% intervals, and what each covers (column 'intervals "
        "cover'): per seed, Wilson over the test items and a paired bootstrap of the items for the difference "
        "(test items only); `mean(S)` rows, a two-level bootstrap resampling the seeds and the test items (seeds "
        "x items), approximate with fewer than 5 seeds; differences paired over the same seeds and items, with "
        "the per-seed differences beside. "
        + (
            f"The {m} arm(s) compared with the baseline are corrected for multiplicity: Holm-adjusted bootstrap "
            f"p-values and Bonferroni simultaneous intervals (each at level 1 - 0.05/{m}). "
            if m
            else ""
        )
        + "Forgetting: perplexity on general text and its change against the base model, with an interval over "
        "seeds x texts where the cells stored per-text log-likelihoods. "
        "Peak memory: the training run's own peak (RSS on a CPU, allocated memory on a GPU). "
        f"Training precision: {_precisions(rows)}.\n\n"
    )
    cols = [
        "arm",
        "seed",
        "blocks",
        "n",
        "accuracy % [95% CI]",
        "diff vs baseline, points [95% CI]",
        "Holm p",
        "simultaneous CI",
        "per-seed diffs",
        "intervals cover",
        "trainable params",
        "rank units",
        "alpha/r",
        "step s",
        "peak mem GiB",
        "train wall s",
        "eval wall s",
        "ppl (delta)",
        "ppl change % [95% CI]",
        "ppl change vs baseline, points [95% CI]",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        sim = (
            ""
            if r.get("diff_sim_low") is None
            else f"[{100 * r['diff_sim_low']:+.1f}, {100 * r['diff_sim_high']:+.1f}]"
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
            _blocks_text(r),
            str(r["n"]),
            f"{_pct(r['accuracy'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
            interval_text(r, "diff_vs_baseline", "diff_low", "diff_high"),
            _p(r.get("diff_p_holm")),
            sim,
            _seed_list(r.get("seed_diffs")),
            _covers(r),
            _num(r.get("trainable_params"), "{:,.0f}"),
            _num(r.get("rank_units"), "{:.0f}"),
            _num(r.get("alpha_over_r")),
            _num(r.get("median_step_s")),
            _num(r.get("peak_mem_gib")),
            _num(r.get("train_wall_s"), "{:.1f}"),
            _num(r.get("eval_wall_s"), "{:.1f}"),
            ppl,
            interval_text(r, "ppl_change_pct", "ppl_change_low", "ppl_change_high", scale=1),
            interval_text(r, "ppl_diff", "ppl_diff_low", "ppl_diff_high", scale=1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def summary_markdown(rows: list[dict[str, Any]], baseline: str) -> str:
    """The pooled rows as a short table for a report (what `export --mode derive --format markdown` prints):
    accuracy and forgetting with their intervals, the differences against ``baseline`` with the multiplicity
    adjustment, and a sentence saying what each interval covers."""
    pooled = [r for r in rows if r["seed"] == "-" or str(r["seed"]).startswith("mean(")]
    arms = [r for r in pooled if r["arm"] != "base"]
    cover = _covers(arms[0]) if arms else "items"
    m = max((r.get("n_comparisons") or 0 for r in arms), default=0)
    mf = sum(r.get("ppl_diff_p_holm") is not None for r in arms)
    lines = [
        f"95% intervals over {cover}"
        + (f"; {m} arm(s) against `{baseline}`: Holm-adjusted p, Bonferroni simultaneous intervals" if m else "")
        + "; forgetting: general-text perplexity change against the base model"
        + (
            f", interval over {arms[0]['ppl_covers']}"
            + (f"; its differences against `{baseline}`: Holm-adjusted p over {mf} arm(s)" if mf else "")
            if arms and arms[0].get("ppl_covers")
            else ", no interval (the cells hold no per-text log-likelihoods)"
        )
        + ".",
        "",
        f"| arm | trained blocks | trainable params | accuracy % [95% CI] | vs {baseline}, points [95% CI] | Holm p "
        f"| simultaneous 95% CI | perplexity change [95% CI] | vs {baseline}, points [95% CI] | Holm p |",
        "|---|---|---:|---|---|---:|---|---|---|---:|",
    ]
    for r in pooled:
        sim = r.get("diff_sim_low")
        cells = [
            str(r["arm"]),
            _blocks_text(r),
            _num(r.get("trainable_params"), "{:,.0f}"),
            f"{_pct(r['accuracy'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]",
            interval_text(r, "diff_vs_baseline", "diff_low", "diff_high"),
            _p(r.get("diff_p_holm")),
            "" if sim is None else f"[{100 * sim:+.1f}, {100 * r['diff_sim_high']:+.1f}]",
            "" if r["arm"] == "base" else _ppl_change_text(r),
            interval_text(r, "ppl_diff", "ppl_diff_low", "ppl_diff_high", scale=1),
            _p(r.get("ppl_diff_p_holm")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _blocks_text(r: dict[str, Any]) -> str:
    """The trained blocks, after what the selection says beyond the arm's own name (``cka-select:0.5`` arm:
    ``0-1,3-4,...``; ``lisa:18/20:blocks``: ``(depth 29.6/switch) 0-29``)."""
    sel, arm = r.get("selection") or "", str(r["arm"])
    if sel == arm or sel.startswith(arm + " "):  # the whole name only: arm `lisa` keeps `lisa:18/20:blocks`
        sel = sel[len(arm) :].strip()
    return " ".join(x for x in (sel, r.get("band")) if x)


def _ppl_change_text(r: dict[str, Any]) -> str:
    """``+38.4% [+35.5, +41.5]`` (the interval where the row has one; empty without a measurement)."""
    if r.get("ppl_change_pct") is None:
        return ""
    low, high = r.get("ppl_change_low"), r.get("ppl_change_high")
    return f"{r['ppl_change_pct']:+.1f}%" + ("" if low is None else f" [{low:+.1f}, {high:+.1f}]")


def csv_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with per-seed lists written as space-separated numbers (one CSV cell each)."""
    return [{k: " ".join(f"{x:.6g}" for x in v) if isinstance(v, list) else v for k, v in r.items()} for r in rows]


def plot_png(cc: CompareConfig, rows: list[dict[str, Any]], path: Path) -> None:
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
    cover = means[-1].get("ci_covers") or "items"
    ax.set_title(f"{cc.model} on {cc.eval_task} ({cc.protocol}); mean, 95% CI over {cover}; dots: seeds", fontsize=9)
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
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.0, 6.4), sharex=True)
    for k, r in enumerate(arms):
        color = f"C{k}"
        # one segment per run of consecutive trained blocks: a scattered selection (CKA-select) shows its gaps
        for j, (a, b) in enumerate(index_runs(resolve_layers(r["band"], num_layers))):
            x = [a / num_layers, (b + 1) / num_layers]
            top.fill_between(x, 100 * r["ci_low"], 100 * r["ci_high"], color=color, alpha=0.15)
            label = f"{r['arm']} (blocks {r['band']})" if j == 0 else None
            top.plot(x, [100 * r["accuracy"]] * 2, color=color, lw=2.5, label=label)
            if r.get("ppl_change_pct") is not None:
                bottom.plot(x, [r["ppl_change_pct"]] * 2, color=color, lw=2.5)
                if r.get("ppl_change_low") is not None:
                    bottom.fill_between(x, r["ppl_change_low"], r["ppl_change_high"], color=color, alpha=0.15)
    top.set_ylabel("accuracy % (95% interval,\n" + (arms[0].get("ci_covers") if arms else "items") + ")")
    # below the axes: inside them the legend hid the intervals it names
    fig.legend(fontsize=7, loc="lower center", ncol=2, frameon=False)
    legend_h = 0.035 * ((len(arms) + 1) // 2) + 0.01
    bottom.axhline(0, color="grey", lw=0.8, ls="--")
    shown = "95% interval" if any(r.get("ppl_change_low") is not None for r in arms) else "no interval"
    bottom.set_ylabel(f"perplexity change %\n(general text, {shown})")
    bottom.set_xlabel("relative depth of the trained blocks (block i spans [i/L, (i+1)/L))")
    bottom.set_xlim(0, 1)
    if title:
        top.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, legend_h, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_outputs(
    cc: CompareConfig, rows: list[dict[str, Any]], out: Path, wall_s: float, extra: dict | None = None
) -> None:
    from dataclasses import asdict

    write_csv(out / "compare.csv", csv_rows(rows), fieldnames=COLUMNS)
    note = edge_note((extra or {}).get("lr_search") or [])
    write_text(out / "compare.md", markdown(cc, rows) + (f"\n{note}\n" if note else ""))
    plot_png(cc, rows, out / "compare.png")
    if (extra or {}).get("num_layers"):
        title = f"{cc.model} on {cc.eval_task}: accuracy and forgetting by trained band"
        plot_landscape(rows, extra["num_layers"], out / "landscape.png", title)
    write_json(
        out / "compare.json", {"rows": rows, "wall_s": wall_s, **(extra or {}), **provenance(asdict(cc), cc.seeds)}
    )


def write_lr_search(rows: list[dict[str, Any]], out: Path, metric: str) -> None:
    """The learning-rate search: each arm's dev accuracy at each rate, the chosen rate marked."""

    extended = any(r.get("extended") for r in rows)
    why = "; (extended): a rate tried past the end of the arm's grid (lr_search.extend)" if extended else ""
    lines = [
        f"Learning-rate search on the dev split (metric `{metric}`, one seed); the chosen rate is marked{why}.\n",
        "| arm | lr | dev n | dev accuracy % | chosen | chosen at the grid's edge |",
        "|---|---:|---:|---:|:---:|:---:|",
    ]
    for r in rows:
        mark = "yes" if r["chosen"] else ""
        edge = (r.get("edge") or "") if r["chosen"] else ""
        lr = f"{r['lr']:g}" + (" (extended)" if r.get("extended") else "")
        lines.append(f"| {r['arm']} | {lr} | {r['n']} | {_pct(r['dev_accuracy'])} | {mark} | {edge} |")
    note = edge_note(rows)
    write_text(out / "lr_search.md", "\n".join(lines) + "\n" + (f"\n{note}\n" if note else ""))


def edge_note(search: list[dict[str, Any]]) -> str:
    """A sentence naming the arms whose chosen rate is the lowest or highest of their grid ('' when none)."""
    hits = [f"{r['arm']} ({r['lr']:g}, the {r['edge']})" for r in search if r.get("chosen") and r.get("edge")]
    if not hits:
        return ""
    return (
        "Learning rate chosen at the edge of its arm's grid (the best rate may lie outside the grid): "
        + ", ".join(hits)
        + "."
    )
