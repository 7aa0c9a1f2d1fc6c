"""Side by side with what people run today: TRL SFTTrainer + PEFT LoRA against `midblock train` and against
SFTTrainer with midblock's prepared model; same model, same GSM8K rows, batch 8, max length 256, fp32.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_e2e.py --data $GSM8K_DIR --out bench/results/train_e2e.md

Each configuration runs in its own process (a worker: this script with ``--worker NAME``), so its peak RSS
(``ru_maxrss``: model, optimizer, activations, the libraries) is its own, as a user would see it. Rounds
interleave the configurations (A B C ... A B C ...), so a slow spell on the shared machine hits every
configuration alike; the step time of a worker is the median of its timed steps (the first step is a
warm-up and not timed); the report gives each configuration's median over rounds and the median of the
per-round ratios to TRL + PEFT LoRA.

Every configuration trains the same 8 GSM8K training rows (the first ones that fit 256 tokens) every step,
so batches and padding are identical across configurations and steps. Configurations:

- ``trl-lora`` / ``trl-lora-ckpt``: SFTTrainer + ``peft_config=LoraConfig(r=8, alpha=16, q,k,v,o)`` on every
  block, TRL's gradient checkpointing off / on (on is TRL's default);
- ``trl-lora-band``: the same with PEFT's ``layers_to_transform`` = the band, r13 (same rank units);
- ``trl-midblock`` / ``trl-midblock-ckpt``: SFTTrainer with ``prepare_model(MidBlockConfig(band=seg2-4/5,
  budget_baseline_rank=8))`` (r13 on blocks 6-23) and ``MidBlockCallback()``, checkpointing off / on;
- ``trl-midblock-trlhead``: as ``trl-midblock`` but ``MidBlockCallback(labelled_head=False)``: TRL's own head;
- ``midblock-train`` / ``midblock-train-ckpt``: ``midblock train`` (``midblock.tuning.train.train``) on the
  band, r13, checkpointing off / on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info, machine_line, shown_argv  # bench/machine.py: the CPU capability next to every timing

CONFIGS = [
    "trl-lora",
    "trl-lora-ckpt",
    "trl-lora-band",
    "trl-midblock",
    "trl-midblock-ckpt",
    "trl-midblock-trlhead",
    "midblock-train",
    "midblock-train-ckpt",
]
BASELINE = "trl-lora"


# --------------------------------------------------------------------------- one configuration (a worker)


def _worker(name: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from midblock.tuning.config import MidBlockConfig

    band_cfg = MidBlockConfig(method="midblock", band=args.band, budget_baseline_rank=args.rank)
    marks: list[float] = []
    losses: list[float] = []
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines()]
    if name.startswith("midblock-train"):
        from midblock.tuning.train import TrainConfig, train

        band_cfg.gradient_checkpointing = name.endswith("-ckpt")

        def on_step(step: int, loss: float) -> bool:
            marks.append(time.perf_counter())
            losses.append(loss)
            return False

        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(
                model=args.model,
                task="jsonl",
                data=args.rows,
                out=str(Path(tmp) / "run"),
                train_rows=len(rows),
                steps=args.steps + 1,
                batch_size=args.batch,
                max_length=args.seq,
                precision="fp32",
                tuning=band_cfg,
                lr=1e-3,
                eval_loss_items=1,
                progress=False,
            )
            t0 = time.perf_counter()
            train(cfg, on_step=on_step)
        marks.insert(0, t0)  # the first interval (set-up + step 1) is the warm-up, dropped below
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import SFTConfig, SFTTrainer

        from midblock import MidBlockCallback, load_model, prepare_model
        from midblock.models.introspect import get_layout

        class Clock(TrainerCallback):
            def on_step_begin(self, a, state, control, **kw):
                if not marks:
                    marks.append(time.perf_counter())

            def on_step_end(self, a, state, control, **kw):
                marks.append(time.perf_counter())

            def on_log(self, a, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    losses.append(float(logs["loss"]))

        model, tok = load_model(args.model)
        ckpt = name.endswith("-ckpt")
        callbacks: list = [Clock()]
        peft_config = None
        qkvo = ["q_proj", "k_proj", "v_proj", "o_proj"]
        if name.startswith("trl-lora"):
            if name == "trl-lora-band":
                from midblock.layers import resolve_layers
                from midblock.tuning.prepare import plan

                p = plan(band_cfg, get_layout(model))
                r = next(iter(p.lora_ranks.values()))
                layers = resolve_layers(args.band, get_layout(model).num_layers)
                peft_config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=qkvo, layers_to_transform=layers)
            else:
                peft_config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=qkvo)
        else:
            model = prepare_model(model, band_cfg)
            callbacks.append(MidBlockCallback(labelled_head=name != "trl-midblock-trlhead"))
        sft = SFTConfig(
            str(Path(tempfile.mkdtemp()) / "out"),
            per_device_train_batch_size=args.batch,
            learning_rate=1e-3,
            max_steps=args.steps + 1,
            max_length=args.seq,
            gradient_checkpointing=ckpt,
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
            peft_config=peft_config,
            callbacks=callbacks,
        )
        trainer.train()
    steps = [b - a for a, b in zip(marks, marks[1:])]
    return {
        "name": name,
        "step_s": steps[1:],
        "warmup_s": steps[0] if steps else None,
        "median_s": statistics.median(steps[1:]) if len(steps) > 1 else None,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "first_loss": losses[0] if losses else None,
    }


# --------------------------------------------------------------------------- the driver


def _rows(args: argparse.Namespace, path: Path) -> int:
    """The first ``batch`` GSM8K training rows that fit ``seq`` tokens, as prompt/completion JSONL."""
    from midblock.data import load_examples, tokenize_sft
    from midblock.models import load_tokenizer

    tok = load_tokenizer(args.model)
    chosen = []
    for ex in load_examples("gsm8k", "train", data=args.data, limit=10 * args.batch):
        if len(tokenize_sft([ex], tok, args.seq).items) == 1:
            chosen.append({"prompt": ex.prompt, "completion": ex.completion})
        if len(chosen) == args.batch:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return len(chosen)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def render(args, names, results, rounds_done, up_start, up_end, wall) -> str:
    per = {n: [r for r in results if r["name"] == n] for n in names}
    med = {n: statistics.median([r["median_s"] for r in per[n]]) for n in names if per[n]}
    rss = {n: statistics.median([r["peak_rss"] for r in per[n]]) for n in names if per[n]}
    ratio = {}
    for n in names:
        pairs = [
            a["median_s"] / b["median_s"]
            for a, b in zip(per[n], per.get(BASELINE, []))
            if a["median_s"] and b["median_s"]
        ]
        ratio[n] = statistics.median(pairs) if pairs else None
    ck_pairs = [
        a["median_s"] / b["median_s"] for a, b in zip(per.get("trl-midblock-ckpt", []), per.get("trl-lora-ckpt", []))
    ]
    lines = [
        "# End-to-end training step: TRL + PEFT against midblock",
        "",
        f"Command: `{' '.join(['python', 'bench/train_e2e.py', *shown_argv(sys.argv[1:], args.data)])}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads per worker: {args.threads}; wall {wall / 60:.1f} min  ",
        f"{machine_line()}  ",
        f"Load before: `{up_start}`  ",
        f"Load after: `{up_end}`",
        "",
        f"Model {args.model}, {args.batch} GSM8K training rows (the same batch every step), max length {args.seq}, "
        f"fp32, band {args.band} at the rank units of all-block r{args.rank}. {rounds_done} interleaved rounds of "
        f"1 warm-up + {args.steps} timed steps per configuration; s/step = median over rounds of each worker's "
        "median step; `vs TRL LoRA` = median of the per-round ratios; peak RSS = the worker process's maximum "
        "resident memory (model, optimizer, activations and the libraries), median over rounds.",
        "",
        "| configuration | s/step | vs TRL LoRA | peak RSS GiB | first logged loss | per-round s/step |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for n in names:
        if n not in med:
            continue
        loss = per[n][0]["first_loss"]
        rounds = ", ".join(f"{r['median_s']:.2f}" for r in per[n])
        lines.append(
            f"| `{n}` | {med[n]:.2f} | {ratio[n]:.2f} | {_gib(rss[n])} | "
            f"{'' if loss is None else f'{loss:.4f}'} | {rounds} |"
        )
    if ck_pairs:
        lines += ["", f"`trl-midblock-ckpt` vs `trl-lora-ckpt` (paired per round): {statistics.median(ck_pairs):.2f}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=os.environ.get("MIDBLOCK_GSM8K"), help="GSM8K directory (train.jsonl)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per worker (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--band", default="seg2-4/5"
    )  # the paper's band (the recorded run used 0.2:0.8: the same blocks at 30)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma list of configurations (default: all)")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(_worker(args.worker, args)), flush=True)
        return 0
    if not args.data:
        ap.error("pass --data DIR (a GSM8K copy with train.jsonl) or set MIDBLOCK_GSM8K")
    names = [n for n in CONFIGS if not args.only or n in args.only.split(",")]
    up_start, t0 = _uptime(), time.perf_counter()
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.jsonl"
        n = _rows(args, rows)
        if n < args.batch:
            ap.error(f"only {n} GSM8K rows fit {args.seq} tokens")
        base = [sys.executable, __file__, *sys.argv[1:], "--rows", str(rows)]
        done = 0
        for rnd in range(args.rounds):
            for name in names:
                proc = subprocess.run([*base, "--worker", name], capture_output=True, text=True, check=False)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                    raise SystemExit(f"worker {name} failed (exit {proc.returncode})")
                r = json.loads(line[len("RESULT ") :])
                r["round"] = rnd
                results.append(r)
                print(f"round {rnd + 1} {name}: {r['median_s']:.2f} s/step, {_gib(r['peak_rss'])} GiB", flush=True)
            done += 1
    report = render(args, names, results, done, up_start, _uptime(), time.perf_counter() - t0)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
        record = {"machine": machine_info(), "results": results}
        Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
