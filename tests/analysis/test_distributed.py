"""Data-parallel extraction: two gloo processes each hold the accumulators of half of the batches; after
``reduce_across_processes`` they equal the single-process ones (what `accelerate launch` / `torchrun` runs).
The shards are computed here and handed to the workers, so the workers only need torch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from midblock.analysis.capture import CaptureSpec, ModelStats, collect, make_batches, reduce_across_processes

SEQS = [[(5 * i + 11 * j) % 250 + 1 for j in range(4 + 3 * i)] for i in range(7)]
SPEC = dict(layers=[0, 2, 6], token_cka=True)


def _worker(rank: int, world: int, init: str, shard_files: list[str], out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        shard = torch.load(shard_files[rank], weights_only=False)
        stats = reduce_across_processes({k: ModelStats.from_state(v) for k, v in shard.items()})
        if rank == 0:
            torch.save({k: v.state() for k, v in stats.items()}, out)
    finally:
        dist.destroy_process_group()


def test_two_process_reduction_equals_single_process(tmp_path, tiny):
    base, _ = tiny("llama-tiny", seed=0)
    var, _ = tiny("llama-tiny", seed=1)
    models = {"base": base, "v": var}
    batches = list(make_batches(SEQS, 2, 256))
    whole = collect(models, batches, CaptureSpec(**SPEC))
    files = []
    for rank in range(2):  # the batch split `analyze` uses: batch i goes to rank i % world
        shard = collect(models, [b for i, b in enumerate(batches) if i % 2 == rank], CaptureSpec(**SPEC))
        files.append(str(tmp_path / f"shard{rank}.pt"))
        torch.save({k: v.state() for k, v in shard.items()}, files[-1])
    out = tmp_path / "reduced.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/pg", files, str(out)), nprocs=2, join=True)
    reduced = torch.load(out, weights_only=False)
    for name in ("base", "v"):
        w, r = whole[name], reduced[name]
        for k in w.sums:
            assert r["sums"][k] == pytest.approx(w.sums[k], rel=1e-6) and r["counts"][k] == w.counts[k]
        for layer in SPEC["layers"]:
            idx, Z = w.Z(layer)
            ridx, rZ = r["pooled"][layer][0]
            assert torch.equal(ridx, idx)
            torch.testing.assert_close(rZ, Z, rtol=1e-5, atol=1e-6)
    for layer in SPEC["layers"]:
        for key in ("sxy", "sxx", "syy", "sx", "sy", "n"):
            torch.testing.assert_close(reduced["v"]["moments"][layer][key], whole["v"].moments[layer][key])
