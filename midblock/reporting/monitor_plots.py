"""The per-layer monitor's heatmaps: block x optimizer step, one panel per quantity, the trained band marked.

Reads ``monitor.jsonl`` (written by ``midblock train --monitor-every N`` or ``MidBlockMonitor`` in a Trainer);
no model is loaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.io import atomic_path
from midblock.layers import format_indices

if TYPE_CHECKING:
    from midblock.reporting.report import Section

PANELS = {
    "cka_change": ("1 - CKA(base, now) at the block's output", "viridis"),
    "weight_change": ("||W - W0|| / ||W0|| of the block's linears", "magma"),
    "grad_share": ("share of the step's squared gradient norm", "cividis"),
}


def _edges(steps: list[int]) -> list[float]:
    """Cell edges around each reading's step (readings need not be evenly spaced: the last one may not be)."""
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    mids = [(a + b) / 2 for a, b in zip(steps, steps[1:])]
    return [steps[0] - (mids[0] - steps[0]), *mids, steps[-1] + (steps[-1] - mids[-1])]


def plot_monitor(meta: dict[str, Any], readings: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One PNG: a heatmap per quantity (x = optimizer step, y = block), the trained blocks bracketed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    L = int(meta["num_blocks"])
    steps = [int(r["step"]) for r in readings]
    present = [q for q in PANELS if any(r.get(q) is not None for r in readings)]
    fig, axes = plt.subplots(len(present), 1, figsize=(7.0, 2.3 * len(present) + 0.4), squeeze=False)
    band = list(meta.get("band") or [])
    x = _edges(steps)
    y = [b - 0.5 for b in range(L + 1)]
    for ax, q in zip(axes[:, 0], present):
        grid = np.full((L, len(readings)), np.nan)
        for j, r in enumerate(readings):
            for b, v in enumerate(r.get(q) or []):
                if v is not None and math.isfinite(v):
                    grid[b, j] = v
        label, cmap = PANELS[q]
        mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(grid), cmap=cmap, shading="flat")
        fig.colorbar(mesh, ax=ax, pad=0.01).ax.tick_params(labelsize=7)
        if band and len(band) < L:
            for edge in (band[0] - 0.5, band[-1] + 0.5):
                ax.axhline(edge, color="white", lw=1.2, ls="--")
                ax.axhline(edge, color="black", lw=0.6, ls="--")
        ax.set_ylabel("block")
        ax.set_title(f"{q}: {label}", fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("optimizer step")
    trained = f"trained blocks {format_indices(band)} between the dashed lines" if band and len(band) < L else ""
    fig.suptitle(" | ".join(t for t in (title, trained) if t), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def describe(meta: dict[str, Any], readings: list[dict[str, Any]]) -> str:
    """A few lines on the last reading: where the representation and the weights changed, the alarms raised."""
    last = readings[-1]
    L = int(meta["num_blocks"])
    band = meta.get("band") or []
    cka = [v if v is not None else float("nan") for v in last["cka_change"]]
    top = max(range(L), key=lambda b: cka[b] if math.isfinite(cka[b]) else -1.0)
    lines = [
        f"{len(readings)} readings up to step {last['step']} on {meta['probe_rows']} probe rows; "
        f"trained blocks {format_indices(band)}"
        if band
        else f"{len(readings)} readings up to step {last['step']}",
        f"largest CKA change at the last reading: block {top} ({cka[top]:.4g})",
    ]
    share = last.get("outside_share")
    if share is not None:
        lines.append(f"share of the change arising outside the trained blocks: {share:.0%}")
    n_alarms = sum(len(r.get("alarms") or []) for r in readings)
    if n_alarms:
        lines.append(f"{n_alarms} alarm(s); first: {next(a for r in readings for a in r.get('alarms') or [])}")
    return "\n".join(lines)


def monitor_section(out: str | Path, runs: dict[str, str | Path], order: int = 45) -> Section:
    """A report section with each run's heatmap (``runs``: arm -> run directory); arms whose run has no
    ``monitor.jsonl`` (trained without the monitor) are named, not drawn."""
    from midblock.errors import MidblockError
    from midblock.reporting.report import Section, esc
    from midblock.tuning.monitor import read_monitor

    out = Path(out)
    images, notes, missing = [], [], []
    for arm, run in runs.items():
        try:
            meta, readings = read_monitor(run)
        except MidblockError:
            missing.append(arm)
            continue
        rel = Path("figures") / f"monitor_{arm}.png"
        plot_monitor(meta, readings, out / rel, title=arm)
        images.append(str(rel))
        notes.append(f"<li><b>{esc(arm)}</b>: {esc(describe(meta, readings)).replace(chr(10), '; ')}</li>")
    body = (
        "<p>Recorded while each arm trained (<code>midblock train --monitor-every N</code>; read any run with "
        "<code>midblock monitor RUN</code>). Each heatmap has one row per block and one column per reading. "
        "Top: 1 - linear CKA between the block's output now and the base model's, on a fixed batch of held-out "
        "rows (the same metric as the analysis above, so the last column is what it measures after training). "
        "Middle: how far the block's weights moved, ||W - W0|| / ||W0||. Bottom: the block's share of the "
        "step's gradient norm. The trained blocks lie between the dashed lines; a block below them never "
        "changes (truncated backward), a block above them changes only because its input did.</p>"
    )
    if notes:
        body += "<ul>" + "".join(notes) + "</ul>"
    if missing:
        body += f'<p class="note">No monitor readings for: {esc(", ".join(missing))} (trained without it).</p>'
    return Section("monitor", "How the change grew during training", body, images, order=order)
