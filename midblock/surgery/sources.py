"""Where a donor model's tensors come from, without holding the donor in memory when avoidable.

A ``TensorSource`` answers ``shape(name)`` and ``get(name)`` for parameter names in the recipient's
namespace (``model.layers.3.mlp.up_proj.weight``). Three kinds:

- ``SafetensorsSource``: a Hugging Face model directory (single file or sharded with an index); every
  tensor is read on demand with ``safetensors.safe_open``, so only the tensors a configuration swaps
  are ever in memory. Tied weights (``lm_head.weight`` absent from the file) resolve through aliases.
- ``OverlaySource``: a mid-block delta (``delta.safetensors``, the trained blocks only) over the source
  of the model it was trained from.
- ``DictSource``: tensors already in memory. Used for what has no file to read lazily: ``random:``
  presets and LoRA adapters, which are materialised once (the adapter merged by PEFT) and reduced to
  the tensors the grid needs before the donor model is freed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from midblock.errors import MidblockError
from midblock.io import read_json
from midblock.models import load_model
from midblock.models.loading import parse_spec, resolve_base_dir

log = logging.getLogger(__name__)


def tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """For every parameter name, all names that share its tensor (tied embeddings and LM heads)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {n: names for names in by_id.values() for n in names}


class TensorSource:
    """Donor tensors by recipient parameter name."""

    description = "tensors"

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles (nothing by default)."""


class DictSource(TensorSource):
    """Tensors held in memory (already reduced to what is needed)."""

    def __init__(self, tensors: dict[str, torch.Tensor], description: str = "in-memory tensors"):
        self.tensors = tensors
        self.description = description

    def has(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]


class SafetensorsSource(TensorSource):
    """Lazy reads from the ``*.safetensors`` files of a model directory (or a single file)."""

    def __init__(self, path: str | Path, aliases: dict[str, list[str]] | None = None):
        path = Path(path)
        self.aliases = aliases or {}
        self.description = str(path)
        if path.is_file():
            files = [path]
        else:
            index = path / "model.safetensors.index.json"
            if index.exists():
                weight_map = read_json(index)
                weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
                if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                    raise MidblockError(f"{index} has no valid weight_map", hint="is the download complete?")
                files = sorted({path / f for f in weight_map.values()})
                # like a run manifest, an index names files: they must be the directory's own
                outside = [f for f in files if not f.resolve().is_relative_to(path.resolve())]
                if outside:
                    raise MidblockError(f"{index} points outside {path} ({outside[0]})")
            else:
                files = sorted(path.glob("*.safetensors"))
        if not files:
            raise MidblockError(
                f"{path} holds no .safetensors weights",
                hint="re-save the model with save_pretrained(safe_serialization=True)",
            )
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        from safetensors import safe_open

        for f in files:
            try:
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():  # noqa: SIM118 - safe_open handles have no __iter__
                        self._where[k] = f
                        self._shapes[k] = tuple(h.get_slice(k).get_shape())
            except Exception as e:  # safetensors raises its own error types for a damaged header
                raise MidblockError(f"cannot read {f}: {str(e).splitlines()[0][:150]}", hint="is it truncated?") from e

    def _key(self, name: str) -> str | None:
        for cand in [name, *self.aliases.get(name, [])]:
            if cand in self._where:
                return cand
        return None

    def has(self, name: str) -> bool:
        return self._key(name) is not None

    def shape(self, name: str) -> tuple[int, ...]:
        key = self._key(name)
        if key is None:
            raise KeyError(name)
        return self._shapes[key]

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        key = self._key(name)
        if key is None:
            raise KeyError(name)
        # One open per tensor: the handle is an mmap, so this reads only that tensor's bytes.
        with safe_open(str(self._where[key]), framework="pt") as h:
            return h.get_tensor(key)


class OverlaySource(TensorSource):
    """``top`` (a mid-block delta) where it has the tensor, ``bottom`` (the delta's base) otherwise."""

    def __init__(self, top: TensorSource, bottom: TensorSource):
        self.top, self.bottom = top, bottom
        self.description = f"{top.description} over {bottom.description}"

    def _pick(self, name: str) -> TensorSource:
        return self.top if self.top.has(name) else self.bottom

    def has(self, name: str) -> bool:
        return self.top.has(name) or self.bottom.has(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._pick(name).shape(name)

    def get(self, name: str) -> torch.Tensor:
        return self._pick(name).get(name)


def _model_dir_source(spec_obj, aliases: dict[str, list[str]]) -> TensorSource | None:
    """A lazy source for a spec whose weights sit in a local safetensors directory, else None."""

    if spec_obj.kind == "random":
        return None
    path = Path(resolve_base_dir(spec_obj))
    if path.is_dir() and (any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists()):
        return SafetensorsSource(path, aliases)
    return None


def open_source(
    spec: str,
    needed: Iterable[str],
    aliases: dict[str, list[str]],
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> TensorSource:
    """The cheapest source of ``spec``'s tensors that can serve every name in ``needed``.

    Lazy (safetensors) for model directories, embedded models and deltas over them; materialised and
    reduced to ``needed`` for ``random:`` presets and adapters (PEFT merges the adapter: no LoRA maths
    is re-implemented here).
    """

    ms = parse_spec(spec)
    needed = list(dict.fromkeys(needed))
    if not ms.adapter:
        base_part = _model_dir_source(ms, aliases)
        if base_part is not None:
            if ms.delta:
                return OverlaySource(SafetensorsSource(ms.delta, aliases), base_part)
            return base_part
    # Materialise once, keep only what the grid needs, free the rest.

    log.info("materialising %s to extract %d tensors", spec, len(needed))
    model, _ = load_model(spec, seed=seed, dtype=dtype, merge=True)
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in needed if n not in params]
    if missing:
        raise MidblockError(
            f"variant '{spec}' has no parameter {missing[0]}", hint="are base and variant the same architecture?"
        )
    # No clone: the kept tensors keep their storage alive, everything else is freed with the model, so
    # the peak is two copies (recipient + donor), never three.
    kept = {n: params[n].detach() for n in needed}
    del model, params
    return DictSource(kept, description=f"{spec} (materialised)")
