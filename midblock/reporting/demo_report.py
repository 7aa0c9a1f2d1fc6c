"""The demo's table, figures and report sections (one self-contained ``report.html``).

Renders the rows that :mod:`midblock.experiments.table` computed; no statistics are computed here.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.io import read_jsonl_tolerant, write_csv, write_text
from midblock.models.introspect import get_layout
from midblock.models.skeleton import load_skeleton
from midblock.reporting.compare_report import COLUMNS, interval_text
from midblock.reporting.report import Section, add_section, esc, render_report, table_html

if TYPE_CHECKING:
    from midblock.experiments.demo import DemoConfig

# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rows: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    xs = range(len(rows))
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["ci_low"] for a, r in zip(acc, rows)], [r["ci_high"] - a for a, r in zip(acc, rows)]]
    ax.bar(xs, acc, color=["#999999", "#4477aa", "#ee6677"][: len(rows)], yerr=err, capsize=6)
    ax.set_xticks(list(xs), [r["arm"] for r in rows])
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_ylim(0, max(0.05, max(r["ci_high"] for r in rows) * 1.15))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(arms: dict[str, list[str]], path: Path) -> None:
    """Training loss per optimizer step; ``arms`` maps each arm to its run directories (one per seed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for arm, color in zip(arms, ["#4477aa", "#ee6677", "#228833"]):
        for i, run_dir in enumerate(arms[arm]):
            log = [x for x in read_jsonl_tolerant(Path(run_dir) / "train_log.jsonl") if "loss" in x]
            ax.plot(
                [x["step"] for x in log],
                [x["loss"] for x in log],
                color=color,
                alpha=1.0 if i == 0 else 0.4,
                label=arm if i == 0 else None,
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_change_profile(
    metrics_csv: Path, bands: dict[str, list[int]], num_layers: int, path: Path, names: dict[str, str] | None = None
) -> bool:
    """1 - CKA (base vs tuned) per layer, with each arm's trained blocks shaded; ``names`` maps the analysis'
    variant names to the arms' labels."""
    if not metrics_csv.exists():
        return False
    series: dict[str, list[tuple[float, float]]] = {}
    with open(metrics_csv) as f:
        for r in csv.DictReader(f):
            if r["metric"] == "cka" and r["variant"] != "base":
                name = (names or {}).get(r["variant"], r["variant"])
                series.setdefault(name, []).append((float(r["depth"]), 1 - float(r["value"])))
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    colors = ["#4477aa", "#ee6677", "#228833", "#ccbb44"]
    for (name, pts), color in zip(sorted(series.items()), colors):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=color, label=name)
    for (arm, idx), color in zip(bands.items(), ["#4477aa", "#ee6677"]):
        if idx and len(idx) < num_layers:
            # layer index l = output of block l-1: block i spans depth (i, i+1] / L
            ax.axvspan(
                idx[0] / num_layers,
                (idx[-1] + 1) / num_layers,
                color=color,
                alpha=0.12,
                label=f"{arm}: blocks {idx[0]}-{idx[-1]}",
            )
    ax.set_xlabel("relative depth (layer index / L)")
    ax.set_ylabel("1 - CKA(base, tuned)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- report


def format_table(rows: list[dict], baseline: str = "lora") -> str:
    """The terminal summary table (one row per system: the base and each arm pooled over its seeds); the
    baseline's difference and the base's perplexity change, each against itself, are left empty."""
    cols = [
        ("arm", "{}"),
        ("band", "{}"),
        ("accuracy", "{:.3f}"),
        ("ci_low", "{:.3f}"),
        ("ci_high", "{:.3f}"),
        ("diff_vs_baseline", "{:+.3f}"),
        ("diff_low", "{:+.3f}"),
        ("diff_high", "{:+.3f}"),
        ("trainable_params", "{:,}"),
        ("rank_units", "{}"),
        ("alpha_over_r", "{:.2f}"),
        ("median_step_s", "{:.2f}"),
        ("peak_mem_gib", "{:.2f}"),
        ("ppl_change_pct", "{:+.1f}"),
    ]
    head = [c for c, _ in cols]
    body = []
    for r in rows:
        against_itself = DIFF_KEYS if r["arm"] == baseline else ("ppl_change_pct",) if r["arm"] == "base" else ()
        shown = {k: v for k, v in r.items() if k not in against_itself}
        body.append([("" if shown.get(c) is None else f.format(shown[c])) for c, f in cols])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def verdict(rows: list[dict]) -> str:
    """What the numbers do and do not support, in plain words."""
    by = {r["arm"]: r for r in rows}
    out = []
    mid, lora = by.get("midblock"), by.get("lora")
    if mid and lora and mid.get("diff_vs_baseline") is not None:
        d, lo, hi = mid["diff_vs_baseline"], mid["diff_low"], mid["diff_high"]
        if lo <= 0 <= hi:
            out.append(
                f"Mid-block minus all-block LoRA: {d:+.3f} accuracy, paired 95% interval [{lo:+.3f}, {hi:+.3f}]. "
                "The interval contains 0: this run does not show a difference in accuracy between the arms."
            )
        else:
            better = "better" if d > 0 else "worse"
            out.append(
                f"Mid-block LoRA scored {better} than all-block LoRA by {abs(d):.3f} (paired 95% interval "
                f"[{lo:+.3f}, {hi:+.3f}], excluding 0) on these items, at matched rank units and alpha/r."
            )
        if mid.get("median_step_s") and lora.get("median_step_s") and mid.get("peak_mem_gib"):
            out.append(
                f"A mid-block training step took {mid['median_step_s'] / lora['median_step_s']:.2f}x the time of "
                f"an all-block step, at {mid['peak_mem_gib'] / lora['peak_mem_gib']:.2f}x the peak memory (each "
                "run's own peak: RSS on a CPU, from a trimmed start; allocated memory on a GPU)."
            )
    if mid and lora and mid.get("ppl_change_pct") is not None and lora.get("ppl_change_pct") is not None:
        out.append(
            f"Perplexity on general text changed by {lora['ppl_change_pct']:+.1f}% (all-block) and "
            f"{mid['ppl_change_pct']:+.1f}% (mid-block) against the base: the forgetting check."
        )
    base = by.get("base")
    if base and base["ci_high"] < 0.1:
        out.append(
            "The base model rarely produces the `#### N` answer format zero-shot, so its low score measures "
            "format as much as arithmetic."
        )
    if lora:
        width = 100 * (lora["ci_high"] - lora["ci_low"])
        out.append(
            f"With {lora['n']} items, the 95% interval on all-block LoRA's accuracy alone spans {width:.0f} points: "
            "small differences are not evidence. Use `--profile full` (more items, three seeds)."
        )
    return " ".join(out)


# the compare table's columns, less what the demo's one-row-per-arm table does not need
REPORT_COLUMNS = [c for c in COLUMNS if c not in ("lr", "metric", "n", "train_wall_s", "eval_wall_s", "ppl_delta")]
DIFF_KEYS = ("diff_vs_baseline", "diff_low", "diff_high")


def _interval(x: Any, lo: Any, hi: Any, scale: float = 100.0, sign: str = "") -> str:
    if x is None:
        return ""
    return f"{scale * x:{sign}.1f} [{scale * lo:{sign}.1f}, {scale * hi:{sign}.1f}]"


def _fmt(x: Any, fmt: str) -> str:
    return "" if x is None else fmt.format(x)


def _ppl_change(r: dict) -> str:
    """The perplexity change against the base (%), with its interval and what it covers where the row has one
    (cells that stored per-text log-likelihoods: texts, or seeds x texts)."""
    text = interval_text(r, "ppl_change_pct", "ppl_change_low", "ppl_change_high", scale=1)
    return f"{text} ({r['ppl_covers']})" if r.get("ppl_change_low") is not None and r.get("ppl_covers") else text


def results_table(rows: list[dict], baseline: str) -> str:
    """What each system scored: accuracy, the paired difference against the baseline arm (empty on the
    baseline itself), the spread over seeds and the forgetting check. Fits a laptop screen."""
    cols = [
        "system",
        "blocks trained",
        "n",
        "accuracy % [95% CI]",
        f"minus {baseline}, points [95% CI]",
        "seed sd, points",
        "general-text ppl change % [95% CI]",
    ]
    out = []
    for r in rows:
        d = (r.get("diff_vs_baseline"), r.get("diff_low"), r.get("diff_high"))
        diff = "" if r["arm"] == baseline else _interval(*d, sign="+")  # not against itself
        out.append(
            dict(
                zip(
                    cols,
                    [
                        r["arm"],
                        r.get("band") or ("-" if r["arm"] == "base" else ""),
                        r.get("n"),
                        _interval(r["accuracy"], r["ci_low"], r["ci_high"]),
                        diff,
                        _fmt(None if r.get("seed_sd") is None else 100 * r["seed_sd"], "{:.1f}"),
                        "" if r["arm"] == "base" else _ppl_change(r),
                    ],
                )
            )
        )
    return table_html(out, cols)


def cost_table(rows: list[dict]) -> str:
    """What each tuned arm cost: the budget it was matched on and the measured step time and memory."""
    cols = ["arm", "trainable params", "rank units", "alpha/r", "precision", "median step s", "peak memory GiB"]
    out = []
    for r in rows:
        if r["arm"] == "base":
            continue
        vals = [
            r["arm"],
            _fmt(r.get("trainable_params"), "{:,}"),
            _fmt(r.get("rank_units"), "{}"),
            _fmt(r.get("alpha_over_r"), "{:.2f}"),
            r.get("precision") or "",
            _fmt(r.get("median_step_s"), "{:.2f}"),
            _fmt(r.get("peak_mem_gib"), "{:.2f}"),
        ]
        out.append(dict(zip(cols, vals)))
    return table_html(out, cols)


def write_demo_report(out: Path, config: DemoConfig, summary: dict[str, Any], cells: list[dict[str, Any]]) -> Path:
    rows = summary["comparison"]
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    write_csv(out / "comparison.csv", rows, fieldnames=REPORT_COLUMNS)  # data: the baseline's 0 difference kept
    plot_accuracy(rows, figs / "accuracy.png")
    runs: dict[str, list[str]] = {}
    bands: dict[str, list[int]] = {}
    for c in sorted(cells, key=lambda c: c["seed"]):
        runs.setdefault(c["label"], []).append(c["run_dir"])
        bands.setdefault(c["label"], c.get("band") or [])
    plot_losses(runs, figs / "training_loss.png")
    prov = summary["provenance"]
    L = _num_layers(config.model)
    has_profile = plot_change_profile(
        out / "analysis" / "metrics.csv", bands, L, figs / "change_profile.png", summary.get("variant_arms")
    )
    md = ["| " + " | ".join(REPORT_COLUMNS) + " |", "|" + "---|" * len(REPORT_COLUMNS)]
    md += ["| " + " | ".join(_cell(_shown(r, c, summary)) for c in REPORT_COLUMNS) + " |" for r in rows]
    write_text(out / "comparison.md", "\n".join(md) + "\n")

    g = summary["settings"]
    t = g["train"]
    baseline = g.get("baseline") or "lora"
    lora, mid = (m for m in g["methods"])
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in summary["timings_s"].items())
    what = (
        f"<p>Model <code>{esc(config.model)}</code>, task <code>{esc(config.task)}</code>, profile "
        f"<code>{esc(config.profile)}</code>. Two arms trained from the same base with the same data order, "
        f"seed(s) {esc(', '.join(map(str, g['seeds'])))}; {t['steps']} optimizer steps of {t['batch_size']} "
        f"examples, {_lr_text(g)}, completion-only loss: <b>lora</b> = LoRA r{lora['rank']} on the "
        "attention projections of every block; <b>midblock</b> = LoRA on the band "
        f"<code>{esc(mid['band'])}</code> only ({esc(summary['band']['why'])}), its rank raised so the rank "
        "units match, alpha/r equal. Evaluation: zero-shot <code>Question: ...\\nAnswer:</code>, greedy, up to "
        f"{g['max_new_tokens']} new tokens, harness stop strings, scored by the first <code>#### N</code> "
        f"(protocol <code>original</code>) on {g['eval_items']} held-out problems; forgetting = perplexity on "
        f"{_probe_texts(g['forgetting'])} texts of the general-text probe bundled with midblock. "
        f"{esc(_precision_text(t.get('precision', 'auto'), rows))} The numbers are those of "
        "<code>midblock compare</code> on the same grid (<code>compare/compare.md</code>).</p>"
        f"<p>Wall time {summary['wall_s']:.0f} s ({esc(timings)})."
        f" Versions: {esc(', '.join(f'{k} {v}' for k, v in prov['versions'].items()))}. Hardware: "
        f"{esc(_hardware_text(prov['hardware']))}.</p>"
    )
    add_section(out, Section("run", "What was run", what, order=10), render=False)
    add_section(
        out,
        Section(
            "comparison",
            "Comparison",
            "<p>Accuracy in % of the held-out problems; differences in percentage points, paired over the "
            f"same problems against <b>{esc(baseline)}</b> (bootstrap). Intervals cover the test items"
            f"{' and, pooled, the seeds' if len(g['seeds']) > 1 else ''}.</p>"
            + results_table(rows, baseline)
            + f'<p class="note">{esc(verdict(rows))}</p>'
            + "<p>Cost of each arm (matched budgets: the same rank units and alpha/r). Step time and memory are "
            "this machine's, in the precision shown.</p>" + cost_table(rows),
            ["figures/accuracy.png"],
            order=20,
        ),
        render=False,
    )
    rec = summary.get("recommended_band") or {}
    rec_html = (
        f"<p>From the base model alone (gradient norms on the tuning data, similarity of consecutive layers) "
        f"the analysis recommends the band <code>{esc(rec.get('spec'))}</code> "
        f"(blocks {esc(rec.get('indices'))}). Rule: {esc(rec.get('rule', ''))}</p>"
        '<p>Details: <a href="analysis-base/report.html">base analysis</a>, '
        '<a href="analysis/report.html">base vs tuned analysis</a>.</p>'
    )
    images = ["figures/change_profile.png"] if has_profile else []
    images += [
        f"analysis/{p.relative_to(out / 'analysis')}" for p in sorted((out / "analysis" / "plots").glob("*.png"))
    ]
    add_section(out, Section("layers", "Where fine-tuning changed the model", rec_html, images, order=30), render=False)
    add_section(
        out,
        Section(
            "loss",
            "Training loss",
            "<p>Loss on completion tokens per optimizer step.</p>",
            ["figures/training_loss.png"],
            order=40,
        ),
    )
    _add_monitor_section(out, runs)

    return render_report(out, title=f"midblock demo: {config.model} on {config.task}")


def _hardware_text(hw: dict[str, Any]) -> str:
    """CPUs, torch threads, the CPU model and whether it has bf16 instructions: what the timings depend on."""
    cpu = hw.get("cpu") or {}
    parts = [f"{hw.get('cpu_count')} CPUs ({hw.get('torch_threads')} torch threads)"]
    if cpu:
        bf16 = "with bf16 instructions" if cpu.get("native_bf16") else "without bf16 instructions"
        parts.append(f"{cpu.get('model') or 'CPU'} {bf16} (torch: {cpu.get('torch_cpu_capability')})")
    if hw.get("cuda_devices"):
        parts.append("GPU " + ", ".join(map(str, hw["cuda_devices"])))
    return ", ".join(parts + [str(hw.get("platform"))])


def _precision_text(asked: str, rows: list[dict]) -> str:
    """The precision the arms trained in, as resolved on this machine, and what was asked."""
    used = sorted({r["precision"] for r in rows if r.get("precision")})
    if not used:
        return f"Training precision: {asked}."
    how = " (auto: what this machine runs fast)" if asked == "auto" else ""
    return f"Training precision: {', '.join(used)}{how}; evaluation in fp32."


def _add_monitor_section(out: Path, runs: dict[str, list[str]]) -> None:
    """The per-layer monitor's heatmaps of each arm's first run (its own module draws them)."""
    from midblock.reporting.monitor_plots import monitor_section

    add_section(out, monitor_section(out, {arm: dirs[0] for arm, dirs in runs.items()}, order=45), render=False)


def _lr_text(grid: dict[str, Any]) -> str:
    ls = grid.get("lr_search")
    if ls and ls.get("lrs"):
        lrs = ", ".join(f"{x:g}" for x in ls["lrs"])
        return f"learning rate chosen per arm from {lrs} on {ls.get('eval_items')} dev problems (not the test set)"
    if ls:
        return (
            f"learning rate chosen per arm from its own grid on {ls.get('eval_items')} dev problems (not the test set)"
        )
    return f"learning rate {grid['train']['lr']}"


def _shown(row: dict, key: str, summary: dict[str, Any]) -> Any:
    """A row's value as tables show it: the baseline's difference against itself is empty."""
    baseline = summary["settings"].get("baseline") or "lora"
    return None if (row["arm"] == baseline and key in DIFF_KEYS) else row.get(key)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _num_layers(spec: str) -> int:

    return get_layout(load_skeleton(spec)).num_layers


def _probe_texts(forgetting: dict) -> int | str:
    """How many texts of the bundled probe the forgetting check scored (its limit, or all of them)."""
    from midblock.data.general import general_texts, is_bundled

    if not is_bundled(forgetting["data"]):
        return forgetting.get("limit") or "all"
    return len(general_texts(forgetting["data"], forgetting.get("limit")))
