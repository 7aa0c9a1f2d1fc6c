"""Turn accumulated ``ModelStats`` into metric rows (layer, metric, value): the metric phase, no model needed."""

from __future__ import annotations

import torch

from midblock.analysis import metrics as M
from midblock.analysis.capture import ModelStats
from midblock.analysis.config import DEFAULT_METRICS, FAMILIES, OPT_IN  # noqa: F401 (re-exported)


def per_model_rows(st: ModelStats, layers: list[int], families: set[str], alpha: float = 1.0) -> list[tuple]:
    """Per-model metrics of one model at each layer: (layer, metric, value)."""
    rows: list[tuple] = []
    for layer in layers:
        for key in ("prompt_entropy", "prompt_entropy_centered", "curvature", "sparsity", "token_norm"):
            fam = "l2_norm" if key == "token_norm" else key
            if fam in families and f"{key}@{layer}" in st.sums:
                rows.append((layer, key, st.mean(f"{key}@{layer}")))
        if "logit_lens" in families and f"logit_ce@{layer}" in st.sums:
            rows.append((layer, "logit_ce", st.mean(f"logit_ce@{layer}")))
        if layer not in st.pooled:
            continue
        _, Z = st.Z(layer)
        Z = Z.to(torch.float64)
        if "dataset_entropy" in families and Z.shape[0] > 1:
            rows.append((layer, "dataset_entropy", M.dataset_entropy(Z, alpha)))
        if "effective_rank" in families:
            rows.append((layer, "effective_rank", M.effective_rank(Z, "energy")))
            rows.append((layer, "rankme", M.effective_rank(Z, "rankme")))
        if "l2_norm" in families:
            rows.append((layer, "l2_norm", M.l2_norm(Z)))
        if "spectral" in families:
            rows.extend((layer, k, v) for k, v in M.spectral(Z).items())
    if "cka" in families:
        sel = sorted(layer for layer in layers if layer in st.pooled)
        for a, b in zip(sel, sel[1:]):
            if b == a + 1:  # consecutive layers of the same model: how much block a transforms its input
                rows.append((b, "cka_consecutive", M.cka(st.Z(a)[1], st.Z(b)[1])))
    return rows


def pair_rows(base: ModelStats, var: ModelStats, layers: list[int], families: set[str]) -> list[tuple]:
    """Base-vs-variant metrics at each layer (the variant's own per-model rows come from ``per_model_rows``)."""
    rows: list[tuple] = []
    for layer in layers:
        if layer in base.pooled and layer in var.pooled:
            ib, Zb = base.Z(layer)
            iv, Zv = var.Z(layer)
            if not torch.equal(ib, iv):
                raise RuntimeError(f"base and variant rows do not pair up at layer {layer}")
            if "cka" in families:
                rows.append((layer, "cka", M.cka(Zb, Zv)))
                if Zb.shape[0] > 3:
                    rows.append((layer, "cka_unbiased", M.cka(Zb, Zv, unbiased=True)))
            if "cosine" in families:
                rows.append((layer, "cosine", M.cosine(Zb, Zv)))
            if "mean_shift" in families:
                rows.extend((layer, k, v) for k, v in M.mean_shift(Zb, Zv).items())
            if "change_intensity" in families:
                rows.append((layer, "change_intensity", M.change_intensity(Zb, Zv)))
        if "cka_token" in families and layer in var.moments:
            m = var.moments[layer]
            rows.append(
                (layer, "cka_token", M.cka_from_moments(m["sxy"], m["sxx"], m["syy"], m["sx"], m["sy"], int(m["n"])))
            )
            if int(m["n"]) > 3 and all(k in m for k in M.UNBIASED_KEYS):
                rows.append((layer, "cka_token_unbiased", M.cka_unbiased_from_moments(m)))
        if "logit_lens" in families:
            for key in ("logit_top1_agreement", "logit_kl"):
                if f"{key}@{layer}" in var.sums:
                    rows.append((layer, key, var.mean(f"{key}@{layer}")))
    return rows
