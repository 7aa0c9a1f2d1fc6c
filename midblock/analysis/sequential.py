"""One model at a time (``analyze(..., sequential=True)``, ``--sequential``): what the paired metrics need
from the base is kept on disk while the variants run, so only one model is ever resident.

The base runs over every batch first. Per-model accumulators need nothing from another model; the
paired ones need, per batch, the base's real-token states (token-level CKA, logit-lens agreement and KL),
the base's final norm and LM head (to read those states through the lens), and for ``weight_delta`` the
base's weights. The states are spilled per batch as safetensors (``SpillWriter``) and read back, for the
identical batch, by ``BasePair`` (which stands in for the base collector of the lockstep mode); the lens
modules are kept as a small detached copy; the weights go to one safetensors file read one tensor at a
time (``SavedWeights``). Every number is computed from identical float32 inputs by identical operations,
so the results equal the lockstep mode's (tested).
"""

from __future__ import annotations

import copy
import gc
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from midblock.analysis.weights import base_weights
from midblock.errors import MidblockError
from midblock.io import atomic_path

log = logging.getLogger(__name__)


def _batch_file(folder: Path, batch) -> Path:
    # a batch is named by its first global sample index: every sample is in exactly one batch, and the
    # name does not depend on which process (data-parallel rank) ran it
    return folder / f"b{int(batch.idx[0])}.safetensors"


class SpillWriter:
    """``on_keep`` callback of the base pass: saves the base's kept real-token states of each batch."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bytes = 0

    def __call__(self, batch, keep: dict[int, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tensors = {f"l{layer}": t.detach().float().contiguous().cpu() for layer, t in keep.items()}
        self.bytes += sum(t.numel() * 4 for t in tensors.values())
        with atomic_path(_batch_file(self.folder, batch)) as tmp:
            save_file(tensors, str(tmp))


def _param_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def detached_copy(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """A private copy of a small module (final norm, LM head) that survives freeing its model.

    Accelerate's dispatch hooks (``device_map``) are removed from the copy; offloaded weights (on the meta
    device) cannot be copied, which is reported instead of failing later.
    """
    if module is None:
        return None
    if any(p.device.type == "meta" for p in module.parameters()):
        raise MidblockError(
            "the base's final norm or LM head is offloaded: the logit lens cannot run one model at a time",
            hint="give the LM head a device in --device-map, or leave logit_lens out of --metrics",
        )
    dup = copy.deepcopy(module)
    try:
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(dup, recurse=True)
    except ImportError:
        pass
    return dup


class BasePair:
    """Stands in for the base's collector while a variant runs alone: ``keep`` holds the base's spilled
    real-token states of the current batch; ``norm``/``head`` are copies of the base's lens modules."""

    def __init__(self, folder: str | Path, norm: torch.nn.Module | None, head: torch.nn.Module | None):
        self.folder = Path(folder)
        self.norm, self.head = norm, head
        self.keep: dict[int, torch.Tensor] = {}

    def __call__(self, batch) -> BasePair:
        """Load the states of ``batch`` (the same batch the base saw) and return self."""
        from safetensors.torch import load_file

        f = _batch_file(self.folder, batch)
        if not f.exists():
            raise MidblockError(
                f"the base's spilled states for batch {f.stem} are missing from {self.folder}",
                hint="rerun without --resume (the spill folder was removed or is from another run)",
            )
        self.keep = {int(k[1:]): v for k, v in load_file(str(f)).items()}
        return self

    def _dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    def _device(self) -> torch.device:
        return _param_device(self.head)


def save_base_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Save what ``weights.weight_delta`` reads from the base (``weights.base_weights``) as safetensors."""
    from safetensors.torch import save_file

    tensors = {k: w.detach().contiguous().cpu() for k, w in base_weights(model).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


class SavedWeights(Mapping):
    """The base weights saved by ``save_base_weights``, read one tensor at a time (memory-mapped file)."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = str(path)
        with safe_open(self.path, framework="pt") as f:
            self._keys = list(f.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self._keys:
            raise KeyError(key)
        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def release_memory() -> None:
    """Return a freed model's memory: collect reference cycles, then empty the CUDA cache when there is one.

    The caller drops its own references first (``model = None``); a function cannot delete them.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def remove_spill(folder: str | Path) -> None:
    """Delete the spill folder (after a successful run)."""
    shutil.rmtree(folder, ignore_errors=True)
