"""What a comparison will cost before it runs: its work counted from the grid, and hours projected from rates
measured on this machine.

:func:`plan` counts the work (training runs and optimizer steps per phase, test and dev items decoded,
forgetting texts scored) from the grid alone, in milliseconds. :func:`measure` times the three kinds of work
on this machine with the grid's own model, precision and settings: a few optimizer steps of the baseline arm
(all blocks train, so the backward runs full depth: an upper bound for LoRA arms that stop it earlier) and of
the first full-parameter arm, one decoding batch of the base model on the grid's test items (its time scaled
from the batch's longest completion to the token limit: an upper bound whether an arm stops early or not),
and the forgetting probe's loss on a few texts. :func:`project` multiplies the two. ``midblock compare
--estimate`` prints all three and writes them to ``cost_estimate.json`` in ``--out``; every ``compare``
prints the plan before its first cell, with the projection when that file exists for the same grid.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from midblock.data import load_rows
from midblock.experiments.grid import CompareConfig
from midblock.fingerprint import make
from midblock.tuning.precision import resolve_precision
from midblock.tuning.trainconfig import without_run_control

log = logging.getLogger(__name__)

ESTIMATE_FILE = "cost_estimate.json"
FULL_METHODS = ("midblock-full", "full")
_TIMED_STEPS = 4  # the first is warm-up; the summary's median step is taken over the rest


def grid_key(cc: CompareConfig) -> str:
    """The key of a grid's settings: an estimate is shown only for the grid it was measured for. Run control
    (``save_every``, ``monitor``...: how a run is watched and checkpointed, in no cell's key) is left out, so a
    study that adds ``--save-every`` keeps its estimate."""
    grid = asdict(cc)
    grid["train"] = without_run_control(grid["train"])
    grid["methods"] = [
        m | {"train": without_run_control(m["train"])} if isinstance(m.get("train"), dict) else m
        for m in grid["methods"]
    ]
    return make(grid=grid, threads=torch.get_num_threads())["key"]


def _steps_per_run(cc: CompareConfig) -> Callable[[dict[str, Any]], int]:
    """Optimizer steps of a run with a cell's own training settings; the training rows are read once per
    distinct ``train_rows`` (the step count depends on the training settings only, never on the tuning: band
    ``auto`` is unresolved here)."""
    from midblock.tuning.train import total_steps

    first = replace(cc.cells()[0], tuning={"method": "lora"})

    @functools.cache
    def rows(train_rows: int | None) -> int:
        return len(load_rows(cc.task, "train", cc.data, limit=train_rows, dev_size=cc.train_dev_size))

    def steps(cell_train: dict[str, Any]) -> int:
        tc = cc.train_config(replace(first, train=cell_train), "estimate")
        return int(tc.steps) if tc.steps else total_steps(tc, rows(tc.train_rows), 1)

    return steps


def _full(cell) -> bool:
    """Whether a cell trains full parameters (its steps are timed apart from LoRA's)."""
    return cell.tuning.get("method") in FULL_METHODS


def _eval_items(cc: CompareConfig, split: str, limit: int | None) -> int:
    dev_size = cc.eval_dev_size if split == "dev" else 0
    return len(load_rows(cc.eval_task, split, cc.eval_data, limit=limit, dev_size=dev_size))


def _phase_work(cells: list, steps: Callable[[dict[str, Any]], int], items: int, n_texts: int) -> dict[str, int]:
    """The training runs, optimizer steps (all, and full-parameter ones), decoded items and forgetting texts of
    ``cells``, each trained once and evaluated on ``items`` items."""
    per_cell = [(steps(c.train), _full(c)) for c in cells]
    return {
        "runs": len(cells),
        "steps": sum(n for n, _ in per_cell),
        "full_steps": sum(n for n, full in per_cell if full),
        "decoded": items * len(cells),
        "forgetting_texts": n_texts * len(cells),
    }


def plan(cc: CompareConfig, texts: list[str] | None) -> dict[str, Any]:
    """The grid's work, phase by phase: ``{"search", "main", "base", "totals"}``, each with ``runs``,
    ``steps`` (optimizer steps), ``full_steps`` (those of full-parameter runs), ``decoded`` (items generated)
    and ``forgetting_texts``."""
    n_texts = len(texts or [])
    search_cells, cells = cc.search_cells(), cc.cells()
    search_items = _eval_items(cc, "dev", (cc.lr_search or {}).get("eval_items", cc.eval_items)) if search_cells else 0
    test_items = _eval_items(cc, "test", cc.eval_items)
    steps = _steps_per_run(cc)
    search = _phase_work(search_cells, steps, search_items, n_texts)
    # the search's run at the chosen rate is the first seed's main run: trained once, evaluated twice
    shared = len(cc.methods) if search_cells else 0
    main = _phase_work(cells[shared:], steps, test_items, n_texts) | {"decoded": test_items * len(cells)}
    with_base = cc.include_base or bool(texts)
    base = {
        "runs": 0,
        "steps": 0,
        "full_steps": 0,
        "decoded": test_items if cc.include_base else 0,
        "forgetting_texts": n_texts if with_base else 0,
    }
    totals = {k: search[k] + main[k] + base[k] for k in search}
    return {"search": search, "main": main, "base": base, "totals": totals, "test_items": test_items}


def _time_steps(cc: CompareConfig, cell, progress: bool) -> float:
    """The median optimizer step of ``cell``'s training, over a few steps in a scratch directory."""
    from midblock.tuning.train import train

    with tempfile.TemporaryDirectory(prefix="midblock-estimate-") as tmp:
        timed = replace(cell, train=cell.train | {"steps": _TIMED_STEPS, "warmup_steps": 0, "monitor": {}})
        return float(train(cc.train_config(timed, Path(tmp) / "train", progress=progress)).to_dict()["median_step_s"])


def measure(cc: CompareConfig, texts: list[str] | None, progress: bool = True) -> dict[str, float]:
    """Seconds per optimizer step (the baseline arm's; ``full_step_s``: the first full-parameter arm's, when
    the grid has one), per decoded item and per forgetting text, measured here (see the module)."""
    from midblock.evaluation.evaluate import evaluate_model
    from midblock.experiments.runner import forgetting_loss  # runner imports this module
    from midblock.models import load_model

    cells = cc.cells()
    rates = {"step_s": _time_steps(cc, next(c for c in cells if c.label == cc.baseline), progress)}
    full = next((c for c in cells if _full(c) and c.tuning.get("band") != "auto"), None)
    rates["full_step_s"] = _time_steps(cc, full, progress) if full is not None else rates["step_s"]
    model, tok = load_model(cc.model)
    ecfg = replace(cc.eval_config(), eval_items=min(cc.eval_batch_size, _eval_items(cc, "test", cc.eval_items)))
    t0 = time.perf_counter()
    items = evaluate_model(model, tok, ecfg, progress=progress)["items"]
    elapsed = time.perf_counter() - t0
    # a batch decodes for as many steps as its longest completion (end-of-text counted): scaled to the token
    # limit, an upper bound whether the base stops early (a base model often does) or runs to the limit
    longest = max(len(tok(it["completion"], add_special_tokens=False)["input_ids"]) + 1 for it in items)
    limit = ecfg.decode_config(False).max_new_tokens
    rates["decode_item_s"] = elapsed / len(items) * max(1.0, limit / longest)
    rates["forgetting_text_s"] = 0.0
    if texts:
        sample = texts[: min(8, len(texts))]
        t0 = time.perf_counter()
        forgetting_loss(cc, model, tok, sample, progress=False)
        rates["forgetting_text_s"] = (time.perf_counter() - t0) / len(sample)
    return rates


def project(work: dict[str, Any], rates: dict[str, float]) -> dict[str, float]:
    """Hours per phase and in total: the counted work times the measured rates (model loads not included)."""
    hours = {}
    for phase in ("search", "main", "base"):
        w = work[phase]
        full = w.get("full_steps", 0)
        s = (w["steps"] - full) * rates["step_s"] + full * rates.get("full_step_s", rates["step_s"])
        s += w["decoded"] * rates["decode_item_s"]
        hours[phase] = (s + w["forgetting_texts"] * rates["forgetting_text_s"]) / 3600
    hours["total"] = sum(hours.values())
    return hours


def machine() -> str:
    """This machine in one line: CUDA device, or CPU model, native bf16 or not, threads and cores."""
    from midblock.tuning.precision import cpu_model_name, cpu_native_bf16

    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    bf16 = "native bf16" if cpu_native_bf16() else "no native bf16"
    return (
        f"{cpu_model_name() or 'unknown CPU'} ({bf16}), {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"
    )


def describe(cc: CompareConfig, work: dict[str, Any], hours: dict[str, float] | None, other_grid: bool = False) -> str:
    """The plan (and projection) as the lines ``compare`` prints before it starts. ``other_grid``: the
    ``--out`` holds an estimate measured for other settings (said, not shown)."""
    precisions = sorted({resolve_precision((cc.train | c.train).get("precision", "auto")) for c in cc.cells()})
    lines = [f"cost estimate: {machine()}; training precision {', '.join(precisions)}"]
    for phase in ("search", "base", "main"):
        w = work[phase]
        if not any(w.values()):
            continue
        line = (
            f"  {phase:6s} {w['runs']} training runs, {w['steps']} optimizer steps, {w['decoded']} items decoded, "
            f"{w['forgetting_texts']} forgetting texts scored"
        )
        if hours:
            line += f": about {hours[phase]:.1f} h"
        lines.append(line)
    if hours:
        lines.append(f"  total about {hours['total']:.1f} h on this machine (finished cells are skipped on a rerun)")
    elif other_grid:
        lines.append(
            f"  (hours: {ESTIMATE_FILE} here was measured for other settings; run `midblock compare "
            "--estimate` with this grid to measure it)"
        )
    else:
        lines.append("  (hours: run `midblock compare --estimate` with the same grid and --out)")
    return "\n".join(lines)
