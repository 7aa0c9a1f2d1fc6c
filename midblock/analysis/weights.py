"""Weight-space and optimisation metrics per block (and per attention / MLP group).

Block i's numbers are reported at layer index i + 1 (the output of block i), the embedding's at index 0,
so they line up with the representation metrics in ``metrics.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from midblock.analysis import metrics as M
from midblock.errors import MidblockError
from midblock.models.introspect import block_of_param, get_layout

GROUPS = ("attn", "mlp")


def _group_sums(layout, named: Iterable[tuple[str, float, float]]) -> dict[int, dict[str, list[float]]]:
    """named: (module name relative to a block, block index, |delta|^2, |W|^2) -> per block, per group sums."""
    out: dict[int, dict[str, list[float]]] = {}
    for rel, block, d2, w2 in named:
        g = out.setdefault(block, {k: [0.0, 0.0] for k in ("all", *GROUPS)})
        for key in ("all", layout.group(rel)):
            if key in g:
                g[key][0] += d2
                g[key][1] += w2
    return out


def _rows(sums: dict[int, dict[str, list[float]]], name: str) -> dict[tuple[int, str], float]:
    rows: dict[tuple[int, str], float] = {}
    for block, g in sorted(sums.items()):
        for key, (d2, w2) in g.items():
            suffix = "" if key == "all" else f"_{key}"
            rows[(block + 1, f"{name}{suffix}")] = math.sqrt(d2)
            rows[(block + 1, f"{name}{suffix}_rel")] = math.sqrt(d2 / w2) if w2 > 0 else float("nan")
    return rows


def _linear_weights(model, layout) -> dict[tuple[int, str], torch.Tensor]:
    """(block, linear name relative to the block) -> its weight tensor, for the base transformers model."""
    out = {}
    for i, block in enumerate(layout.blocks):
        for rel in layout.linear_names:
            mod = block.get_submodule(rel)
            w = getattr(mod, "base_layer", mod).weight  # a PEFT LoRA layer wraps the original linear
            out[(i, rel)] = w
    return out


@torch.no_grad()
def weight_delta(base, variant) -> dict[tuple[int, str], float]:
    """||W_var - W_base||_F per block over its linear weights, per attention/MLP group, and relative.

    Also the embedding (layer 0). Returns {(layer index, metric): value}.
    """
    lb, lv = get_layout(base), get_layout(variant)
    if lb.num_layers != lv.num_layers:
        raise MidblockError(f"weight_delta: base has {lb.num_layers} blocks, variant {lv.num_layers}")
    wb, wv = _linear_weights(base, lb), _linear_weights(variant, lv)
    named = []
    for key, w in wb.items():
        v = wv[key]
        if v.shape != w.shape:
            raise MidblockError(f"weight_delta: block {key[0]} {key[1]} has shape {tuple(v.shape)} vs {tuple(w.shape)}")
        d = v.detach().to(torch.float64) - w.detach().to(torch.float64)
        named.append((key[1], key[0], float(d.pow(2).sum()), float(w.detach().to(torch.float64).pow(2).sum())))
    rows = _rows(_group_sums(lb, named), "weight_delta")
    eb, ev = lb.embedding.weight.detach().to(torch.float64), lv.embedding.weight.detach().to(torch.float64)
    d = float((ev - eb).norm())
    rows[(0, "weight_delta")] = d
    rows[(0, "weight_delta_rel")] = d / float(eb.norm())
    return rows


def is_lora_model(model) -> bool:
    return hasattr(model, "peft_config") and any(hasattr(m, "lora_A") for m in model.modules())


@torch.no_grad()
def lora_delta(model) -> dict[tuple[int, str], float]:
    """||s B A||_F per block/group of a PEFT LoRA model, without materialising any Delta W.

    s is the layer's own scaling (alpha / r, or alpha / sqrt(r) under rsLoRA, as PEFT set it);
    relative values divide by the frozen base weight's norm. Blocks without an adapter have delta 0.
    """
    lay = get_layout(model)
    named = []
    for i, block in enumerate(lay.blocks):
        for rel in lay.linear_names:
            mod = block.get_submodule(rel)
            w = getattr(mod, "base_layer", mod).weight.detach().to(torch.float64)
            d2 = 0.0
            for name in getattr(mod, "active_adapters", []) if hasattr(mod, "lora_A") else []:
                if name not in mod.lora_A:
                    continue
                A, B = mod.lora_A[name].weight, mod.lora_B[name].weight
                d2 += M.lora_delta_sq(A, B, float(mod.scaling[name]))
            named.append((rel, i, d2, float(w.pow(2).sum())))
    return _rows(_group_sums(lay, named), "lora_delta")


def grad_norm(model, batches: Iterable[dict[str, torch.Tensor]]) -> dict[tuple[int, str], float]:
    """||dLoss/dW||_F of the model per block (over every parameter of the block) and relative to ||W||_F.

    Each batch (``input_ids``, ``attention_mask``, ``labels``) gets its own backward pass; the per-batch
    norms are averaged. No optimiser step is taken and gradients are cleared afterwards.
    """
    lay = get_layout(model)
    params = [(n, p) for n, p in model.named_parameters()]
    was_training = model.training
    req = {n: p.requires_grad for n, p in params}
    for _, p in params:
        p.requires_grad_(True)
    totals: dict[int, float] = {}
    count = 0
    dev = next(model.parameters()).device
    try:
        model.eval()  # no dropout: the gradient of the deterministic loss
        for batch in batches:
            model.zero_grad(set_to_none=True)
            out = model(**{k: v.to(dev) for k, v in batch.items()}, use_cache=False)
            out.loss.backward()
            sq: dict[int, float] = {}
            for n, p in params:
                b = block_of_param(n, lay)
                key = -1 if b is None and p is lay.embedding.weight else b
                if key is None or p.grad is None:
                    continue
                sq[key] = sq.get(key, 0.0) + float(p.grad.detach().to(torch.float64).pow(2).sum())
            for k, v in sq.items():
                totals[k] = totals.get(k, 0.0) + math.sqrt(v)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params:
            p.requires_grad_(req[n])
        model.train(was_training)
    if count == 0:
        raise MidblockError("grad_norm needs at least one batch of tuning data")
    wn: dict[int, float] = {}
    with torch.no_grad():
        for n, p in params:
            b = block_of_param(n, lay)
            key = -1 if b is None and p is lay.embedding.weight else b
            if key is not None:
                wn[key] = wn.get(key, 0.0) + float(p.detach().to(torch.float64).pow(2).sum())
    rows = {}
    for k, tot in totals.items():
        g = tot / count
        rows[(k + 1, "grad_norm")] = g
        rows[(k + 1, "grad_norm_rel")] = g / math.sqrt(wn[k]) if wn.get(k) else float("nan")
    return rows
