"""Layer swapping: transplant a donor's blocks into the model in memory, measure, restore bit-exactly.

The model in memory is the *recipient* (the base for ``into-base``, the variant for ``into-variant``);
the donor's tensors come from a ``TensorSource`` (read lazily from safetensors where possible). A
``Configuration`` maps parameter names to a mixing weight ``a``: the patched tensor is
``(1 - a) * recipient + a * donor``, so a swap is ``a = 1`` and an interpolation any other ``a``.
``Patch`` swaps the storage of exactly the parameters it changes and puts the original tensors back on
exit (no clones), so memory is one model plus the swapped tensors, and the recipient is restored bit
for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from midblock.errors import MidblockError
from midblock.layers import format_indices, resolve_layers, segment_bounds
from midblock.models.introspect import ModelLayout, get_layout
from midblock.surgery.sources import TensorSource

log = logging.getLogger(__name__)


@dataclass
class Configuration:
    """One point of a grid: which recipient tensors are replaced, and by how much of the donor."""

    name: str
    weights: dict[str, float] = field(default_factory=dict)  # parameter name -> a in (1-a) r + a d
    info: dict[str, Any] = field(default_factory=dict)  # what the tables show (blocks, segment, ...)


# --------------------------------------------------------------------------- parameter names


def _module_path(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise MidblockError(f"cannot locate {type(module).__name__} inside {type(model).__name__}")


def block_param_names(model: nn.Module, blocks: Iterable[int], layout: ModelLayout | None = None) -> list[str]:
    """Qualified parameter names of the given decoder blocks."""
    layout = layout or get_layout(model)
    out = []
    for i in blocks:
        prefix = layout.block_prefix(i)
        out.extend(f"{prefix}.{n}" for n, _ in layout.blocks[i].named_parameters())
    return out


def head_param_names(model: nn.Module, layout: ModelLayout | None = None) -> list[str]:
    """Parameter names of the final norm and the LM head (a tied head is the embedding's tensor)."""
    layout = layout or get_layout(model)
    canonical = _canonical_names(model)
    out = []
    for mod in (layout.final_norm, layout.lm_head):
        if mod is None:
            continue
        prefix = _module_path(model, mod)
        out.extend(canonical[f"{prefix}.{n}" if prefix else n] for n, _ in mod.named_parameters())
    return list(dict.fromkeys(out))


def _canonical_names(model: nn.Module) -> dict[str, str]:
    """Every parameter name (tied duplicates included) -> the name ``named_parameters()`` reports."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


def all_param_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


# --------------------------------------------------------------------------- grids


def swap_configurations(
    model: nn.Module,
    *,
    segments: int | None = None,
    bands: list[str] | None = None,
    with_head: bool = False,
) -> list[Configuration]:
    """One configuration per segment (``segments=K``) or per band spec; weights all 1 (a transplant)."""
    layout = get_layout(model)
    L = layout.num_layers
    if (segments is None) == (not bands):
        raise MidblockError("give exactly one of --segments K or --bands SPEC [SPEC ...]")
    groups: list[tuple[str, list[int], dict[str, Any]]] = []
    if segments is not None:
        for k, (lo, hi) in enumerate(segment_bounds(L, segments), start=1):
            groups.append((f"seg{k}/{segments}", list(range(lo, hi)), {"segment": k, "segments": segments}))
    else:
        for spec in bands or []:
            groups.append((f"band {spec}", resolve_layers(spec, L), {}))
    head = head_param_names(model, layout) if with_head else []
    configs = []
    for name, idx, extra in groups:
        names = block_param_names(model, idx, layout) + head
        info = {
            "kind": "swap",
            "blocks": format_indices(idx),
            "n_blocks": len(idx),
            "with_head": with_head,
            "depth": (idx[0] + idx[-1] + 1) / (2 * L),
            **extra,
        }
        configs.append(Configuration(name + ("+head" if with_head else ""), dict.fromkeys(names, 1.0), info))
    return configs


def reference_configurations(model: nn.Module, recipient: str, donor: str) -> list[Configuration]:
    """The pure recipient (nothing swapped) and the pure donor (every parameter swapped)."""
    return [
        Configuration(recipient, {}, {"kind": "reference", "model": recipient}),
        Configuration(donor, dict.fromkeys(all_param_names(model), 1.0), {"kind": "reference", "model": donor}),
    ]


# --------------------------------------------------------------------------- validation


def check_compatible_configs(base_cfg: Any, variant_cfg: Any, base_spec: str, variant_spec: str) -> None:
    """Refuse a pair of different architectures or shapes before any weights are loaded."""
    keys = (
        "model_type",
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "vocab_size",
        "num_attention_heads",
        "num_key_value_heads",
        "n_layer",
        "n_embd",
    )
    for k in keys:
        a, b = getattr(base_cfg, k, None), getattr(variant_cfg, k, None)
        if a != b:
            raise MidblockError(
                f"base '{base_spec}' and variant '{variant_spec}' differ in {k} ({a} vs {b})",
                hint="layer surgery needs two models of the same architecture and shape",
            )


def check_source(model: nn.Module, source: TensorSource, names: Iterable[str]) -> None:
    """Every tensor a grid touches exists in the donor with the recipient's shape (checked, not read)."""
    params = dict(model.named_parameters())
    for n in names:
        if not source.has(n):
            raise MidblockError(
                f"the donor ({source.description}) has no tensor {n}",
                hint="are base and variant the same architecture?",
            )
        if tuple(source.shape(n)) != tuple(params[n].shape):
            raise MidblockError(
                f"{n}: donor shape {tuple(source.shape(n))} != recipient shape {tuple(params[n].shape)}",
                hint="layer surgery needs two models of the same shape",
            )


# --------------------------------------------------------------------------- the in-place patch


class Patch:
    """Context manager: mix donor tensors into the model in place; restore the originals on exit."""

    def __init__(self, model: nn.Module, source: TensorSource, weights: dict[str, float], extrapolate: bool = False):
        self.model, self.source, self.weights = model, source, weights
        for n, a in weights.items():
            if not extrapolate and not 0.0 <= a <= 1.0:
                raise MidblockError(f"weight {a} for {n} is outside [0, 1]", hint="pass --extrapolate to allow it")
        self.saved: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __enter__(self) -> Patch:
        params = dict(self.model.named_parameters())
        try:
            for name, a in self.weights.items():
                if a == 0.0:
                    continue  # the recipient's own tensor: nothing to change or save
                p = params[name]
                donor = self.source.get(name).to(device=p.device)
                if a == 1.0:
                    new = donor.to(p.dtype)  # exact transplant, no arithmetic on the values
                else:
                    new = ((1.0 - a) * p.data.float() + a * donor.float()).to(p.dtype)
                # Swap the storage instead of copying into it: the original tensor object itself is kept
                # (no clone, so memory is the model plus the new tensors) and restoring is bit-exact.
                self.saved[name] = p.data
                p.data = new.contiguous()
                del donor, new
        except BaseException:
            self._restore()
            raise
        return self

    @torch.no_grad()
    def _restore(self) -> None:
        params = dict(self.model.named_parameters())
        for name, orig in self.saved.items():
            params[name].data = orig
        self.saved.clear()

    def __exit__(self, *exc: Any) -> None:
        self._restore()


# --------------------------------------------------------------------------- running a grid


def run_configurations(
    model: nn.Module,
    source: TensorSource,
    configs: list[Configuration],
    measure: Callable[[nn.Module], dict[str, Any]],
    *,
    done: set[str] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    extrapolate: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Measure every configuration not in ``done``; the model is restored after each one.

    ``on_result`` receives each finished row at once (the caller appends it to a JSONL so that a killed
    run resumes at the next configuration).
    """
    from tqdm.auto import tqdm

    done = done or set()
    todo = [c for c in configs if c.name not in done]
    rows = []
    for c in tqdm(todo, desc="configurations", disable=not progress or len(todo) < 2):
        t0 = time.perf_counter()
        with Patch(model, source, c.weights, extrapolate=extrapolate) as patch:
            swapped = len(patch.saved)
            metrics = measure(model)
        row = {
            "config": c.name,
            **c.info,
            "tensors_swapped": swapped,
            **metrics,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        log.info("%s: %s", c.name, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return rows
