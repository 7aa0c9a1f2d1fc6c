"""Where along the depth a tuned model changed: per-block change profiles of an analysis, their means over
the paper's three depth regions (the first fifth of the blocks, the middle three fifths, the last fifth, by the
paper's floor rule: bands ``seg1/5``, ``seg2-4/5``, ``seg5/5``), and their spread over the seeds of one arm.

The paper's claim is that SFT leaves the middle stable and changes the top most: a top-to-middle ratio above 1.
Representation metrics (``1-cka``, ``mean_shift_rel``, ``logit_kl``) accumulate what every block below changed,
so they tend to grow with depth whatever was tuned; the weight change is each block's own. Pure functions on
tensors and metric rows (``metrics.csv`` of ``midblock analyze``); no I/O. See docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from midblock.evaluation.stats import mean_ci
from midblock.layers import resolve_layers

REGIONS = {"bottom": "seg1/5", "middle": "seg2-4/5", "top": "seg5/5"}
# profile name -> (metrics.csv names read into it, whether the value is a similarity to turn into 1 - value)
CHANGE_METRICS: dict[str, tuple[tuple[str, ...], bool]] = {
    "1-cka": (("cka",), True),
    "mean_shift_rel": (("mean_shift_rel",), False),
    "logit_kl": (("logit_kl",), False),
    "weight_delta_rel": (("weight_delta_rel", "lora_delta_rel"), False),
}
CHANGE_HELP = {
    "1-cka": "1 - linear CKA between base and tuned outputs of each block",
    "mean_shift_rel": "shift of the mean hidden state, relative to the base's norm",
    "logit_kl": "KL(base || tuned) of the logit-lens next-token distributions at each block's output",
    "weight_delta_rel": "||W_tuned - W_base|| / ||W_base|| over each block's linear weights (LoRA: s B A)",
}


def block_profiles(rows: Iterable[Mapping[str, Any]], variant: str) -> tuple[dict[str, torch.Tensor], int]:
    """The change profiles of ``variant`` against the base: {profile: tensor of one value per block (NaN where
    absent)}, averaged over datasets, and the number of blocks L. Block b's output is layer b + 1; layer 0 (the
    embedding output) is not a block and is left out."""
    rows = list(rows)
    L = max((int(r["layer"]) for r in rows), default=0)
    sums = {p: torch.zeros(L, dtype=torch.float64) for p in CHANGE_METRICS}
    counts = {p: torch.zeros(L, dtype=torch.float64) for p in CHANGE_METRICS}
    for r in rows:
        if r["variant"] != variant:
            continue
        layer, v = int(r["layer"]), float(r["value"])
        for name, (metrics, similarity) in CHANGE_METRICS.items():
            if r["metric"] in metrics and 1 <= layer <= L and math.isfinite(v):
                sums[name][layer - 1] += 1.0 - v if similarity else v
                counts[name][layer - 1] += 1
    return {p: sums[p] / counts[p] for p in CHANGE_METRICS if counts[p].any()}, L


def region_blocks(num_blocks: int) -> dict[str, list[int]]:
    """The blocks of each depth region of a ``num_blocks``-block model."""
    return {name: resolve_layers(spec, num_blocks) for name, spec in REGIONS.items()}


def region_means(profile: torch.Tensor) -> dict[str, float]:
    """Mean of one per-block profile over each depth region (NaN blocks skipped; NaN when a region has none),
    and ``top/middle``: the top region's mean over the middle's (NaN unless the middle's is positive)."""
    out = {}
    for name, blocks in region_blocks(len(profile)).items():
        vals = profile[blocks]
        vals = vals[~torch.isnan(vals)]
        out[name] = float(vals.mean()) if len(vals) else math.nan
    out["top/middle"] = out["top"] / out["middle"] if out["middle"] > 0 else math.nan
    return out


def summarize(runs: Sequence[dict[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
    """Region means of each profile over the runs (the seeds of one arm): {profile: {region: mean, 95% t-interval
    over the runs (no interval from one run), n}}. The interval covers training seeds only: each run's profile is
    an average over the analysed samples, whose own spread is not included."""
    out: dict[str, dict[str, Any]] = {}
    for name in CHANGE_METRICS:
        per_run = [region_means(r[name]) for r in runs if name in r]
        if not per_run:
            continue
        out[name] = {"n": len(per_run)}
        for region in (*REGIONS, "top/middle"):
            vals = [m[region] for m in per_run if math.isfinite(m[region])]
            out[name][region] = _interval(vals)
    return out


def _interval(vals: list[float]) -> dict[str, Any]:
    if not vals:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    if len(vals) == 1:
        return {"mean": vals[0], "lo": math.nan, "hi": math.nan, "n": 1}
    ci = mean_ci(vals)
    return {"mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n": len(vals)}


def mean_profile(runs: Sequence[dict[str, torch.Tensor]], name: str) -> torch.Tensor | None:
    """The per-block mean of one profile over the runs that have it (None when none has)."""
    have = [r[name] for r in runs if name in r]
    return torch.stack(have).nanmean(0) if have else None
