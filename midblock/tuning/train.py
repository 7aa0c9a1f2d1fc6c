"""``train(TrainConfig) -> TrainResult``: the training loop behind ``midblock train`` and ``midblock compare``.

A plain loop on ``accelerate`` (one CPU, one GPU, or several processes under ``accelerate launch`` /
``torchrun``: DDP, or FSDP through :mod:`midblock.tuning.fsdp` when ``config.fsdp`` or an accelerate FSDP
configuration asks for it). The data order is a pure function of (seed, step), so ``resume`` continues
exactly: the checkpoint holds the trainable tensors, optimizer, scheduler and RNG states, and the step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from midblock.data import IGNORE_INDEX, collate, load_examples, load_rows, resolve_task, tokenize_sft
from midblock.errors import MidblockError
from midblock.fingerprint import describe_change, rows_digest, spec_identity
from midblock.io import (
    RunDir,
    append_jsonl,
    atomic_path,
    fresh_output_dir,
    provenance,
    read_json,
    read_jsonl_tolerant,
    save_safetensors,
    write_json,
    write_text,
)
from midblock.launch import describe_run
from midblock.models import load_model
from midblock.models.introspect import get_layout
from midblock.models.loading import RUN_MANIFEST, parse_spec, save_adapter
from midblock.models.skeleton import load_skeleton
from midblock.resources import peak_memory_bytes, reset_peak_memory
from midblock.tuning.budget import format_table, model_shape, parameter_row, predicted_ratios
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.fsdp import (
    check_fsdp_settings,
    disable_rank0_only_loading,
    fsdp_requested,
    full_optimizer_state,
    full_trainable_state,
    grad_sync,
    load_full_state,
    shard_model,
)
from midblock.tuning.loss import causal_lm_loss
from midblock.tuning.precision import default_device_type, resolve_precision, warn_if_emulated
from midblock.tuning.prepare import (
    check_truncated_backward,
    plan,
    prepare_model,
    selection_summary,
    step_trainable_params,
)
from midblock.tuning.slow_run import (
    TIMED_UNITS,
    TRAIN_GFLOPS_PER_CORE,
    WARMUP_UNITS,
    expected_seconds,
    machine_facts,
    note_if_slow,
)
from midblock.tuning.trainconfig import TrainConfig, TrainResult

log = logging.getLogger(__name__)

__all__ = ["MidBlockConfig", "TrainConfig", "TrainResult", "train"]

CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"
CKPT_DIR = "checkpoints"


# --------------------------------------------------------------------------- validation and data


def _validate(config: TrainConfig) -> dict[str, Any]:
    """Everything that can be checked before loading the model or touching the run directory."""

    parse_spec(config.model)
    if config.fsdp:
        check_fsdp_settings()
        if config.monitor.enabled:
            raise MidblockError("--monitor-every does not support --fsdp (sharded parameters)", hint="drop one of them")
    task = resolve_task(config.task, config.data)
    skeleton = load_skeleton(config.model)
    p = plan(config.tuning, get_layout(skeleton))
    out = fresh_output_dir(config.out)
    saved = out / CONFIG_FILE
    if config.resume:
        if not saved.exists():
            if not out.exists():
                raise MidblockError(f"--resume: {out} holds no run to resume", hint="drop --resume to start a new run")
            # killed during start-up, before anything was saved: nothing to lose, start from step 0
            log.warning("--resume: %s holds no saved configuration yet; starting the run from the beginning", out)
            config.resume = False
            return {"task": task, "skeleton": skeleton, "plan": p}
        saved_cfg = read_json(saved)
        if not isinstance(saved_cfg, dict) or not isinstance(saved_cfg.get("train_config"), dict):
            raise MidblockError(f"--resume: {saved} holds no train_config", hint="is it a midblock run directory?")
        try:
            old = TrainConfig.from_dict(saved_cfg["train_config"], warn=False).fingerprint()
        except (TypeError, MidblockError) as e:  # edited by hand, or another version's fields
            raise MidblockError(f"--resume: {saved} holds an invalid train_config: {e}") from e
        new = config.fingerprint()
        diff = [k for k in new if old.get(k) != new.get(k)]
        if diff:
            raise MidblockError(
                f"--resume: {out} was trained with a different {diff[0]} ({old.get(diff[0])!r} != {new[diff[0]]!r})",
                hint="resume with the original settings or choose another --out",
            )
        _check_inputs(out, read_json(saved).get("inputs"), _inputs(config, task))
    elif saved.exists():
        raise MidblockError(f"{out} already holds a training run", hint="pass --resume or choose another --out")
    return {"task": task, "skeleton": skeleton, "plan": p}


def _inputs(config: TrainConfig, task: str) -> dict[str, Any]:
    """The contents a run was trained from: the base model's files and the training rows."""

    rows = load_rows(task, "train", config.data, limit=config.train_rows, dev_size=config.dev_size)
    # the resolved precision: what `auto` means depends on the machine, and a run must not continue in another
    precision = resolve_precision(config.precision, default_device_type())
    return {"model": spec_identity(config.model), "data": rows_digest(rows), "precision": precision}


def _check_inputs(out: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """--resume continues only from the same base weights and the same training data, not just the same names."""

    for key, what in (("model", "base model files"), ("data", "training data"), ("precision", "precision")):
        if key == "precision" and old is not None and key not in old:
            continue  # written by an earlier version, which did not record it
        if old is None or old.get(key) != new[key]:
            change = "no record of them" if old is None else describe_change({key: old.get(key)}, {key: new[key]})
            raise MidblockError(
                f"--resume: {out} was trained from other {what} ({change})",
                hint="resume with the original model and data or choose another --out",
            )


def _load_data(config: TrainConfig, task: str, tokenizer) -> tuple[list, list, dict]:

    train_ex = load_examples(task, "train", config.data, limit=config.train_rows, dev_size=config.dev_size)
    try:
        n_eval = config.eval_loss_items
        eval_ex = load_examples(task, "test", config.data, limit=n_eval) if n_eval else []
    except MidblockError:  # a single jsonl file has no test split: hold out its tail instead
        k = min(config.eval_loss_items, len(train_ex) // 10)
        eval_ex, train_ex = (train_ex[-k:], train_ex[:-k]) if k else ([], train_ex)
    kw = {"completion_only": config.loss_on == "completion", "on_overlong": config.overlong}
    tr = tokenize_sft(train_ex, tokenizer, config.max_length, **kw)
    ev = tokenize_sft(eval_ex, tokenizer, config.max_length, **kw).items if eval_ex else []
    return tr.items, ev, tr.report()


def _micro_batch(config: TrainConfig, n: int, step: int, micro: int, rank: int, world: int) -> list[int]:
    per_step = config.batch_size * config.grad_accum * world
    start = step * per_step + (micro * world + rank) * config.batch_size
    perms: dict[int, torch.Tensor] = {}
    out = []
    for k in range(start, start + config.batch_size):
        epoch, pos = divmod(k, n)
        if epoch not in perms:
            g = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=g)
        out.append(int(perms[epoch][pos]))
    return out


def total_steps(config: TrainConfig, n: int, world: int) -> int:
    if config.steps is not None:
        return config.steps
    per_step = config.batch_size * config.grad_accum * world
    return max(1, math.ceil((config.epochs or 1.0) * n / per_step))


# --------------------------------------------------------------------------- checkpoints


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _save_checkpoint(
    run: Path, step: int, model, opt, sched, gathered: tuple | None = None, world: int = 1, wall_s: float = 0.0
) -> Path:
    """``gathered`` = (trainable, optimizer) full states under FSDP (gathered on every rank beforehand);
    ``wall_s``: the run's training wall time so far (earlier segments of a resumed run included)."""
    ckdir = run / CKPT_DIR
    ckdir.mkdir(exist_ok=True)
    path = ckdir / f"step-{step:07d}.pt"
    state = {
        "step": step,
        "trainable": gathered[0] if gathered else _trainable_state(model),
        "optimizer": gathered[1] if gathered else opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": _rng_state(),
        "world_size": world,  # the data order and the step count depend on it
        "wall_s": float(wall_s),  # a resumed run's wall time adds the segments before it
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    # Keep this checkpoint and the one before it: if the newest is ever damaged (a full disk, a copy cut
    # short), --resume falls back to the previous one instead of losing the run. Checkpoints of later
    # steps belong to a timeline this run abandoned (it resumed from an older one): they go.
    cks = _checkpoints(run)
    older = [c for c in cks if _ckpt_step(c) < step]
    for old in [c for c in cks if _ckpt_step(c) > step] + older[:-1]:
        old.unlink(missing_ok=True)
    return path


def _ckpt_step(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _checkpoints(run: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    cks = [c for c in (run / CKPT_DIR).glob("step-*.pt") if c.stem.split("-", 1)[1].isdigit()]
    return sorted(cks, key=_ckpt_step)


def remove_checkpoints(run: Path) -> None:
    """Delete a finished run's checkpoints (``checkpoints/step-<digits>.pt`` only, then the folder if that
    leaves it empty): the caller's choice once the run's adapter or delta is all it needs (compare does)."""
    for ck in _checkpoints(run):
        ck.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # anything else in it stays, and so does the folder
        (run / CKPT_DIR).rmdir()


def _latest_checkpoint(run: Path) -> Path | None:
    cks = _checkpoints(run)
    return cks[-1] if cks else None


class _Unreadable(Exception):
    """A checkpoint file that cannot be used (truncated, empty, not ours, or a pickle with code in it)."""


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state, read without running code: ``weights_only=True`` unpickles tensors, numbers,
    strings and containers only, so a planted pickle (a run directory someone handed over) is refused."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, a truncated zip (RuntimeError), EOFError...: all unusable
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise _Unreadable(first) from e
    need = {"step": int, "trainable": dict, "optimizer": dict, "scheduler": dict, "rng": dict}
    if not isinstance(st, dict) or any(not isinstance(st.get(k), t) for k, t in need.items()):
        raise _Unreadable("not a midblock training checkpoint")
    return st


def _resume_state(run: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint and its state; an unreadable newer one is named in a warning."""
    cks = _checkpoints(run)
    bad: list[str] = []
    for ck in reversed(cks):
        try:
            st = _read_checkpoint(ck)
        except _Unreadable as e:
            bad.append(f"{ck.name} ({e})")
            continue
        if bad:
            log.warning("--resume: checkpoint %s is unreadable; falling back to %s", "; ".join(bad), ck.name)
        return ck, st
    if bad:
        raise MidblockError(
            f"--resume: no readable checkpoint in {run / CKPT_DIR}: {'; '.join(bad)}",
            hint="delete the run directory to start over",
        )
    return None


def _load_checkpoint(path: Path, model, opt, sched, fsdp: bool = False, world: int = 1, st: dict | None = None) -> int:
    st = st if st is not None else _read_checkpoint(path)
    if st.get("world_size", world) != world:
        raise MidblockError(
            f"--resume: {path.name} was written by a run on {st['world_size']} process(es), this one has {world}; "
            "the data order and the number of steps depend on it",
            hint=f"relaunch with {st['world_size']} process(es) (accelerate launch --num_processes / torchrun)",
        )
    if fsdp:  # every rank read the file; each keeps its shard
        load_full_state(model, opt, st["trainable"], st["optimizer"])
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in st["trainable"].items():
                params[n].copy_(v.to(params[n].device, params[n].dtype))
        opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    torch.set_rng_state(st["rng"]["torch"])
    random.setstate(st["rng"]["python"])
    if "cuda" in st["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["rng"]["cuda"])
    return int(st["step"])


# --------------------------------------------------------------------------- outputs


def _save_outputs(run: Path, model, config: TrainConfig, p, state: dict | None = None) -> dict[str, str | None]:
    """Adapter directory (LoRA) or ``delta.safetensors`` of the trained blocks (full parameters).

    ``state``: the trainable tensors already gathered to full size (FSDP); else read from ``model``.
    """
    if config.tuning.is_lora:
        kw = {"state_dict": state} if state is not None else {}  # PEFT keeps the LoRA keys of it
        with atomic_path(run / "adapter") as tmp:
            save_adapter(model, tmp, config.model, **kw)
        return {"adapter": "adapter", "delta": None}
    state = state if state is not None else _trainable_state(model)
    tensors = {n: t.contiguous() for n, t in state.items()}
    # deterministic bytes: two runs with the same seed give the same file (see save_safetensors)
    save_safetensors(
        run / "delta.safetensors", tensors, metadata={"method": config.tuning.method, "base": config.model}
    )
    return {"adapter": None, "delta": "delta.safetensors"}


def _peak_mem(device: torch.device) -> tuple[int, str]:

    return peak_memory_bytes(str(device)), "cuda_max_allocated" if device.type == "cuda" else "rss"


class _StopFlag:
    """Set by SIGINT/SIGTERM or the ``on_step`` callback; the loop stops at the next step boundary."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        log.warning("signal %d: stopping after this step with a checkpoint", signum)
        self.set = True

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


# --------------------------------------------------------------------------- the loop


def _accelerator(cuda: bool, mixed_precision: str):
    """An ``Accelerator`` for this run. Accelerate keeps its settings in a process-wide singleton that
    refuses a second, different ``mixed_precision``; several ``train()`` calls in one process (``midblock
    compare``) need a fresh one each time. The distributed part (``PartialState``) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=not cuda, mixed_precision=mixed_precision)


@dataclass
class _Run:
    """Everything one training run's phases share (one object instead of a dozen arguments)."""

    config: TrainConfig
    acc: Any  # the accelerate.Accelerator
    model: Any  # what forward/backward run on (DDP- or FSDP-wrapped)
    inner: Any  # the unwrapped model: parameters, checkpoints, outputs
    plan: Any  # the tuning plan (midblock.tuning.prepare.Plan)
    items: list[dict[str, list[int]]]
    eval_items: list[dict[str, list[int]]]
    pad: int
    out: Path
    rundir: RunDir | None
    row: dict[str, Any]  # the parameter table row
    pred: dict[str, float]  # predicted compute ratios
    report: dict[str, Any]  # the truncated-backward check
    t_start: float
    opt: Any = None
    sched: Any = None
    params: list = field(default_factory=list)
    n_steps: int = 0
    start: int = 0  # the step a resumed run continues from
    prior_wall_s: float = 0.0  # a resumed run: the wall time of its segments up to the checkpoint it resumed from
    prior_step_times: list[float] = field(default_factory=list)  # a resumed run: the logged step seconds before
    prior_tok_rates: list[float] = field(default_factory=list)  # ... and the logged tokens per second
    last_ckpt: Path | None = None
    step_times: list[float] = field(default_factory=list)
    tok_rates: list[float] = field(default_factory=list)
    last_loss: float | None = None
    eval_loss: float | None = None
    stopped: bool = False
    monitor: Any = None  # midblock.tuning.monitor.LoopMonitor when --monitor-every is on (main process)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def world(self) -> int:
        return self.acc.num_processes


def train(config: TrainConfig, *, on_step: Callable[[int, float], bool] | None = None) -> TrainResult:
    """Train per ``config`` and write a run directory that ``load_model(run_dir)`` loads.

    Bad input raises ``MidblockError`` before the run directory is created. ``on_step(step, loss)`` is
    called after every optimizer step; returning True stops the run there with a checkpoint (as SIGINT
    does), and ``config.resume=True`` later continues it exactly. Returns a :class:`TrainResult`.
    """
    t_start = time.perf_counter()
    config.fsdp = fsdp_requested(config.fsdp)  # recorded in the run's config: --resume must match it
    checked = _validate(config)
    acc = _start_accelerator(config)
    reset_peak_memory(str(acc.device))  # this run's peak, not an earlier run's in the same process
    # model and data: the base, its tokenizer, the tokenised examples; then the prepared (band) model
    base, tok = load_model(config.model)
    items, eval_items, data_report = _load_data(config, checked["task"], tok)
    torch.manual_seed(config.seed)  # LoRA init
    random.seed(config.seed)
    # for selections that rank blocks on data (cka-select): the examples without their final end-of-sequence
    sel_data = [
        it["input_ids"][:-1] if it["input_ids"][-1:] == [tok.eos_token_id] else it["input_ids"] for it in items[:128]
    ]
    model = prepare_model(base, config.tuning, base_name=config.model, data=sel_data, seed=config.seed)
    checked["plan"] = model.midblock_plan  # the selection as made on the real weights and data
    if checked["plan"].schedule is not None and (acc.num_processes > 1 or config.fsdp):
        raise MidblockError("lisa switches blocks per step on one process only", hint="run it without DDP/FSDP")
    model.train()
    row, pred, table = _parameter_report(config, checked, model, items, acc.is_main_process)
    run = Path(config.out)
    acc.wait_for_everyone()  # every process has validated `out` before the main one writes into it
    rundir = RunDir(run) if acc.is_main_process else None
    if rundir:
        rundir.acquire()
    try:
        # Under the lock (not before it): whether the directory is new, and whether another run finished
        # there meanwhile, are only true while no other process can write into it.
        fresh = bool(rundir) and not config.resume and {p.name for p in run.iterdir()} <= {"RUNNING.lock"}
        if rundir and not config.resume and (run / CONFIG_FILE).exists():
            raise MidblockError(f"{run} already holds a training run", hint="pass --resume or choose another --out")
    except BaseException:
        if rundir:
            rundir.release()
        raise
    try:
        if acc.is_main_process and not config.resume:
            _write_run_config(config, checked, data_report, row, pred, table)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        st = _Run(
            config, acc, model, model, checked["plan"], items, eval_items, pad, run, rundir, row, pred, {}, t_start
        )
        return _loop(st, on_step)
    except MidblockError:
        # A new run that fails before its first checkpoint (the loss turned non-finite at step 2) has nothing
        # to resume, and its train_config.json would make the same --out refuse every later attempt: the
        # directory held only this run's files (it was empty and is locked), so it goes.
        if fresh and _latest_checkpoint(run) is None:
            shutil.rmtree(run, ignore_errors=True)
        raise
    finally:
        if rundir:
            rundir.release()


def _start_accelerator(config: TrainConfig):
    cuda = torch.cuda.is_available()
    device_type = "cuda" if cuda else "cpu"
    resolved = resolve_precision(config.precision, device_type)
    warn_if_emulated(resolved, device_type)  # once per process: the user asked for bf16 on a CPU that emulates it
    acc = _accelerator(cuda, "bf16" if resolved == "bf16" else "no")
    if config.fsdp:
        if acc.num_processes < 2:
            raise MidblockError(
                "FSDP needs several processes; this is one",
                hint="run under accelerate launch --num_processes N or torchrun --nproc-per-node N",
            )
        disable_rank0_only_loading()
    return acc


def _parameter_report(config: TrainConfig, checked: dict, model, items: list, main: bool) -> tuple[dict, dict, str]:
    """The parameter table row (from shapes, checked against the model), the predicted compute ratios, the table."""
    p = checked["plan"]
    shape = model_shape(checked["skeleton"])  # the unwrapped structure: PEFT wraps the target Linear modules
    layout = p.layout(config.tuning.gradient_checkpointing)
    mean_len = sum(len(it["input_ids"]) for it in items) / len(items)
    mean_lab = sum(sum(1 for x in it["labels"][1:] if x != -100) for it in items) / len(items)
    pred = predicted_ratios(
        shape,
        layout,
        baseline_rank=config.tuning.budget_baseline_rank or config.tuning.rank,
        seq_len=int(mean_len),
        tokens=int(config.batch_size * mean_len),
        head_tokens=int(config.batch_size * mean_lab) if config.labelled_head else None,
    )
    row = parameter_row(config.tuning.method, shape, layout, p.alphas, p.scalings)
    n_train = step_trainable_params(model, p)
    if n_train != row["trainable_params"]:  # the table is computed from shapes: say so if the model disagrees
        log.warning(
            "parameter table predicts %d trainable parameters, the model has %d", row["trainable_params"], n_train
        )
        row["trainable_params"], row["share_of_model"] = n_train, n_train / shape.total_params
    table = format_table([row])
    if main:
        log.info("parameters:\n%s", table)
        log.info(
            "backward depth %d of %d blocks; predicted step compute %.3fx all-block LoRA, %.3fx full FT",
            row["backward_depth"],
            shape.num_layers,
            pred["vs_lora"],
            pred["vs_full"],
        )
    return row, pred, table


def _write_run_config(config: TrainConfig, checked: dict, data_report: dict, row: dict, pred: dict, table: str):
    run = Path(config.out)
    prov = provenance(config.to_dict(), config.seed)
    write_json(
        run / CONFIG_FILE,
        {
            "train_config": config.to_dict(),
            "inputs": _inputs(config, checked["task"]),
            "plan": checked["plan"].to_dict(),
            "data": data_report,
            **prov,
        },
    )
    write_json(run / "param_table.json", {"rows": [row], "predicted": pred, **prov})
    write_text(run / "param_table.md", table + "\n")


def _loop(st: _Run, on_step) -> TrainResult:
    """The training loop: set up, resume, then one optimizer step at a time until done or stopped."""
    config = st.config
    if st.main:
        describe_run("train", st.world, config.batch_size, config.grad_accum)
    # wrap (DDP or FSDP), re-check the truncated backward, build the optimizer and the schedule
    _wrap_and_optimise(st)
    # the per-layer monitor (--monitor-every): the base's probe states, taken before a checkpoint is loaded
    st.monitor = _start_monitor(st)
    # resume: trainable tensors, optimizer, schedule and RNG from the newest readable checkpoint
    _resume(st)
    if st.monitor:
        st.monitor.begin(st.inner, st.start)
    bar = tqdm(total=st.n_steps, initial=st.start, disable=not (st.main and config.progress), desc="train", unit="step")
    # the bar is closed on an error too: the one-line error must start on a line of its own
    with _StopFlag() as stop, contextlib.closing(bar):
        for step in range(st.start, st.n_steps):
            # one optimizer step over grad_accum micro-batches, the loss weighted by label tokens
            loss, n_tok, dt = _step(st, step)
            # bookkeeping: timings, evaluation loss, the log line, the progress bar
            _after_step(st, step + 1, loss, n_tok, dt, bar)
            # stop (a signal or the callback says so) with a checkpoint; periodic checkpoints
            if _checkpoint_or_stop(st, step + 1, on_step and on_step(step + 1, loss), stop):
                break
    # finish: the evaluation loss, the adapter or delta, the manifest and the summary
    return _finish(st)


def _wrap_and_optimise(st: _Run) -> None:
    config, acc = st.config, st.acc
    if config.fsdp:  # not acc.prepare: accelerate ignores its FSDP plugin on CPU (see midblock.tuning.fsdp)
        st.report = check_truncated_backward(st.model, fix=False)  # before sharding: it runs the embedding
        st.model = st.inner = shard_model(st.model, acc.device)  # checks names and requires_grad are unchanged
    else:
        st.model = acc.prepare(st.model)
        st.inner = acc.unwrap_model(st.model)
        st.report = check_truncated_backward(st.inner, fix=False)  # re-check after the wrapper is built
    st.params = [x for x in st.inner.parameters() if x.requires_grad]
    st.opt = torch.optim.AdamW(st.params, lr=config.peak_lr, weight_decay=config.weight_decay)
    st.n_steps = total_steps(config, len(st.items), st.world)
    st.sched = get_scheduler(
        config.schedule, st.opt, num_warmup_steps=config.warmup_steps, num_training_steps=st.n_steps
    )


def _start_monitor(st: _Run):
    """The loop's monitor on the main process (None when off): probe rows are the first held-out items."""
    cfg = st.config.monitor
    if not cfg.enabled or not st.main:
        return None
    from midblock.tuning.monitor import LoopMonitor

    return LoopMonitor(st.inner, st.eval_items, st.pad, cfg, st.out)


def _resume(st: _Run) -> None:
    found = None
    if st.config.resume:
        found = _resume_state(st.out)
        if found is None:  # stopped before the first checkpoint: the same run from step 0
            log.warning("--resume: %s has no checkpoint yet; starting from step 0", st.out)
            if st.main:
                write_text(st.out / LOG_FILE, "")
        else:
            st.start = _load_checkpoint(found[0], st.inner, st.opt, st.sched, st.config.fsdp, st.world, st=found[1])
    if st.start:
        # the log's lines up to the checkpoint stay; those after it will be written again
        rows = [r for r in read_jsonl_tolerant(st.out / LOG_FILE) if r.get("step", 0) <= st.start]
        if st.main:
            write_text(st.out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        # the timings of the steps before the checkpoint count: the result describes the whole run. A checkpoint
        # written before midblock stored its wall time gets the sum of the logged step seconds instead.
        st.prior_step_times = _logged(rows, "step_s")
        st.prior_tok_rates = _logged(rows, "tokens_per_s")
        st.prior_wall_s = float(found[1].get("wall_s", sum(st.prior_step_times)))
        log.info("resumed at step %d", st.start)
    st.last_ckpt = found[0] if found else _latest_checkpoint(st.out)  # the one resumed from, not a damaged newer


def _logged(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]


def _step(st: _Run, step: int) -> tuple[float, int, float]:
    """One optimizer step; returns the step's per-token mean loss, its real tokens and its seconds.

    Token-weighted, as HF Trainer (num_items_in_batch): the step's loss is the summed cross-entropy of every
    labelled token of the step (all micro-batches, all processes) over their number, so batch 4 == batch 2 x
    accum 2 == 2 processes x batch 2. DDP and FSDP average the gradients over processes, hence the factor
    ``world`` (Trainer's too)."""
    config, acc, world = st.config, st.acc, st.world
    t0 = time.perf_counter()
    if st.plan.schedule is not None:  # LISA: only this step's active blocks require grad
        st.plan.schedule.begin_step(st.inner, step)
    idx_all, batches = [], []
    for micro in range(config.grad_accum):
        idx = _micro_batch(config, len(st.items), step, micro, acc.process_index, world)
        idx_all += idx
        batches.append(collate([st.items[i] for i in idx], st.pad))
    n_lab = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    n_lab = int(acc.reduce(torch.tensor(n_lab, device=acc.device), "sum"))
    scale = world / max(n_lab, 1)  # no labelled token in the step: zero loss and zero gradient
    step_loss = torch.zeros((), device=acc.device)
    n_tok = 0
    for micro, cpu_batch in enumerate(batches):
        batch = {k: t.to(acc.device) for k, t in cpu_batch.items()}
        sync = micro == config.grad_accum - 1
        if config.fsdp:
            ctx = grad_sync(st.model, sync)
        else:
            ctx = acc.no_sync(st.model) if (world > 1 and not sync) else contextlib.nullcontext()
        with ctx, acc.autocast():
            loss, _ = causal_lm_loss(st.model, batch, config.labelled_head, reduction="sum")
        acc.backward(loss * scale)
        step_loss += loss.detach().float()
        n_tok += int(batch["attention_mask"].sum())
    mean_loss = float(acc.reduce(step_loss, "sum")) / max(n_lab, 1)  # per-token mean of the step
    if not math.isfinite(mean_loss):
        raise MidblockError(
            f"loss is {mean_loss} at step {step + 1} (examples {idx_all[:8]}...)",
            hint=f"last good checkpoint: {st.last_ckpt or 'none'}; lower --lr or check the data",
        )
    if config.max_grad_norm and config.fsdp:  # DTensor gradients: the norm is reduced across ranks
        torch.nn.utils.clip_grad_norm_(st.params, config.max_grad_norm)
    elif config.max_grad_norm:
        acc.clip_grad_norm_(st.params, config.max_grad_norm)
    if st.monitor:  # the gradient shares, before the optimizer step clears the gradients
        st.monitor.before_optimizer_step(st.inner, step + 1)
    st.opt.step()
    st.sched.step()
    st.opt.zero_grad(set_to_none=True)
    if st.plan.schedule is not None:  # every candidate trainable again: checkpoints and outputs hold them all
        st.plan.schedule.end_step(st.inner)
    return mean_loss, n_tok, time.perf_counter() - t0


def _after_step(st: _Run, done: int, loss: float, n_tok: int, dt: float, bar) -> None:
    config = st.config
    st.step_times.append(dt)
    st.tok_rates.append(n_tok * st.world / dt)
    st.last_loss = loss
    if config.eval_every and done % config.eval_every == 0 and st.eval_items:
        st.eval_loss = _eval_loss(st.model, st.eval_items, st.pad, config, st.acc)
    if st.main and done % config.log_every == 0:
        line = {"step": done, "loss": loss, "lr": st.sched.get_last_lr()[0], "step_s": dt}
        if st.plan.schedule is not None:  # LISA: the step's active blocks and backward depth
            sch = st.plan.schedule
            line |= {"active_blocks": sch.active(done - 1), "backward_depth": sch.backward_depth(done - 1)}
        append_jsonl(st.out / LOG_FILE, line | {"tokens_per_s": st.tok_rates[-1], "eval_loss": st.eval_loss})
    if st.main and len(st.step_times) == WARMUP_UNITS + TIMED_UNITS:  # once, early: will this run be slow?
        _note_pace(st)
    if st.monitor:
        st.monitor.after_step(st.inner, done, last=done == st.n_steps)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{st.tok_rates[-1]:.0f}")


def _note_pace(st: _Run) -> None:
    """Say once, after the first timed steps, if the run is far slower than this machine should train it
    (see :mod:`midblock.tuning.slow_run`)."""
    device = st.acc.device.type
    facts = machine_facts(device, resolve_precision(st.config.precision, device))
    gflop = st.pred.get("step_gflops", 0.0) * st.config.grad_accum
    expected = expected_seconds(gflop, TRAIN_GFLOPS_PER_CORE, facts)
    note_if_slow("training", "step", st.step_times, st.n_steps - st.start, expected, facts)


def _checkpoint_or_stop(st: _Run, done: int, callback_says_stop: bool, stop: _StopFlag) -> bool:
    """Every process agrees whether to stop (a signal arriving during the callback included); a checkpoint is
    written when stopping early and every ``save_every`` steps. Returns True to leave the loop."""
    acc = st.acc
    want_stop = bool(callback_says_stop) or stop.set  # read after the callback: a signal may have arrived meanwhile
    flag = acc.reduce(torch.tensor(float(want_stop), device=acc.device), "sum")
    st.stopped = float(flag) > 0 and done < st.n_steps
    if (st.config.save_every and done % st.config.save_every == 0) or st.stopped:
        acc.wait_for_everyone()
        fsdp = st.config.fsdp
        gathered = (full_trainable_state(st.inner), full_optimizer_state(st.inner, st.opt)) if fsdp else None
        if st.main:
            st.last_ckpt = _save_checkpoint(st.out, done, st.inner, st.opt, st.sched, gathered, st.world, _wall_s(st))
    if st.stopped:
        log.warning("stopped at step %d; continue with --resume (checkpoint %s)", done, st.last_ckpt)
    return st.stopped


def _finish(st: _Run) -> TrainResult:
    config, acc = st.config, st.acc
    if st.eval_items and not st.stopped:
        st.eval_loss = _eval_loss(st.model, st.eval_items, st.pad, config, acc)
    if st.monitor:
        st.monitor.close()
    acc.wait_for_everyone()
    result = _result(st)
    state = full_trainable_state(st.inner) if (config.fsdp and not st.stopped) else None  # collective: every rank
    if st.main and not st.stopped:
        out = _save_outputs(st.out, st.inner, config, st.plan, state)
        result.adapter, result.delta = out["adapter"], out["delta"]
        _write_manifest(st, out)
    if st.main:
        write_json(
            st.out / SUMMARY_FILE,
            {**result.to_dict(), "truncated_backward": st.report, **provenance(config.to_dict(), config.seed)},
        )
        if not st.stopped:
            st.rundir.mark_completed()
    acc.wait_for_everyone()
    return result


def _result(st: _Run) -> TrainResult:
    mem, mem_kind = _peak_mem(st.acc.device)
    p = st.plan
    return TrainResult(
        run_dir=str(st.out),
        method=st.config.tuning.method,
        steps=len(st.step_times) + st.start,
        stopped=st.stopped,
        final_loss=st.last_loss,
        eval_loss=st.eval_loss,
        median_step_s=statistics.median(times) if (times := st.prior_step_times + st.step_times) else None,
        tokens_per_s=statistics.median(rates) if (rates := st.prior_tok_rates + st.tok_rates) else None,
        peak_mem_bytes=mem,
        peak_mem_kind=mem_kind,
        trainable_params=st.row["trainable_params"],
        rank_units=st.row["rank_units"],
        scaling=next(iter(p.scalings.values()), None) if p.scalings else None,
        backward_depth=_backward_depth(st),
        selection=selection_summary(p),
        predicted_vs_lora=st.pred["vs_lora"],
        predicted_vs_full=st.pred["vs_full"],
        wall_s=_wall_s(st),
        world_size=st.world,
        fsdp=st.config.fsdp,
        precision=resolve_precision(st.config.precision, st.acc.device.type),
    )


def _wall_s(st: _Run) -> float:
    """The run's wall time: this segment's, plus, for a resumed run, its earlier segments' up to the checkpoint."""
    return st.prior_wall_s + time.perf_counter() - st.t_start


def _backward_depth(st: _Run) -> int:
    """Blocks the backward visited: the plan's depth, or with LISA the deepest of the switches this run saw."""
    sch = st.plan.schedule
    if sch is not None and sch.switches:
        return max(s["backward_depth"] for s in sch.switches)
    return st.report["backward_depth"]


def _write_manifest(st: _Run, out: dict[str, str | None]) -> None:
    p = st.plan
    write_json(
        st.out / RUN_MANIFEST,
        {
            "base": st.config.model,
            "adapter": out["adapter"],
            "delta": out["delta"],
            "method": st.config.tuning.method,
            "band": p.trainable_blocks,
            "band_spec": p.band_spec,
            "targets": p.targets,
            "lora_ranks": {str(k): r for k, r in p.lora_ranks.items()},
        },
    )


def _eval_loss(model, items, pad, config, acc) -> float:
    """Mean loss over the evaluation set (each process takes its share; token-weighted mean)."""

    model.eval()
    tot = torch.zeros(2, device=acc.device)
    mine = items[acc.process_index :: acc.num_processes]
    # the same number of forwards on every rank (FSDP's forward is collective): a rank out of items
    # runs a stand-in batch with weight 0
    n_batches = math.ceil(math.ceil(len(items) / acc.num_processes) / config.batch_size)
    with torch.no_grad():
        for i in range(0, n_batches * config.batch_size, config.batch_size):
            chunk = mine[i : i + config.batch_size]
            batch = {k: t.to(acc.device) for k, t in collate(chunk or items[:1], pad).items()}
            with acc.autocast():
                loss, _ = causal_lm_loss(model, batch, config.labelled_head)
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if chunk else 0
            tot += torch.tensor([float(loss) * n, n], device=acc.device)
    model.train()
    tot = acc.reduce(tot, "sum")
    return float(tot[0] / tot[1]) if float(tot[1]) else float("nan")
