"""Page faults and kernel time of a training step under three glibc allocator settings, for `lora` and
`midblock`: why `bench/train_step.py` times its steps with an allocator that reuses freed memory.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/page_faults.py --model smollm2-135m --batch 8 --seq 256

Each setting runs in its own child process (glibc reads ``MALLOC_*`` at start-up):

- ``default``: glibc's adaptive thresholds, what a plain ``midblock train`` gets;
- ``mmap-all``: every allocation above 64 KiB is its own mmap (what the memory phase of train_step uses, so
  RSS follows the live tensors); freed tensors go back to the OS, so each step faults its memory in again;
- ``reuse``: mmap only above 32 MiB and trim only above 256 MiB free (train_step's timing phase in its runs C
  and D; it now never trims).

Per step: wall seconds, kernel (sys) seconds and minor page faults, after one warm-up round, configurations
alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = {
    "default": {},
    "mmap-all": {"MALLOC_MMAP_THRESHOLD_": "65536"},
    "reuse": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20)},
}


def child(args) -> None:
    import copy

    import torch

    from midblock.layers import resolve_layers
    from midblock.models import load_model
    from midblock.models.introspect import get_layout
    from midblock.tuning.budget import match_budget
    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.loss import causal_lm_loss
    from midblock.tuning.prepare import prepare_model

    torch.set_num_threads(1)
    base, _ = load_model(args.model, dtype="fp32", device="cpu")
    n = get_layout(base).num_layers
    bm = match_budget(n, 8, resolve_layers("seg2-4/5", n))
    models = {
        "lora": prepare_model(copy.deepcopy(base), MidBlockConfig(method="lora", rank=8)),
        "midblock": prepare_model(copy.deepcopy(base), MidBlockConfig(rank=bm.rank, alpha=2.0 * bm.rank)),
    }
    vocab = base.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    out: dict[str, dict[str, list[float]]] = {k: {"wall": [], "sys": [], "minflt": []} for k in models}
    for rnd in range(args.rounds + 1):
        for name, m in models.items():
            m.train()
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            loss, _ = causal_lm_loss(m, batch)
            loss.backward()
            m.zero_grad(set_to_none=True)
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            if rnd:
                out[name]["wall"].append(wall)
                out[name]["sys"].append(r1.ru_stime - r0.ru_stime)
                out[name]["minflt"].append(r1.ru_minflt - r0.ru_minflt)
    print("RESULT " + json.dumps(out))


def main() -> int:
    from machine import machine_line  # bench/machine.py: the CPU capability next to every timing

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds after one warm-up round")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    lines = [
        f"Command: `{' '.join(['python', *sys.argv])}`",
        "",
        f"{args.model}, batch {args.batch} x {args.seq}, fp32, one thread; medians of {args.rounds} rounds.",
        "",
        machine_line(),
        "",
        "| allocator | config | s/step | sys s/step | minor faults/step | midblock / lora time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode, env in MODES.items():
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
        res = subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True, check=True)
        data = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))[7:])
        med = {k: {q: statistics.median(v[q]) for q in v} for k, v in data.items()}
        ratio = med["midblock"]["wall"] / med["lora"]["wall"]
        for name, q in med.items():
            r = f"{ratio:.3f}" if name == "midblock" else ""
            lines.append(f"| {mode} | {name} | {q['wall']:.2f} | {q['sys']:.2f} | {q['minflt']:.0f} | {r} |")
        print(lines[-2] + "\n" + lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
