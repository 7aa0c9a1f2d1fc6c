"""``midblock profiles``: the change profiles of several analyses (models, arms, seeds) on one relative-depth
axis, with their means over the paper's depth regions (:mod:`midblock.analysis.regions`): ``profiles.md`` (the
table), ``profiles.json`` (the numbers, per-block mean profiles and provenance) and ``profiles.png``.

Each run is ``[LABEL=]DIR`` (a ``midblock analyze`` directory, or its ``metrics.csv``); runs under one label are
the seeds of one arm, and their region means get a 95% t-interval over those seeds. Labels ``GROUP ARM`` (one
space) where several groups share arms (``instruct uniform``, ``base uniform``...) are drawn one colour per arm
and one line style per group, so the same arm on two models reads as a pair.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from midblock.analysis.regions import (
    CHANGE_HELP,
    CHANGE_METRICS,
    REGIONS,
    block_profiles,
    mean_profile,
    region_blocks,
    summarize,
)
from midblock.errors import MidblockError
from midblock.io import RunDir, atomic_path, fresh_output_dir, provenance, write_json, write_text
from midblock.layers import format_indices
from midblock.surgery.correlate import read_metrics


def parse_run(spec: str) -> tuple[str, Path]:
    """``LABEL=DIR`` or ``DIR`` (labelled by its directory name)."""
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = "", spec
    p = Path(path)
    if not label.strip():
        label = (p if p.is_dir() else p.parent).name
    return label.strip(), p


def read_groups(specs: list[str]) -> dict[str, dict[str, Any]]:
    """{label: {"runs": [dir...], "num_blocks": L, "profiles": [one dict per run and tuned variant]}}."""
    groups: dict[str, dict[str, Any]] = {}
    for spec in specs:
        label, path = parse_run(spec)
        rows = read_metrics([path])
        variants = sorted({r["variant"] for r in rows} - {"base"})
        if not variants:
            raise MidblockError(f"{path} analysed the base alone", hint="pass analyses of a base and a tuned model")
        for v in variants:
            name = label if len(variants) == 1 else f"{label}:{v}"
            profiles, L = block_profiles(rows, v)
            if not profiles:
                raise MidblockError(f"{path} holds no change metric for {v}", hint="analyse with the default families")
            g = groups.setdefault(name, {"runs": [], "num_blocks": L, "profiles": []})
            if g["num_blocks"] != L:
                raise MidblockError(
                    f"runs under label {name!r} have {g['num_blocks']} and {L} blocks",
                    hint="give each model's runs a label of their own (LABEL=DIR)",
                )
            g["runs"].append(str(path))
            g["profiles"].append(profiles)
    return groups


def run_profiles(specs: list[str], out: str | Path) -> dict[str, Any]:
    """Read the runs, summarise each label's region means, write the table, JSON and figure into ``out``."""
    groups = read_groups(specs)
    out_p = fresh_output_dir(out)
    result = {
        "provenance": provenance({"runs": specs}, None),
        "regions": REGIONS,
        "metrics": CHANGE_HELP,
        "groups": {
            label: {
                "runs": g["runs"],
                "num_blocks": g["num_blocks"],
                "region_blocks": {k: format_indices(v) for k, v in region_blocks(g["num_blocks"]).items()},
                "summary": summarize(g["profiles"]),
                "mean_profiles": {
                    name: [None if math.isnan(x) else x for x in prof.tolist()]
                    for name in CHANGE_METRICS
                    if (prof := mean_profile(g["profiles"], name)) is not None
                },
            }
            for label, g in groups.items()
        },
    }
    with RunDir(out_p):
        write_json(out_p / "profiles.json", result)
        write_text(out_p / "profiles.md", render(result))
        plot(groups, out_p / "profiles.png")
    return result


def _fmt(d: dict[str, Any]) -> str:
    if not math.isfinite(d["mean"]):
        return "-"

    def f(x: float) -> str:  # float round-off (1 - CKA of identical blocks is ~1e-16) reads as 0
        return "0" if abs(x) < 1e-12 else f"{x:.3g}"

    s = f(d["mean"])
    if math.isfinite(d["lo"]):
        s += f" [{f(d['lo'])}, {f(d['hi'])}]"
    return s


def render(result: dict[str, Any]) -> str:
    """The region table: one row per label and change metric."""
    lines = [
        "| run | metric | runs | bottom (seg1/5) | middle (seg2-4/5) | top (seg5/5) | top/middle |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, g in result["groups"].items():
        for name, s in g["summary"].items():
            cells = [_fmt(s[r]) for r in (*REGIONS, "top/middle")]
            lines.append(f"| {label} | {name} | {s['n']} | " + " | ".join(cells) + " |")
    notes = [
        "",
        "Means over each depth region's blocks; with several runs under one label (the seeds of one arm), the mean",
        "over runs and its 95% t-interval over those runs (training seeds only: each run's profile averages the",
        "analysed samples, whose spread is not included). Regions by the paper's floor rule: "
        + "; ".join(
            f"{label}: " + ", ".join(f"{k} {v}" for k, v in g["region_blocks"].items())
            for label, g in result["groups"].items()
        )
        + ".",
        "Metrics: " + "; ".join(f"`{k}`: {v}" for k, v in result["metrics"].items()) + ".",
    ]
    return "\n".join(lines + notes) + "\n"


LINE_STYLES = ("-", "--", ":", "-.")


def line_styles(labels: list[str]) -> dict[str, tuple[str, str]]:
    """{label: (colour, line style)}: one colour per label; but where every label is ``GROUP ARM`` (one space),
    there are several groups and fewer arms than labels, one colour per arm and one style per group."""
    parts = [label.split(" ") for label in labels]
    groups = list(dict.fromkeys(p[0] for p in parts))
    arms = list(dict.fromkeys(p[-1] for p in parts))
    if all(len(p) == 2 for p in parts) and 1 < len(groups) <= len(LINE_STYLES) and len(arms) < len(labels):
        return {lb: (f"C{arms.index(p[1]) % 10}", LINE_STYLES[groups.index(p[0])]) for lb, p in zip(labels, parts)}
    return {lb: (f"C{i % 10}", "-") for i, lb in enumerate(labels)}


def plot(groups: dict[str, dict[str, Any]], path: Path) -> None:
    """One panel per change metric: each label's mean profile over relative depth (block b at (b + 0.5) / L),
    its single runs as thin lines, the middle region's nominal edges (0.2, 0.8) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in CHANGE_METRICS if any(n in p for g in groups.values() for p in g["profiles"])]
    style = line_styles(list(groups))
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, g in groups.items():
            mean = mean_profile(g["profiles"], name)
            if mean is None:
                continue
            x = (torch.arange(g["num_blocks"], dtype=torch.float64) + 0.5) / g["num_blocks"]
            runs = [p[name] for p in g["profiles"] if name in p]
            color, ls = style[label]
            for r in runs if len(runs) > 1 else []:
                ax.plot(x, r, color=color, ls=ls, lw=0.6, alpha=0.35)
            ax.plot(x, mean, color=color, ls=ls, lw=1.6, marker=".", ms=3, label=label)
        for edge in (0.2, 0.8):
            ax.axvline(edge, color="0.5", ls="--", lw=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("relative depth (block centre / L)")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.88, bottom=0.3, wspace=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
