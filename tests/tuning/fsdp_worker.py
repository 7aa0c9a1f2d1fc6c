"""Run under ``torchrun --nproc-per-node 2`` by ``test_fsdp.py``: several FSDP trainings in one process group.

``python -m torch.distributed.run --nproc-per-node 2 tests/tuning/fsdp_worker.py OUT`` writes, under OUT:
``mid`` (midblock, uninterrupted), ``mid-resumed`` (the same run stopped after step 2, then ``--resume``d),
``lora`` (all-block LoRA), and ``probe.json`` (what one checkpointed FSDP step does in each block). One
launch instead of five: process start-up dominates on 2 cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from midblock.tuning.config import MidBlockConfig
from midblock.tuning.trainconfig import TrainConfig

MODEL = "random:llama-tiny"


def config(out: Path, method: str, **kw) -> TrainConfig:
    """The FSDP side of the comparison: 2 processes x batch 2 (the single-process twin: batch 2 x accum 2)."""
    band = "2-3" if method != "lora" else "seg2-4/5"  # lora trains every block whatever the band
    tuning = MidBlockConfig(method=method, band=band, rank=4)
    d = dict(
        model=MODEL,
        task="arith",
        out=str(out),
        train_rows=16,
        steps=4,
        batch_size=2,
        max_length=256,
        eval_loss_items=4,
        progress=False,
        tuning=tuning,
        lr=5e-3,
        warmup_steps=1,
        fsdp=True,
    )
    d.update(kw)
    return TrainConfig(**d)


def main(out: Path) -> None:
    from midblock.tuning.train import train

    train(config(out / "mid", "midblock"))
    part = train(config(out / "mid-resumed", "midblock"), on_step=lambda step, loss: step == 2)
    assert part.stopped and part.steps == 2, part
    train(config(out / "mid-resumed", "midblock", resume=True))
    train(config(out / "lora", "lora", steps=2))
    probe(out / "probe.json")


def probe(path: Path) -> None:
    """One training step of band LoRA (blocks 2-3) with checkpointing, sharded. Per block: whether its output
    requires grad (if not, autograd has no node there and never visits the block), and how often its first
    linear ran (2 = recomputed in backward, i.e. checkpointed; transformers checkpoints ``forward``, so
    the block's own hooks, FSDP's included, run once)."""
    import torch.distributed as dist

    from midblock.models import load_model
    from midblock.models.introspect import get_layout
    from midblock.tuning.fsdp import shard_model
    from midblock.tuning.loss import causal_lm_loss
    from midblock.tuning.prepare import prepare_model

    torch.manual_seed(0)
    model = prepare_model(load_model(MODEL)[0], MidBlockConfig(band="2-3", rank=4, gradient_checkpointing=True))
    model.train()
    model = shard_model(model, torch.device("cpu"))
    lay = get_layout(model)
    grad_out: dict[int, list[bool]] = {}
    runs: dict[int, int] = {}
    for i, block in enumerate(lay.blocks):
        block.register_forward_hook(
            lambda _m, _i, out, i=i: grad_out.setdefault(i, []).append(
                (out[0] if isinstance(out, tuple) else out).requires_grad
            )
        )
        # a pre-hook on the block's first linear: checkpoint recomputation may stop early, before a
        # module's post-hooks run, but it always starts at the top of the block
        block.get_submodule(lay.attn_linears[0]).register_forward_pre_hook(
            lambda *_a, i=i: runs.__setitem__(i, runs.get(i, 0) + 1)
        )
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(dist.get_rank()))
    loss, _ = causal_lm_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    loss.backward()
    grads = sorted(n for n, p in model.named_parameters() if p.grad is not None)
    if dist.get_rank() == 0:
        path.write_text(json.dumps({"requires_grad": grad_out, "runs": runs, "grads": grads}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
