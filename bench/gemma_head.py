"""Gemma-3-270m's 262,144-token head: one LoRA training step, midblock's loop against TRL SFTTrainer + PEFT LoRA.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/gemma_head.py --data $GSM8K_DIR \\
        --out bench/results/gemma_head.md

With a 262k vocabulary the LM head is the largest matrix of the model (168M of its 268M parameters) and the
logits of a 4 x 256 batch alone take 1 GiB in float32: where the head runs decides the step's cost. Arms,
all on the same 4 GSM8K training rows (the first that fit 256 tokens; the same batch every step),
completion-only loss, fp32, one torch thread:

- ``trl-lora``: SFTTrainer + ``peft_config=LoraConfig(r=8, alpha=16, q,k,v,o)`` on every block (the baseline);
- ``trl-lora+head``: the same with ``MidBlockCallback()``: midblock's labelled-positions head inside TRL, the
  adapter unchanged, so the difference is the head alone;
- ``midblock-lora``: ``midblock train --method lora --rank 8``: midblock's own loop, the same adapter;
- ``midblock-band``: ``midblock train`` on the paper's band (seg2-4/5 = blocks 3-13 of 18) at the rank units
  of all-block r8 (what midblock recommends).

Each arm runs in its own process (a worker: this script with ``--worker NAME``), one warm-up step and then
``--steps`` timed steps; rounds interleave the arms (A B C D, A B C D), so a slow spell on the shared machine
hits every arm alike. Per worker: the median wall and CPU time of its timed steps, the peak RSS *rise* during
the timed steps above the RSS when they start (activations, logits, gradients: what the head changes; the
model and the optimizer state are resident before), and the process's maximum RSS. The report gives the
medians over rounds and the median of the per-round ratios to ``trl-lora``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from procstats import Sampler, cpu_line, gib, run_worker, uptime, write_report  # bench/procstats.py

ARMS = ["trl-lora", "trl-lora+head", "midblock-lora", "midblock-band"]
BASELINE = "trl-lora"
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


# --------------------------------------------------------------------------- one arm (a worker)


def _midblock_loop(name: str, args: argparse.Namespace, marks: list, losses: list) -> None:
    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.train import TrainConfig, train

    if name == "midblock-lora":
        tuning = MidBlockConfig(method="lora", rank=args.rank)
    else:
        tuning = MidBlockConfig(method="midblock", band=args.band, budget_baseline_rank=args.rank)

    def on_step(step: int, loss: float) -> bool:
        marks.append((time.perf_counter(), time.process_time()))
        losses.append(loss)
        return False

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            model=args.model,
            task="jsonl",
            data=args.rows,
            out=str(Path(tmp) / "run"),
            train_rows=args.batch,
            steps=args.steps + 1,
            batch_size=args.batch,
            max_length=args.seq,
            precision="fp32",
            tuning=tuning,
            lr=1e-3,
            eval_loss_items=1,
            progress=False,
        )
        marks.append((time.perf_counter(), time.process_time()))  # set-up + step 1: the warm-up
        train(cfg, on_step=on_step)


def _trl(name: str, args: argparse.Namespace, marks: list, losses: list) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from midblock import MidBlockCallback, load_model

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if not marks:
                marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, a, state, control, **kw):
            marks.append((time.perf_counter(), time.process_time()))

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    model, tok = load_model(args.model)
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines()]
    callbacks: list = [Clock()] + ([MidBlockCallback()] if name == "trl-lora+head" else [])
    sft = SFTConfig(
        str(Path(tempfile.mkdtemp()) / "out"),
        per_device_train_batch_size=args.batch,
        learning_rate=1e-3,
        max_steps=args.steps + 1,
        max_length=args.seq,
        completion_only_loss=True,
        gradient_checkpointing=False,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=QKVO),
        callbacks=callbacks,
    )
    trainer.train()


def _worker(name: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    marks: list[tuple[float, float]] = []  # (wall, CPU) at the end of each step; [0]: before step 1
    losses: list[float] = []
    with Sampler() as sampler:
        (_midblock_loop if name.startswith("midblock") else _trl)(name, args, marks, losses)
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])][1:]  # step 1 is the warm-up
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])][1:]
    return {
        "name": name,
        "step_s": wall,
        "median_s": statistics.median(wall) if wall else None,
        "cpu_median_s": statistics.median(cpu) if cpu else None,
        "step_rise": sampler.rise(marks[1][0], marks[-1][0]) if len(marks) > 2 else None,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "first_loss": losses[0] if losses else None,
    }


# --------------------------------------------------------------------------- the driver


def _rows(args: argparse.Namespace, path: Path) -> int:
    """The first ``batch`` GSM8K training rows that fit ``seq`` tokens, as prompt/completion JSONL."""
    from midblock.data import load_examples
    from midblock.data.tasks import tokenize_example
    from midblock.models import load_tokenizer

    tok = load_tokenizer(args.model)
    chosen = []
    for ex in load_examples("gsm8k", "train", data=args.data, limit=10 * args.batch):
        if len(tokenize_example(ex, tok)["input_ids"]) <= args.seq:
            chosen.append({"prompt": ex.prompt, "completion": ex.completion})
        if len(chosen) == args.batch:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return len(chosen)


def _paired(per: dict, n: str, key: str) -> float | None:
    pairs = [a[key] / b[key] for a, b in zip(per[n], per.get(BASELINE, [])) if a[key] and b[key]]
    return statistics.median(pairs) if pairs else None


def render(args, results: list[dict], rounds: int, up: tuple[str, str], wall: float) -> str:
    from machine import machine_line, shown_argv  # bench/machine.py: the CPU capability next to every timing

    per = {n: [r for r in results if r["name"] == n] for n in ARMS}
    lines = [
        "# Gemma-3-270m: one LoRA step, midblock against TRL SFTTrainer + PEFT",
        "",
        machine_line() + "  ",
        f"Command: `{' '.join(['python', 'bench/gemma_head.py', *shown_argv(sys.argv[1:], args.data)])}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; {cpu_line()}; torch threads per worker: "
        f"{args.threads}; wall {wall / 60:.1f} min  ",
        f"Load before: `{up[0]}`  ",
        f"Load after: `{up[1]}`",
        "",
        f"Model {args.model}, {args.batch} GSM8K training rows (the same batch every step), max length {args.seq}, "
        f"fp32, completion-only loss. {rounds} interleaved rounds of 1 warm-up + {args.steps} timed steps per arm. "
        "s/step and CPU s/step: medians over rounds of each worker's median; `x TRL` = median of the per-round "
        "ratios to `trl-lora`; step rise = peak RSS during the timed steps minus the RSS when they start; "
        "max RSS = the worker's maximum resident memory (loading included).",
        "",
        "| arm | s/step | x TRL | CPU s/step | x TRL | step rise GiB | x TRL | max RSS GiB | first loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in ARMS:
        if not per[n]:
            continue
        med = {k: statistics.median([r[k] for r in per[n]]) for k in ("median_s", "cpu_median_s", "step_rise")}
        ratios = [_paired(per, n, k) for k in ("median_s", "cpu_median_s", "step_rise")]
        fmt = ["" if x is None else f"{x:.2f}" for x in ratios]
        loss = per[n][0]["first_loss"]
        lines.append(
            f"| `{n}` | {med['median_s']:.2f} | {fmt[0]} | {med['cpu_median_s']:.2f} | {fmt[1]} | "
            f"{gib(med['step_rise'])} | {fmt[2]} | {gib(statistics.median(r['max_rss'] for r in per[n]))} | "
            f"{'' if loss is None else f'{loss:.4f}'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--data", default=os.environ.get("MIDBLOCK_GSM8K"), help="GSM8K directory (train.jsonl)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per worker (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--band", default="seg2-4/5")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the markdown report here (and the raw results as .json)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(_worker(args.worker, args)), flush=True)
        return 0
    if not args.data:
        ap.error("pass --data DIR (a GSM8K copy with train.jsonl) or set MIDBLOCK_GSM8K")
    up_start, t0 = uptime(), time.perf_counter()
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.jsonl"
        if _rows(args, rows) < args.batch:
            ap.error(f"fewer than {args.batch} GSM8K rows fit {args.seq} tokens")
        base = [sys.executable, __file__, *sys.argv[1:], "--rows", str(rows)]
        for rnd in range(args.rounds):
            for name in ARMS:
                r = run_worker([*base, "--worker", name], name) | {"round": rnd}
                results.append(r)
                print(
                    f"round {rnd + 1} {name}: {r['median_s']:.2f} s/step (CPU {r['cpu_median_s']:.2f}), "
                    f"rise {gib(r['step_rise'])} GiB, max RSS {gib(r['max_rss'])} GiB, loss {r['first_loss']}",
                    flush=True,
                )
    report = render(args, results, args.rounds, (up_start, uptime()), time.perf_counter() - t0)
    write_report(args.out, report, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
