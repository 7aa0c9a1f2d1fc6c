"""Step time, peak memory, trainable parameters and backward depth of every arm of a `midblock compare` grid,
each arm built exactly as the grid trains it, in one quiet interleaved run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/selection_arms.py --threads 2 --out bench/results/selection_arms.md \\
        -- --preset selection-family --precision fp32

Everything after ``--`` is a `midblock compare` command line (preset, ``--config``, flags): the script builds
the same grid (``grid_from_args``), resolves ``auto`` from the same base-model analysis (cached in ``--cache``),
and for every arm takes its seed-0 training run as the grid would start it (`CompareConfig.train_config`: the
same data, batch, length, precision, selection and optimizer), changing only the number of steps and the
evaluation-loss set. Each arm trains in its own worker process (this script with ``--worker LABEL``): set-up,
one warm-up step, then ``--steps`` timed steps; rounds interleave the arms (A B C ..., A B C ...), so a slow
spell hits every arm alike. The study's own clocks ran beside other work; these figures are for a quiet
machine and are what the study's report quotes per arm.

Per worker: the median wall and CPU time of its timed steps; the peak resident memory during the timed steps
(the loaded model, the trainable state and its Adam moments, the step's activations and gradients: the
arms load the same model, so differences are the arm's); the worker's maximum RSS (loading included); the
trainable parameters and backward depth from the run's own parameter table. Ratios: the median over rounds of
the per-round ratio to the baseline arm (the grid's ``baseline``, uniform LoRA).

LISA draws its active blocks every G steps; the timed steps lie inside the first draw of seed 0, so its time
and depth are those of that draw (the table says which blocks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from procstats import Sampler, cpu_line, gib, run_worker, uptime, write_report  # bench/procstats.py


def _grid(compare_argv: list[str]):
    """The CompareConfig that ``midblock compare COMPARE_ARGV`` would run."""
    from midblock.cli import build_parser
    from midblock.cli.compare import grid_from_args
    from midblock.experiments.grid import CompareConfig

    args = build_parser().parse_args(["compare", *compare_argv])
    return CompareConfig.from_dict(grid_from_args(args))


def _resolved(compare_argv: list[str], cache: str):
    """The grid with ``auto`` resolved from its base-model analysis (run once into ``cache``, then read back)."""
    from midblock.experiments.runner import resolve_auto_bands

    cc, _ = resolve_auto_bands(_grid(compare_argv), Path(cache))
    return cc


def _arm_run(cc, label: str, steps: int, out: Path):
    """The seed-0 training run of arm ``label`` as the grid starts it, for ``steps`` steps."""
    m = next(m for m in cc.methods if str(m.get("name") or m["method"]) == label)
    (cell,) = cc.expand(m, cc.seeds[0])
    cell = replace(cell, train=cell.train | {"lr": cc.arm_lrs(m)[0]})  # the rate changes no cost
    return replace(cc.train_config(cell, out, progress=False), steps=steps, eval_loss_items=4)


# --------------------------------------------------------------------------- one arm (a worker)


def _worker(label: str, args: argparse.Namespace) -> dict:
    import torch

    from midblock.tuning.train import train

    torch.set_num_threads(args.threads)
    cc = _resolved(args.compare, args.cache)
    marks: list[tuple[float, float]] = []  # (wall, CPU) before set-up, then after each step
    losses: list[float] = []

    def on_step(step: int, loss: float) -> bool:
        marks.append((time.perf_counter(), time.process_time()))
        losses.append(loss)
        return False

    with tempfile.TemporaryDirectory() as tmp, Sampler() as sampler:
        tc = _arm_run(cc, label, args.steps + 1, Path(tmp) / "run")
        marks.append((time.perf_counter(), time.process_time()))
        train(tc, on_step=on_step)
        table = json.loads((Path(tmp) / "run" / "param_table.json").read_text())["rows"][0]
        plan = json.loads((Path(tmp) / "run" / "train_config.json").read_text())["plan"]
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    timed = [s for t, s in sampler.samples if marks[1][0] <= t <= marks[-1][0]]
    return {
        "name": label,
        "setup_and_warmup_s": wall[0],
        "step_s": wall[1:],
        "median_s": statistics.median(wall[1:]),
        "cpu_median_s": statistics.median(cpu[1:]),
        "peak_rss_steps": max(timed) if timed else None,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "trainable_params": table["trainable_params"],
        "backward_depth": table["backward_depth"],
        "blocks_trained": table["blocks_trained"],
        "method": tc.tuning.method,
        "selection": plan.get("band_spec"),
        "trainable_blocks": plan.get("trainable_blocks_str"),
        "first_loss": losses[0] if losses else None,
    }


# --------------------------------------------------------------------------- the driver


def _paired(per: dict, n: str, base: str, key: str) -> float | None:
    pairs = [a[key] / b[key] for a, b in zip(per[n], per[base]) if a[key] and b[key]]
    return statistics.median(pairs) if pairs else None


def render(args, cc, labels: list[str], results: list[dict], up: tuple[str, str], wall: float) -> str:
    from machine import machine_line  # bench/machine.py: the CPU capability next to every timing

    from midblock.io import package_versions

    per = {n: [r for r in results if r["name"] == n] for n in labels}
    base = cc.baseline if cc.baseline in labels else labels[0]
    t = cc.train
    lines = [
        "# The arms of one compare grid: step time, peak memory, trainable parameters, backward depth",
        "",
        machine_line() + "  ",
        f"Command: `python bench/selection_arms.py {' '.join(sys.argv[1:])}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; {cpu_line()}; torch threads per worker: "
        f"{args.threads}; wall {wall / 60:.1f} min  ",
        f"Load before: `{up[0]}`  ",
        f"Load after: `{up[1]}`  ",
        f"Versions: {package_versions()}",
        "",
        f"Model {cc.model}, task {cc.task}, each arm's seed-0 run as the grid trains it: batch {t.get('batch_size')}, "
        f"max length {t.get('max_length')}, precision {t.get('precision')}. {args.rounds} interleaved rounds of "
        f"set-up, 1 warm-up step and {args.steps} timed steps per arm. s/step, CPU s/step: medians over rounds of "
        f"each worker's median; `x {base}`: median of the per-round ratios to `{base}`; peak memory: the peak "
        "resident memory during the timed steps (model, trainable state, Adam moments, activations); max RSS: "
        "the worker's maximum (loading included).",
        "",
        f"| arm | form | blocks trained | trainable params | backward depth | s/step | x {base} | CPU s/step | "
        f"x {base} | peak memory GiB | x {base} | max RSS GiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in labels:
        rs = per[n]
        med = {k: statistics.median([r[k] for r in rs]) for k in ("median_s", "cpu_median_s", "peak_rss_steps")}
        ratios = [_paired(per, n, base, k) for k in ("median_s", "cpu_median_s", "peak_rss_steps")]
        fmt = ["" if x is None else f"{x:.2f}" for x in ratios]
        form = "full" if rs[0]["method"] == "midblock-full" else "LoRA"
        lines.append(
            f"| `{n}` | {form} | {rs[0]['blocks_trained']} | {rs[0]['trainable_params']:,} | "
            f"{rs[0]['backward_depth']} | {med['median_s']:.2f} | {fmt[0]} | {med['cpu_median_s']:.2f} | {fmt[1]} | "
            f"{gib(med['peak_rss_steps'])} | {fmt[2]} | {gib(statistics.median(r['max_rss'] for r in rs))} |"
        )
    lines += ["", "Per-round step times (s, median of each worker's timed steps):", "", "```"]
    for rnd in range(args.rounds):
        lines.append(f"round {rnd + 1}: " + ", ".join(f"{n} {per[n][rnd]['median_s']:.2f}" for n in labels))
    return "\n".join(lines + ["```"]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per worker (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    ap.add_argument("--arms", default="", help="comma list of arm labels (default: every arm of the grid)")
    ap.add_argument("--cache", default="runs/bench-selection-arms", help="where the auto analysis is kept")
    ap.add_argument("--out", default=None, help="write the markdown report here (and the raw results as .json)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("compare", nargs=argparse.REMAINDER, help="-- then a `midblock compare` command line")
    args = ap.parse_args()
    args.compare = [a for a in args.compare if a != "--"] or ["--preset", "selection-family", "--precision", "fp32"]
    if args.worker:
        print("RESULT " + json.dumps(_worker(args.worker, args)), flush=True)
        return 0
    cc = _resolved(args.compare, args.cache)  # the analysis behind `auto` runs here, once, not in a worker
    labels = [c.label for c in cc.cells() if c.seed == cc.seeds[0]]
    if args.arms:
        unknown = sorted(set(args.arms.split(",")) - set(labels))
        if unknown:
            ap.error(f"no arm {unknown[0]} in the grid (arms: {', '.join(labels)})")
        labels = [n for n in labels if n in args.arms.split(",")]
    up_start, t0 = uptime(), time.perf_counter()
    results: list[dict] = []
    head = [sys.executable, __file__, "--steps", str(args.steps), "--threads", str(args.threads)]
    for rnd in range(args.rounds):
        for name in labels:
            cmd = [*head, "--cache", args.cache, "--worker", name, "--", *args.compare]
            r = run_worker(cmd, name) | {"round": rnd}
            results.append(r)
            print(
                f"round {rnd + 1} {name}: {r['median_s']:.2f} s/step (CPU {r['cpu_median_s']:.2f}), peak "
                f"{gib(r['peak_rss_steps'])} GiB, depth {r['backward_depth']}, {r['trainable_params']:,} params",
                flush=True,
            )
    report = render(args, cc, labels, results, (up_start, uptime()), time.perf_counter() - t0)
    write_report(args.out, report, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
