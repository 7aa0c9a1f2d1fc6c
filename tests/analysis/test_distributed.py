"""Data-parallel extraction.

1. The reduction alone: two gloo processes each hold the accumulators of half of the batches; after
   ``reduce_across_processes`` they equal the single-process ones. The shards are computed here and handed
   to the workers, so the workers only need torch.
2. End to end: ``torchrun --nproc-per-node 2 midblock analyze`` (the process group is set up by
   accelerate's ``PartialState``, as under ``accelerate launch``; accelerate's own ``--cpu`` launcher starts a
   single process unless MPI is configured, so torchrun is the CPU launcher here, as in tests/tuning) writes
   the same metrics.csv as the single-process run, and only rank 0 writes outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from midblock.analysis.capture import CaptureSpec, ModelStats, collect, make_batches, reduce_across_processes
from tests.analysis.conftest import RUN_KW, read_rows
from tests.conftest import REPO

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


def test_torchrun_two_processes_equal_single_process(run, variants, tmp_path):
    ref_out, ref_res, ref_rows = run
    out = tmp_path / "ddp"
    bin_dir = Path(sys.executable).parent
    argv = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python"]
    argv += [str(bin_dir / "midblock"), "analyze", "--base", "random:llama-8l"]
    argv += ["--variant", variants["tail"], "--variant", variants["late"], "--data", *RUN_KW["datasets"]]
    argv += ["--samples", str(RUN_KW["samples"]), "--max-length", str(RUN_KW["max_length"])]
    argv += ["--batch-size", str(RUN_KW["batch_size"]), "--grad-batches", str(RUN_KW["grad_batches"])]
    argv += ["--metrics", RUN_KW["metrics"], "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("wrote ") == 1  # the worker rank reports nothing
    saved = json.loads((out / "results.json").read_text())
    assert saved["world_size"] == 2
    # each rank checkpoints its own shard; every output file comes from rank 0 alone
    assert {f.name for f in (out / "cache").glob("arith.r*.pt")} == {"arith.r0.pt", "arith.r1.pt"}
    assert sorted(f.name for f in out.iterdir()) == sorted(f.name for f in ref_out.iterdir())
    rows = read_rows(out)
    assert len(rows) == len(ref_rows)
    for g, w in zip(rows, ref_rows):
        assert {k: g[k] for k in g if k != "value"} == {k: w[k] for k in w if k != "value"}
        assert float(g["value"]) == pytest.approx(float(w["value"]), rel=1e-9, abs=1e-12, nan_ok=True), g
    assert saved["recommended_band"] == ref_res["recommended_band"]
