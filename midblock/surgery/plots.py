"""Figures for layer surgery: metric per configuration (with reference lines), per depth, heat maps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.io import atomic_path

if TYPE_CHECKING:
    import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def plot_configurations(
    rows: list[dict[str, Any]], metrics: list[str], path: str | Path, title: str, group_key: str | None = None
) -> bool:
    """One panel per metric: x = configuration, one line per group (e.g. with/without head); reference
    rows (``kind == 'reference'``) are horizontal lines. Returns False when there is nothing to draw."""
    present = [m for m in metrics if any(_num(r.get(m)) is not None for r in rows)]
    if not present:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(present), figsize=(5.2 * len(present), 3.8), squeeze=False)
    configs = [r for r in rows if r.get("kind") != "reference"]
    refs = [r for r in rows if r.get("kind") == "reference"]
    labels = list(dict.fromkeys(r["config"].replace("+head", "") for r in configs))
    groups = list(dict.fromkeys(str(r.get(group_key, "")) for r in configs)) if group_key else [""]
    for ax, m in zip(axes.flat, present):
        for g in groups:
            pts = [
                (labels.index(r["config"].replace("+head", "")), _num(r.get(m)))
                for r in configs
                if not group_key or str(r.get(group_key, "")) == g
            ]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                name = f"{group_key}={g}" if group_key else "configurations"
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
        # Accuracy columns carry Wilson interval bounds: draw them as error bars.
        ci = [
            (
                labels.index(r["config"].replace("+head", "")),
                _num(r.get(m)),
                _num(r.get(f"{m}_lo")),
                _num(r.get(f"{m}_hi")),
            )
            for r in configs
        ]
        ci = [c for c in ci if None not in c]
        if ci:
            ax.errorbar(
                [c[0] for c in ci],
                [c[1] for c in ci],
                yerr=[[c[1] - c[2] for c in ci], [c[3] - c[1] for c in ci]],
                fmt="none",
                ecolor="gray",
                capsize=3,
                alpha=0.7,
            )
        for i, r in enumerate(refs):
            y = _num(r.get(m))
            if y is not None:
                ax.axhline(y, ls="--", color=f"C{i + 3}", alpha=0.8, label=f"{r['config']} (reference)")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    _save(fig, Path(path))
    return True


def plot_depth(
    rows: list[dict[str, Any]], metrics: list[str], path: str | Path, title: str, line_key: str = "model"
) -> bool:
    """One panel per metric: x = depth, one line per ``line_key`` value."""
    present = [m for m in metrics if any(_num(r.get(m)) is not None for r in rows)]
    if not present:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(present), figsize=(4.8 * len(present), 3.6), squeeze=False)
    for ax, m in zip(axes.flat, present):
        for name in dict.fromkeys(str(r[line_key]) for r in rows):
            pts = sorted((float(r["depth"]), _num(r.get(m))) for r in rows if str(r[line_key]) == name)
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=name)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    _save(fig, Path(path))
    return True


def plot_heatmap(names: list[str], R: np.ndarray, path: str | Path, title: str) -> None:
    """A correlation heat map (values in [-1, 1], NaN blank), metrics in the given order."""
    import numpy as np

    plt = _plt()
    n = len(names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(np.ma.masked_invalid(R), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if not math.isnan(R[i, j]):
                    ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    _save(fig, Path(path))
