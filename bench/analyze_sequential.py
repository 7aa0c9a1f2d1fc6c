"""Peak memory of ``midblock analyze`` with all models loaded (lockstep) vs one at a time (``--sequential``).

SmolLM2-135M (fp32) as the base and two variants ``smollm2-135m+DELTA.safetensors`` whose deltas perturb the
last 10 and the last 5 blocks. Each run is a fresh subprocess (peak RSS is per process); modes interleaved
A B A B. Reported: the process's peak RSS during ``analyze`` (``midblock.resources``: VmHWM after a reset
once imports are done), that peak minus the RSS before ``analyze``, wall time, and whether metrics.csv is
identical between the modes.

Run: ``OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 MIDBLOCK_GSM8K=... .venv/bin/python bench/analyze_sequential.py``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_deltas(folder: Path) -> list[str]:
    import torch
    from safetensors.torch import save_file

    from midblock.models import load_model

    model, _ = load_model("smollm2-135m")
    specs = []
    for name, first, seed in (("last10", 20, 1), ("last5", 25, 2)):
        g = torch.Generator().manual_seed(seed)
        delta = {
            n: (p.detach() * (1 + 0.02 * torch.randn(p.shape, generator=g))).contiguous()
            for n, p in model.named_parameters()
            if n.startswith("model.layers.") and int(n.split(".")[2]) >= first
        }
        path = folder / f"{name}.safetensors"
        save_file(delta, str(path))
        specs.append(f"smollm2-135m+{path}")
    return specs


def child(args: argparse.Namespace) -> None:
    from midblock.analysis.analyze import AnalyzeConfig, analyze
    from midblock.resources import peak_memory_bytes, reset_peak_memory

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    before = rss()
    reset_peak_memory()
    t = time.perf_counter()
    cfg = AnalyzeConfig(
        base="smollm2-135m",
        variants=args.variants,
        datasets=["gsm8k"],
        samples=args.samples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        metrics=args.metrics,
        sequential=args.sequential,
    )
    analyze(cfg, args.out)
    wall = time.perf_counter() - t
    print(json.dumps({"peak": peak_memory_bytes(), "before": before, "wall": wall}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--metrics", default="default,cka_token")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--sequential", action="store_true")
    ap.add_argument("--variants", nargs="*", default=[])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        variants = make_deltas(Path(tmp))
        res: dict[str, list[dict]] = {"lockstep": [], "sequential": []}
        csv: dict[str, str] = {}
        for rep in range(args.reps):
            for mode in ("lockstep", "sequential"):  # interleaved A B A B
                out = Path(tmp) / f"{mode}{rep}"
                cmd = [sys.executable, __file__, "--child", "--out", str(out), "--variants", *variants]
                cmd += ["--samples", str(args.samples), "--max-length", str(args.max_length)]
                cmd += ["--batch-size", str(args.batch_size), "--metrics", args.metrics]
                cmd += ["--sequential"] if mode == "sequential" else []
                p = subprocess.run(cmd, capture_output=True, text=True, check=True)
                res[mode].append(json.loads(p.stdout.strip().splitlines()[-1]))
                csv[mode] = (out / "metrics.csv").read_text()
    mb = 2**20
    from machine import machine_line  # bench/machine.py: the CPU capability next to every timing

    print(machine_line())
    print(f"| mode | peak RSS (MB) | peak - RSS before analyze (MB) | wall (s) |  runs: {args.reps} each, medians")
    print("|---|---:|---:|---:|")
    for mode, rs in res.items():
        peak = statistics.median(r["peak"] for r in rs) / mb
        extra = statistics.median(r["peak"] - r["before"] for r in rs) / mb
        wall = statistics.median(r["wall"] for r in rs)
        print(f"| {mode} | {peak:.0f} | {extra:.0f} | {wall:.1f} |")
    lock, seq = (statistics.median(r["peak"] - r["before"] for r in res[m]) for m in ("lockstep", "sequential"))
    print(f"sequential / lockstep (peak - before): {seq / lock:.2f}")
    print(f"metrics.csv identical: {csv['lockstep'] == csv['sequential']}")


if __name__ == "__main__":
    main()
