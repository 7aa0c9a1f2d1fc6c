"""Weight-space and optimisation metrics per block (and per attention / MLP group).

Block i's numbers are reported at layer index i + 1 (the output of block i), the embedding's at index 0,
so they line up with the representation metrics in ``metrics.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from midblock.analysis import metrics as M
from midblock.errors import MidblockError
from midblock.models.introspect import block_of_param, get_layout
from midblock.tuning.loss import causal_lm_loss

GROUPS = ("attn", "mlp")


def _linears(layout) -> dict[str, str]:
    """The block's linear modules (name relative to a block -> 'attn', 'mlp' or 'other'), seen through PEFT.

    On a model whose block 0 carries LoRA, the layout lists PEFT's pieces ('q_proj.base_layer',
    'q_proj.lora_A.default', ...): the wrapped linear is the model's weight, the LoRA factors are not.
    """
    out: dict[str, str] = {}
    for name in layout.linear_names:
        parts = name.split(".")
        if "base_layer" in parts:
            rel = ".".join(parts[: parts.index("base_layer")])
        elif any(p.startswith("lora_") for p in parts):
            continue
        else:
            rel = name
        out.setdefault(rel, layout.group(name))
    return out


def _group_sums(named: Iterable[tuple[str, int, float, float]]) -> dict[int, dict[str, list[float]]]:
    """named: (group of the module, block index, |delta|^2, |W|^2) -> per block, per group sums."""
    out: dict[int, dict[str, list[float]]] = {}
    for group, block, d2, w2 in named:
        g = out.setdefault(block, {k: [0.0, 0.0] for k in ("all", *GROUPS)})
        for key in ("all", group):
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
        for rel in _linears(layout):
            mod = block.get_submodule(rel)
            w = getattr(mod, "base_layer", mod).weight  # a PEFT LoRA layer wraps the original linear
            out[(i, rel)] = w
    return out


def weight_key(block: int, rel: str) -> str:
    """The key of block ``block``'s linear ``rel`` in ``base_weights`` (and the safetensors spill)."""
    return f"block{block}:{rel}"


EMBEDDING_KEY = "embedding"


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight ``weight_delta`` reads from the base (block linears and the embedding), by ``weight_key``.

    The one-model-at-a-time mode saves these (safetensors) before the base is freed and passes them back as
    ``weight_delta(saved, variant)``.
    """
    lay = get_layout(model)
    out = {weight_key(i, rel): w for (i, rel), w in _linear_weights(model, lay).items()}
    out[EMBEDDING_KEY] = lay.embedding.weight
    return out


@torch.no_grad()
def weight_delta(
    base: torch.nn.Module | Mapping[str, torch.Tensor], variant: torch.nn.Module
) -> dict[tuple[int, str], float]:
    """||W_var - W_base||_F per block over its linear weights, per attention/MLP group, and relative.

    Also the embedding (layer 0). ``base`` is a model or a mapping like ``base_weights(model)`` (tensors
    fetched one at a time, e.g. lazily from a file). Returns {(layer index, metric): value}.
    """
    lv = get_layout(variant)
    if isinstance(base, torch.nn.Module):
        lb = get_layout(base)
        if lb.num_layers != lv.num_layers:
            raise MidblockError(f"weight_delta: base has {lb.num_layers} blocks, variant {lv.num_layers}")
        base = base_weights(base)
    named = []
    groups = _linears(lv)
    for (block, rel), v in _linear_weights(variant, lv).items():
        key = weight_key(block, rel)
        if key not in base:
            raise MidblockError(f"weight_delta: the base has no weight for block {block} {rel}")
        w = base[key].detach().to(device=v.device, dtype=torch.float64)
        if v.shape != w.shape:
            raise MidblockError(f"weight_delta: block {block} {rel} has shape {tuple(v.shape)} vs {tuple(w.shape)}")
        d = v.detach().to(torch.float64) - w
        named.append((groups[rel], block, float(d.pow(2).sum()), float(w.pow(2).sum())))
    rows = _rows(_group_sums(named), "weight_delta")
    ev = lv.embedding.weight.detach().to(torch.float64)
    eb = base[EMBEDDING_KEY].detach().to(device=ev.device, dtype=torch.float64)
    d = float((ev - eb).norm())
    rows[(0, "weight_delta")] = d
    rows[(0, "weight_delta_rel")] = d / float(eb.norm())
    return rows


def is_lora_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and any(hasattr(m, "lora_A") for m in model.modules())


@torch.no_grad()
def lora_delta(model: torch.nn.Module) -> dict[tuple[int, str], float]:
    """||s B A||_F per block/group of a PEFT LoRA model, without materialising any Delta W.

    s is the layer's own scaling (alpha / r, or alpha / sqrt(r) under rsLoRA, as PEFT set it);
    relative values divide by the frozen base weight's norm. Blocks without an adapter have delta 0.
    """
    lay = get_layout(model)
    named = []
    groups = _linears(lay)
    for i, block in enumerate(lay.blocks):
        for rel, group in groups.items():
            mod = block.get_submodule(rel)
            w = getattr(mod, "base_layer", mod).weight.detach().to(torch.float64)
            d2 = 0.0
            for name in getattr(mod, "active_adapters", []) if hasattr(mod, "lora_A") else []:
                if name not in mod.lora_A:
                    continue
                A, B = mod.lora_A[name].weight, mod.lora_B[name].weight
                d2 += M.lora_delta_sq(A, B, float(mod.scaling[name]))
            named.append((group, i, d2, float(w.pow(2).sum())))
    return _rows(_group_sums(named), "lora_delta")


def grad_norm(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[tuple[int, str], float]:
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
            # the model's own mean loss over labelled tokens, with the head run a chunk of labelled rows at a
            # time: no batch x length x vocabulary logits (2 GiB in float32 for 8 x 256 tokens of Gemma-3)
            loss, _ = causal_lm_loss(model, {k: v.to(dev) for k, v in batch.items()})
            loss.backward()
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
