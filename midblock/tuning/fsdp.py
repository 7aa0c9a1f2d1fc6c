"""FSDP for ``midblock train``: torch's ``fully_shard`` (FSDP2), one unit per decoder block.

Why not accelerate's FSDP plugin: accelerate 1.15 ignores it on CPU (``Accelerator(cpu=True,
fsdp_plugin=...)`` under 2 processes gives ``DistributedType.MULTI_CPU``, i.e. DDP, with no warning), and
``accelerate launch --cpu --use_fsdp`` is refused. Driving ``fully_shard`` ourselves gives one code path,
tested on CPU (gloo, 2 processes) and the same on GPUs (NCCL; not tested here: no GPU). ``accelerate
launch`` with an FSDP config (which sets ``ACCELERATE_USE_FSDP=true``) or ``midblock train --fsdp`` under
``torchrun`` selects it; the model is not passed to ``accelerate.prepare``.

FSDP2 shards each parameter on its own (DTensor), so frozen and trainable parameters may share a unit
(LoRA inside a block, or a frozen block below the band) without FSDP1's ``use_orig_params``; the
truncated backward is unchanged because sharding does not touch ``requires_grad``. Saving gathers only
the trainable tensors (every rank takes part in the gather, rank 0 writes).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from torch import nn

from midblock.errors import MidblockError
from midblock.models.introspect import get_layout

log = logging.getLogger(__name__)

ENV_FLAG = "ACCELERATE_USE_FSDP"  # set by `accelerate launch` with an FSDP config or --use_fsdp


def _env_true(name: str, default: str = "false") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes")


def fsdp_requested(flag: bool = False) -> bool:
    """FSDP asked for: ``--fsdp``, or an ``accelerate launch`` FSDP configuration in the environment."""
    return flag or _env_true(ENV_FLAG)


def check_fsdp_settings() -> None:
    """Refuse accelerate FSDP options this path would otherwise silently ignore (cheap; before loading)."""
    if _env_true("FSDP_ACTIVATION_CHECKPOINTING"):
        raise MidblockError(
            "fsdp_activation_checkpointing would checkpoint every block (and bring back the full-depth backward)",
            hint="set it to false in the accelerate config and pass --grad-checkpointing (band and above only)",
        )
    if _env_true("FSDP_OFFLOAD_PARAMS"):
        raise MidblockError(
            "fsdp_offload_params is not supported by midblock train",
            hint="set it to false in the accelerate config",
        )
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    if strategy in ("NO_SHARD", "3", "HYBRID_SHARD", "4", "HYBRID_SHARD_ZERO2", "5"):
        raise MidblockError(
            f"fsdp_sharding_strategy {strategy} is not supported by midblock train",
            hint="use FULL_SHARD or SHARD_GRAD_OP, or plain DDP (accelerate launch without FSDP)",
        )


def disable_rank0_only_loading() -> None:
    """Every process loads the whole model before sharding.

    With ``FSDP_CPU_RAM_EFFICIENT_LOADING=true`` (accelerate's default for FSDP) transformers loads real
    weights on local rank 0 only and leaves the others on the meta device, expecting accelerate's own FSDP
    wrapper to broadcast them; this path shards an already-loaded model, so it turns that off for this
    process.
    """
    if _env_true("FSDP_CPU_RAM_EFFICIENT_LOADING"):
        log.info("FSDP: every process loads the full model into CPU memory before sharding")
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` every decoder block, then the root (embedding, final norm, head). In place.

    The wrapping unit is the block class found by ``get_layout`` (e.g. ``LlamaDecoderLayer``), whatever
    ``fsdp_transformer_layer_cls_to_wrap`` says. ``SHARD_GRAD_OP`` (or ``fsdp_reshard_after_forward:
    false``) keeps parameters gathered between forward and backward. Parameter names and ``requires_grad``
    are unchanged (checked).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise MidblockError("FSDP needs a process group", hint="run under accelerate launch or torchrun")
    lay = get_layout(model)
    block_cls = type(lay.blocks[0]).__name__
    wanted = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    if wanted and block_cls not in [w.strip() for w in wanted.split(",")]:
        log.warning("FSDP: wrapping each %s (the model's decoder block), not %s", block_cls, wanted)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    # FSDP2 configs say fsdp_reshard_after_forward, FSDP1 configs fsdp_sharding_strategy (SHARD_GRAD_OP = keep)
    reshard = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper() not in ("SHARD_GRAD_OP", "2")
    reshard = reshard and _env_true("FSDP_RESHARD_AFTER_FORWARD", "true")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in lay.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    # the root (embedding, final norm, head) stays gathered after forward (torch's default for a root):
    # the completion-only loss applies the head to the final hidden states after the model's forward
    fully_shard(model, mesh=mesh, reshard_after_forward=None if reshard else False)
    after = {n: p.requires_grad for n, p in model.named_parameters()}
    if after != before:  # never seen; a guard because the truncated backward depends on it
        raise RuntimeError("fully_shard changed parameter names or requires_grad")
    log.info("FSDP: %d units of %s + root over %d processes", len(lay.blocks), block_cls, dist.get_world_size())
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """FSDP's ``no_sync``: skip the reduce-scatter on all but the last micro-batch of a step."""
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU copies of the parameters that require grad. Collective: call on every rank."""
    from torch.distributed.tensor import DTensor

    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            t = p.detach()
            out[n] = (t.full_tensor() if isinstance(t, DTensor) else t).cpu().clone()
    return out


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer state gathered to full tensors, keyed by parameter name. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, opt: torch.optim.Optimizer, trainable: dict, optim: dict) -> None:
    """Load full trainable tensors and a full optimizer state into the sharded model. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, strict=False)
    missing = set(trainable) - {n for n, p in model.named_parameters() if p.requires_grad}
    if missing:
        raise MidblockError(f"checkpoint holds parameters this model does not train: {sorted(missing)[:3]}")
    set_model_state_dict(model, trainable, options=opts)
    set_optimizer_state_dict(model, opt, optim, options=StateDictOptions(full_state_dict=True))
