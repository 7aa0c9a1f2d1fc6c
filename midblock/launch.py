"""Say what a (possibly distributed) run is: process count, per-process and global batch; catch lost processes.

``accelerate launch --num_processes 2`` on a machine without several GPUs (and without ``--multi_gpu``)
starts its *simple* launcher: one process, silently. That launcher still exports ``MASTER_ADDR`` /
``MASTER_PORT`` when more than one process was asked for, but no ``WORLD_SIZE``; a real multi-process launch
(``torchrun``, or accelerate's ``--multi_gpu`` launcher, which runs torchrun) sets ``WORLD_SIZE``. That
difference is how :func:`dropped_processes` tells them apart.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def dropped_processes(world: int, env: dict[str, str] | None = None) -> bool:
    """True when accelerate's single-process launcher runs this process although several were requested."""
    env = dict(os.environ) if env is None else env
    by_accelerate = any(k in env for k in ("ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION"))
    return world == 1 and by_accelerate and "MASTER_ADDR" in env and int(env.get("WORLD_SIZE", "1")) <= 1


def describe_run(what: str, world: int, batch_size: int, grad_accum: int = 1, env: dict[str, str] | None = None) -> str:
    """Log (and return) one line: processes, per-process batch, global batch; warn about dropped processes."""
    per_step = batch_size * grad_accum * world
    acc = f" x {grad_accum} accumulation" if grad_accum > 1 else ""
    line = (
        f"{what}: {world} process(es), batch {batch_size} per process{acc}, "
        f"global batch {per_step} per {'optimizer step' if what == 'train' else 'forward round'}"
    )
    log.info(line)
    if dropped_processes(world, env):
        log.warning(
            "accelerate was asked for several processes but started one (its single-process launcher: no "
            "--multi_gpu and fewer than 2 GPUs). For several CPU processes use `torchrun --nproc-per-node N "
            "--no-python midblock ...` or `accelerate launch --multi_gpu --num_processes N ...`"
        )
    return line
