"""CPU cost of the forgetting probe against the evaluation it sits beside, in one process.

Scores the bundled probe (``general``: every text, batch 8, 512-token cap) and then decodes ``--items``
``arith`` test items with the band landscape's evaluation settings (protocol ``original``, 96 new tokens,
batch 16), on the same loaded model; prints CPU and wall time of each and the probe's share of an
evaluation of ``--scale`` items. CPU time is the figure to compare on a shared machine (wall time grows
with the load of other jobs).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/forgetting_cost.py --items 48 --scale 400
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--items", type=int, default=48, help="arith test items decoded")
    ap.add_argument("--scale", type=int, default=400, help="test items of the evaluation compared against")
    args = ap.parse_args()

    from midblock.data.general import general_texts
    from midblock.evaluation.config import EvalConfig
    from midblock.evaluation.evaluate import evaluate_model
    from midblock.evaluation.ppl import token_loss
    from midblock.models import load_model

    model, tok = load_model(args.model)
    # the probe
    c0, w0 = time.process_time(), time.perf_counter()
    r = token_loss(model, tok, general_texts(), batch_size=8, max_length=512)
    c1, w1 = time.process_time(), time.perf_counter()
    # the evaluation beside it
    cfg = EvalConfig(task="arith", protocol="original", eval_items=args.items, batch_size=16, max_new_tokens=96)
    evaluate_model(model, tok, cfg, progress=False)
    c2, w2 = time.process_time(), time.perf_counter()
    per_item = (c2 - c1) / args.items
    from machine import machine_line  # bench/machine.py: the CPU capability next to every timing

    print(machine_line())
    print(f"probe: {r['n_texts']} texts, {r['n_tokens']} scored tokens, cpu {c1 - c0:.1f} s, wall {w1 - w0:.1f} s")
    print(f"evaluation: {args.items} items, cpu {c2 - c1:.1f} s, wall {w2 - w1:.1f} s")
    print(f"probe / evaluation of {args.scale} items (cpu): {(c1 - c0) / (per_item * args.scale):.2f}")


if __name__ == "__main__":
    main()
