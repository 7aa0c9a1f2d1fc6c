"""Layer-profile figures: x = relative depth, one line per variant (and dataset), the recommended band shaded."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from midblock.aliases import renamed_kwargs
from midblock.io import atomic_path

# One figure per family; each lists the metrics it draws (a panel each, when present).
PLOT_FAMILIES: dict[str, tuple[str, ...]] = {
    "entropy": ("prompt_entropy", "prompt_entropy_centered", "dataset_entropy"),
    "rank": ("effective_rank", "rankme", "rank_deficiency"),
    "geometry": ("curvature", "sparsity"),
    "norms": ("l2_norm", "token_norm", "s_max", "condition_number"),
    "similarity": ("cka", "cka_unbiased", "cka_token", "cosine", "cka_consecutive"),
    "shift": ("mean_shift", "mean_shift_rel", "change_intensity"),
    "logit_lens": ("logit_ce", "logit_top1_agreement", "logit_kl"),
    "weights": (
        "weight_delta_rel",
        "weight_delta_attn_rel",
        "weight_delta_mlp_rel",
        "lora_delta_rel",
        "lora_delta_attn_rel",
        "lora_delta_mlp_rel",
    ),
    "gradients": ("grad_norm", "grad_norm_rel"),
}
_LOG = {"condition_number", "s_max"}


@renamed_kwargs(out_dir="out")
def plot_profiles(
    rows: list[dict], out: str | Path, num_blocks: int, band: list[int] | None = None, title: str = ""
) -> list[str]:
    """Write ``<family>.png`` for every family with data; returns the file names (relative to ``out``).

    ``rows`` are ``metrics.csv`` rows (variant, dataset, layer, depth, metric, value). ``band`` holds block
    indices; block b's output is layer index b + 1, at depth (b + 1) / L.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[tuple[str, str], list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = float(r["value"])
        if math.isfinite(v):
            series[r["metric"]][(r["variant"], r["dataset"])].append((float(r["depth"]), v))
    datasets = sorted({r["dataset"] for r in rows})
    variants = sorted({r["variant"] for r in rows}, key=lambda v: (v != "base", v))
    color = {v: f"C{i % 10}" for i, v in enumerate(variants)}  # one colour per model across every panel
    styles = ["-", "--", ":", "-."]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fam, metrics in PLOT_FAMILIES.items():
        present = [m for m in metrics if m in series]
        if not present:
            continue
        cols = min(3, len(present))
        nrows = math.ceil(len(present) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.4 * nrows), squeeze=False)
        for ax, metric in zip(axes.flat, present):
            for (variant, ds), pts in sorted(series[metric].items()):
                pts.sort()
                label = variant if len(datasets) == 1 else f"{variant} / {ds}"
                ls = styles[datasets.index(ds) % len(styles)]
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(xs, ys, ls, color=color[variant], marker=".", ms=4, label=label)
            if band:
                lo, hi = (min(band) + 0.5) / num_blocks, (max(band) + 1.5) / num_blocks
                ax.axvspan(lo, hi, color="tab:green", alpha=0.12, label="recommended band")
            if metric in _LOG:
                ax.set_yscale("log")
            ax.set_title(metric, fontsize=10)
            ax.set_xlabel("relative depth (layer / L)")
            ax.set_xlim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(present) :]:
            ax.axis("off")
        legend: dict[str, object] = {}
        for ax in axes.flat:  # every line once, from whichever panel has it (the base has per-model panels only)
            for h, lab in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(lab, h)
        handles, labels = list(legend.values()), list(legend)
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
        fig.suptitle(f"{title} {fam}".strip(), fontsize=11)
        # fixed margins: tight_layout measures every text box and costs more than drawing the figure
        fig.subplots_adjust(
            left=0.08, right=0.98, top=0.84 if nrows == 1 else 0.9, bottom=0.24 / nrows + 0.04, wspace=0.3, hspace=0.45
        )
        name = f"{fam}.png"
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        written.append(name)
    return written
