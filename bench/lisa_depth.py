"""LISA's step time against the depth of its backward: ``lisa:G/K:blocks`` when the active blocks sit high
(a short backward) and when they sit low (a long one), interleaved in ONE process.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/lisa_depth.py --model smollm2-135m --batch 4 --seq 128 --rounds 5

One model prepared with ``lisa:G/1:blocks`` (embeddings and head frozen); the schedule's own draws are
searched for a step whose active set lies in the top blocks and one whose set lies in the bottom blocks, and
rounds alternate the two (``begin_step`` with that step, forward, backward, AdamW step, ``end_step``) on the
same fixed batch (random tokens, loss on every position). One warm-up round, then medians of the timed
rounds, the ratio of medians, the median of per-round ratios, and the FLOP model's predicted ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from midblock.models import load_model
from midblock.tuning.budget import Layout, model_shape, step_flops
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.loss import causal_lm_loss
from midblock.tuning.prepare import prepare_model


def find_step(sched, want) -> int:
    """The first step whose active set satisfies ``want``."""
    for s in range(100_000):
        if want(sched.active(s)):
            return s
    raise SystemExit("no such draw in 100,000 steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--gamma", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    base, _ = load_model(args.model)
    shape = model_shape(base)
    model = prepare_model(base, MidBlockConfig(band=f"lisa:{args.gamma}/1:blocks"))
    model.train()
    sched = model.midblock_plan.schedule
    L, g = sched.num_layers, args.gamma
    steps = {
        "high": find_step(sched, lambda a: a[0] >= L - g - 1),
        "low": find_step(sched, lambda a: a[-1] <= g),
    }
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, shape.vocab, (args.batch, args.seq))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for name, s in steps.items():
            t0 = time.perf_counter()
            sched.begin_step(model, s)
            loss, _ = causal_lm_loss(model, batch, True)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.end_step(model)
            if rnd:
                times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    flops = {
        k: step_flops(shape, Layout(full=sched.active(s)), seq_len=args.seq, tokens=tokens).total
        for k, s in steps.items()
    }
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(h / lo for h, lo in zip(times["high"], times["low"]))
    from machine import machine_line  # bench/machine.py: the CPU capability next to every timing

    print(machine_line())
    print(f"model {args.model}, lisa:{g}/1:blocks, batch {args.batch} x {args.seq}, {args.rounds} timed rounds")
    for k, s in steps.items():
        act = sched.active(s)
        print(f"{k:5s} active {act} backward depth {sched.backward_depth(s):2d}: median step {med[k]:.3f} s")
    print(f"high/low step time: {med['high'] / med['low']:.3f} (paired {paired:.3f}); ", end="")
    print(f"FLOP model predicts {flops['high'] / flops['low']:.3f}")


if __name__ == "__main__":
    main()
