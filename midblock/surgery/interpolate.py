"""Segment-wise weight interpolation ("layer-adaptive merging").

With K = len(weights) segments (the paper's floor rule, ``segment_bounds``), every parameter of a block
in segment k becomes ``(1 - a_k) * base + a_k * variant``; ``0,1,1,1,0`` is the paper's mid-block merge.
Embeddings, the final norm and the LM head stay the base's (only blocks are interpolated). The model is
patched in place and restored (``Patch``); ``save_interpolation`` writes one choice as a standard
Hugging Face model directory, atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from midblock.aliases import renamed_kwargs
from midblock.errors import MidblockError
from midblock.io import atomic_path, read_json, write_json
from midblock.layers import format_indices, segment_bounds
from midblock.models.introspect import get_layout
from midblock.surgery.sources import TensorSource
from midblock.surgery.swap import Configuration, Patch, block_param_names

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def weights_name(weights: list[float]) -> str:
    return "a=" + ",".join(f"{a:g}" for a in weights)


def interpolation_configuration(model: nn.Module, weights: list[float]) -> Configuration:
    """One configuration: the blocks of segment k mixed with weight ``weights[k]``."""
    layout = get_layout(model)
    L = layout.num_layers
    bounds = segment_bounds(L, len(weights))  # raises for more segments than blocks
    per_param: dict[str, float] = {}
    for (lo, hi), a in zip(bounds, weights):
        for n in block_param_names(model, range(lo, hi), layout):
            per_param[n] = float(a)
    info = {
        "kind": "interpolation",
        "weights": ",".join(f"{a:g}" for a in weights),
        "segments": len(weights),
        "segment_blocks": ";".join(format_indices(list(range(lo, hi))) for lo, hi in bounds),
    }
    return Configuration(weights_name(weights), per_param, info)


def block_weights(model: nn.Module, weights: list[float]) -> list[float]:
    """The weight each block receives (for plots with depth on the x axis)."""
    L = get_layout(model).num_layers
    out = [0.0] * L
    for (lo, hi), a in zip(segment_bounds(L, len(weights)), weights):
        out[lo:hi] = [float(a)] * (hi - lo)
    return out


@renamed_kwargs(out_dir="save")
def save_interpolation(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    source: TensorSource,
    weights: list[float],
    save: str | Path,
    extrapolate: bool = False,
) -> Path:
    """Write the interpolated model to ``save`` (``--save``: a model directory, never the run's ``--out``) as a
    standard HF directory (atomic); the in-memory model is restored."""

    config = interpolation_configuration(model, weights)
    save = Path(save)
    check_save_dir(save)  # again, right before the replacement: the directory may have changed since
    with Patch(model, source, config.weights, extrapolate=extrapolate):
        with atomic_path(save) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            files = sorted(p.name for p in Path(tmp).iterdir()) + [SAVE_MARKER]
            write_json(Path(tmp) / SAVE_MARKER, {"weights": weights, "source": source.description, "files": files})
    return save


SAVE_MARKER = "midblock_interpolation.json"  # written last into a --save directory: what midblock put there


def check_save_dir(save: str | Path, out: str | Path | None = None) -> None:
    """``--save`` may be replaced only when it is new, empty, or an earlier ``--save`` holding nothing but
    the files its marker lists; it is never ``--out`` or a directory above it (the run's own state)."""
    save = Path(save)
    if save.exists() and not save.is_dir():
        raise MidblockError(f"--save {save} is a file", hint="choose a directory path")
    if out is not None:
        s, o = save.resolve(), Path(out).resolve()
        if s == o or s in o.parents:
            raise MidblockError(f"--save {save} holds --out {out}", hint="give --save a directory of its own")
    if not save.is_dir() or not any(save.iterdir()):
        return
    marker = save / SAVE_MARKER
    listed = read_json(marker, dict).get("files") if marker.is_file() else None
    foreign = sorted(p.name for p in save.iterdir() if not isinstance(listed, list) or p.name not in listed)
    if foreign:
        raise MidblockError(
            f"--save {save} holds {foreign[0]}, which midblock did not write there, and would be replaced",
            hint="choose a new or empty --save directory",
        )
