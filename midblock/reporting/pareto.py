"""Accuracy against forgetting, one point per trained cell (learning-rate search cells included).

Each point is a cell's point estimate: its accuracy (dev split for search cells, test split for the grid's
cells) and its perplexity on the forgetting probe, as a change from the untuned base where the base was
measured. Colour is the arm, the marker the learning rate; the cells no other cell of the same split beats
on both axes (higher accuracy and lower forgetting) are joined as the Pareto front.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midblock.io import atomic_path

MARKERS = "osD^vP*Xh<>p"


def pareto_point(rec: dict[str, Any], accuracy: float, split: str, base_ppl: float | None) -> dict[str, Any] | None:
    """A cell's point: ``{"arm", "seed", "lr", "split", "accuracy", "ppl", "ppl_change_pct"}`` (None: no ppl)."""
    ppl = (rec.get("ppl") or {}).get("ppl")
    if ppl is None:
        return None
    change = 100 * (ppl / base_ppl - 1) if base_ppl else None
    return {
        "arm": rec["label"],
        "seed": rec.get("seed"),
        "lr": rec.get("lr"),
        "split": split,
        "accuracy": accuracy,
        "ppl": ppl,
        "ppl_change_pct": change,
    }


def pareto_front(points: list[dict[str, Any]], x: str) -> list[dict[str, Any]]:
    """The points no other point beats on both axes (lower ``x``, higher accuracy), by increasing ``x``."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[x], -p["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front


def x_scale(ppls: list[float], spread: float = 20.0) -> str:
    """``"symlog"`` for a panel whose perplexities span more than ``spread`` times (a diverged cell at 1000x
    the base would squash every other point into one column on a linear axis), else ``"linear"``."""
    return "symlog" if ppls and max(ppls) > spread * min(ppls) else "linear"


def plot_pareto(points: list[dict[str, Any]], path: str | Path, title: str = "") -> bool:
    """Write the figure (one panel per split present); False (nothing written) when there is no point."""
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = "ppl_change_pct" if all(p["ppl_change_pct"] is not None for p in points) else "ppl"
    splits = [s for s in ("dev", "test") if any(p["split"] == s for p in points)]
    arms = list(dict.fromkeys(p["arm"] for p in points))
    lrs = sorted({p["lr"] for p in points if p["lr"] is not None})
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 4.2), squeeze=False)
    for ax, split in zip(axes[0], splits):
        mine = [p for p in points if p["split"] == split]
        for p in mine:
            marker = MARKERS[lrs.index(p["lr"]) % len(MARKERS)] if p["lr"] in lrs else "o"
            ax.scatter(p[x], 100 * p["accuracy"], color=f"C{arms.index(p['arm']) % 10}", marker=marker, s=36)
        front = pareto_front(mine, x)
        ax.plot([p[x] for p in front], [100 * p["accuracy"] for p in front], color="grey", lw=0.8, ls="--")
        what = "learning-rate search, dev split" if split == "dev" else "grid cells, test split"
        ax.set_title(f"{what} ({len(mine)} cells)", fontsize=9)
        # each panel its own axis: the search's diverged rates would hide the grid cells' spread
        scale = x_scale([p["ppl"] for p in mine])
        if scale == "symlog":
            ax.set_xscale("symlog", linthresh=100.0 if x == "ppl_change_pct" else 10.0)
        label = "perplexity change % vs base (general text)" if x == "ppl_change_pct" else "perplexity"
        ax.set_xlabel(label + (", symlog scale" if scale == "symlog" else ""))
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=f"C{i % 10}", marker="o", ls="", label=a) for i, a in enumerate(arms)]
    handles += [
        plt.Line2D([], [], color="black", marker=MARKERS[i % len(MARKERS)], ls="", label=f"lr {lr:g}")
        for i, lr in enumerate(lrs)
    ]
    handles.append(plt.Line2D([], [], color="grey", ls="--", label="Pareto front"))
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(title or "accuracy against forgetting, one point per cell", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.8 if len(splits) > 1 else 0.72, bottom=0.14, top=0.86, wspace=0.25)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True
