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
from pathlib import Path
from typing import Any

import torch

from midblock.errors import MidblockError
from midblock.io import (
    RunDir,
    append_jsonl,
    atomic_path,
    provenance,
    read_json,
    read_jsonl_tolerant,
    write_json,
    write_text,
)
from midblock.tuning.config import MidBlockConfig
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
    from midblock.data import resolve_task
    from midblock.io import fresh_output_dir
    from midblock.models.introspect import get_layout
    from midblock.models.loading import parse_spec
    from midblock.models.skeleton import load_skeleton
    from midblock.tuning.prepare import plan

    parse_spec(config.model)
    if config.fsdp:
        from midblock.tuning.fsdp import check_fsdp_settings

        check_fsdp_settings()
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
            old = TrainConfig.from_dict(saved_cfg["train_config"]).fingerprint()
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
    from midblock.data import load_rows
    from midblock.fingerprint import rows_digest, spec_identity

    rows = load_rows(task, "train", config.data, limit=config.limit)
    return {"model": spec_identity(config.model), "data": rows_digest(rows)}


def _check_inputs(out: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """--resume continues only from the same base weights and the same training data, not just the same names."""
    from midblock.fingerprint import describe_change

    for key, what in (("model", "base model files"), ("data", "training data")):
        if old is None or old.get(key) != new[key]:
            change = "no record of them" if old is None else describe_change({key: old.get(key)}, {key: new[key]})
            raise MidblockError(
                f"--resume: {out} was trained from other {what} ({change})",
                hint="resume with the original model and data or choose another --out",
            )


def _load_data(config: TrainConfig, task: str, tokenizer) -> tuple[list, list, dict]:
    from midblock.data import load_examples, tokenize_sft

    train_ex = load_examples(task, "train", config.data, limit=config.limit)
    try:
        eval_ex = load_examples(task, "test", config.data, limit=config.eval_limit) if config.eval_limit else []
    except MidblockError:  # a single jsonl file has no test split: hold out its tail instead
        k = min(config.eval_limit, len(train_ex) // 10)
        eval_ex, train_ex = (train_ex[-k:], train_ex[:-k]) if k else ([], train_ex)
    tr = tokenize_sft(train_ex, tokenizer, config.max_length)
    ev = tokenize_sft(eval_ex, tokenizer, config.max_length).items if eval_ex else []
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


def _save_checkpoint(run: Path, step: int, model, opt, sched, gathered: tuple | None = None, world: int = 1) -> Path:
    """``gathered`` = (trainable, optimizer) full states under FSDP (gathered on every rank beforehand)."""
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
        from midblock.tuning.fsdp import load_full_state

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
        from midblock.models.loading import save_adapter

        kw = {"state_dict": state} if state is not None else {}  # PEFT keeps the LoRA keys of it
        with atomic_path(run / "adapter") as tmp:
            save_adapter(model, tmp, config.model, **kw)
        return {"adapter": "adapter", "delta": None}
    from midblock.io import save_safetensors

    state = state if state is not None else _trainable_state(model)
    tensors = {n: t.contiguous() for n, t in state.items()}
    # deterministic bytes: two runs with the same seed give the same file (see save_safetensors)
    save_safetensors(
        run / "delta.safetensors", tensors, metadata={"method": config.tuning.method, "base": config.model}
    )
    return {"adapter": None, "delta": "delta.safetensors"}


def _peak_mem(device: torch.device) -> tuple[int, str]:
    from midblock.resources import peak_memory_bytes

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


def train(config: TrainConfig, *, on_step: Callable[[int, float], bool] | None = None) -> TrainResult:
    """Train per ``config`` and write a run directory that ``load_model(run_dir)`` loads.

    Bad input raises ``MidblockError`` before the run directory is created. ``on_step(step, loss)`` is
    called after every optimizer step; returning True stops the run there with a checkpoint (as SIGINT
    does), and ``config.resume=True`` later continues it exactly. Returns a :class:`TrainResult`.
    """
    from midblock.models import load_model
    from midblock.tuning.budget import format_table, model_shape, parameter_row, predicted_ratios
    from midblock.tuning.prepare import prepare_model

    t_start = time.perf_counter()
    from midblock.tuning.fsdp import fsdp_requested

    config.fsdp = fsdp_requested(config.fsdp)  # recorded in the run's config: --resume must match it
    v = _validate(config)
    p = v["plan"]
    cuda = torch.cuda.is_available()
    mp = {"auto": "bf16" if cuda else "no", "fp32": "no", "bf16": "bf16"}[config.precision]
    acc = _accelerator(cuda, mp)
    if config.fsdp:
        if acc.num_processes < 2:
            raise MidblockError(
                "FSDP needs several processes; this is one",
                hint="run under accelerate launch --num_processes N or torchrun --nproc-per-node N",
            )
        from midblock.tuning.fsdp import disable_rank0_only_loading

        disable_rank0_only_loading()
    from midblock.resources import reset_peak_memory

    reset_peak_memory(str(acc.device))  # this run's peak, not an earlier run's in the same process
    main = acc.is_main_process
    base, tok = load_model(config.model)
    items, eval_items, data_report = _load_data(config, v["task"], tok)
    torch.manual_seed(config.seed)  # LoRA init
    random.seed(config.seed)
    model = prepare_model(base, config.tuning, base_name=config.model)
    model.train()

    shape = model_shape(v["skeleton"])  # the unwrapped structure: PEFT wraps the target Linear modules
    layout = p.layout(config.tuning.gradient_checkpointing)
    mean_len = sum(len(it["input_ids"]) for it in items) / len(items)
    mean_lab = sum(sum(1 for x in it["labels"][1:] if x != -100) for it in items) / len(items)
    tokens = config.batch_size * mean_len
    baseline_r = config.tuning.budget_baseline_rank or config.tuning.rank
    pred = predicted_ratios(
        shape,
        layout,
        baseline_rank=baseline_r,
        seq_len=int(mean_len),
        tokens=int(tokens),
        head_tokens=int(config.batch_size * mean_lab) if config.head_at_labels else None,
    )
    row = parameter_row(config.tuning.method, shape, layout, p.alphas, p.scalings)
    n_train = sum(x.numel() for x in model.parameters() if x.requires_grad)
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

    run = Path(config.out)
    acc.wait_for_everyone()  # every process has validated `out` before the main one writes into it
    rundir = RunDir(run) if main else None
    fresh = bool(rundir) and not config.resume and not (run.exists() and any(run.iterdir()))
    if rundir:
        rundir.acquire()
    try:
        if main and not config.resume:
            write_json(
                run / CONFIG_FILE,
                {
                    "train_config": config.to_dict(),
                    "inputs": _inputs(config, v["task"]),
                    "plan": p.to_dict(),
                    "data": data_report,
                    **provenance(config.to_dict(), config.seed),
                },
            )
            write_json(
                run / "param_table.json",
                {"rows": [row], "predicted": pred, **provenance(config.to_dict(), config.seed)},
            )
            write_text(run / "param_table.md", table + "\n")
        return _loop(config, acc, model, items, eval_items, tok, p, row, pred, run, rundir, t_start, on_step)
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


def _loop(config, acc, model, items, eval_items, tok, p, row, pred, run, rundir, t_start, on_step) -> TrainResult:
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from midblock.data import IGNORE_INDEX, collate
    from midblock.tuning.loss import causal_lm_loss
    from midblock.tuning.prepare import check_truncated_backward

    main = acc.is_main_process
    world, rank = acc.num_processes, acc.process_index
    if main:
        from midblock.launch import describe_run

        describe_run("train", world, config.batch_size, config.grad_accum)
    fsdp = config.fsdp
    if fsdp:  # not acc.prepare: accelerate ignores its FSDP plugin on CPU (see midblock.tuning.fsdp)
        from midblock.tuning.fsdp import full_optimizer_state, full_trainable_state, grad_sync, shard_model

        report = check_truncated_backward(model, fix=False)  # before sharding: it runs the embedding
        model = inner = shard_model(model, acc.device)  # checks names and requires_grad are unchanged
    else:
        model = acc.prepare(model)
        inner = acc.unwrap_model(model)
        report = check_truncated_backward(inner, fix=False)  # re-check after the wrapper is built
    params = [x for x in inner.parameters() if x.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.peak_lr, weight_decay=config.weight_decay)
    n_steps = total_steps(config, len(items), world)
    sched = get_scheduler(config.schedule, opt, num_warmup_steps=config.warmup_steps, num_training_steps=n_steps)
    start = 0
    found = None
    if config.resume:
        found = _resume_state(run)
        if found is None:  # stopped before the first checkpoint: the same run from step 0
            log.warning("--resume: %s has no checkpoint yet; starting from step 0", run)
            if main:
                write_text(run / LOG_FILE, "")
        else:
            start = _load_checkpoint(found[0], inner, opt, sched, fsdp, world, st=found[1])
    if config.resume and start:
        if main:  # drop log lines written after the checkpoint: they will be written again
            rows = [r for r in read_jsonl_tolerant(run / LOG_FILE) if r.get("step", 0) <= start]
            write_text(run / LOG_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        log.info("resumed at step %d", start)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    step_times: list[float] = []
    tok_rates: list[float] = []
    last_loss = eval_loss = None
    last_ckpt = found[0] if found else _latest_checkpoint(run)  # the one resumed from, not a damaged newer one
    stopped = False
    bar = tqdm(total=n_steps, initial=start, disable=not (main and config.progress), desc="train", unit="step")
    # the bar is closed on an error too: the one-line error must start on a line of its own
    with _StopFlag() as stop, contextlib.closing(bar):
        for step in range(start, n_steps):
            t0 = time.perf_counter()
            # Token-weighted, as HF Trainer (num_items_in_batch): the step's loss is the summed cross-entropy
            # of every labelled token of the step (all micro-batches, all processes) over their number, so
            # batch 4 == batch 2 x accum 2 == 2 processes x batch 2. DDP and FSDP average the gradients over
            # processes, hence the factor `world` (Trainer's too).
            idx_all = []
            batches = []
            for micro in range(config.grad_accum):
                idx = _micro_batch(config, len(items), step, micro, rank, world)
                idx_all += idx
                batches.append(collate([items[i] for i in idx], pad))
            n_lab = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
            n_lab = int(acc.reduce(torch.tensor(n_lab, device=acc.device), "sum"))
            scale = world / max(n_lab, 1)  # no labelled token in the step: zero loss and zero gradient
            step_loss = torch.zeros((), device=acc.device)
            n_tok = 0
            for micro, cpu_batch in enumerate(batches):
                batch = {k: t.to(acc.device) for k, t in cpu_batch.items()}
                sync = micro == config.grad_accum - 1
                if fsdp:
                    ctx = grad_sync(model, sync)
                else:
                    ctx = acc.no_sync(model) if (world > 1 and not sync) else _null()
                with ctx, acc.autocast():
                    loss, _ = causal_lm_loss(model, batch, config.head_at_labels, reduction="sum")
                acc.backward(loss * scale)
                step_loss += loss.detach().float()
                n_tok += int(batch["attention_mask"].sum())
            mean_loss = float(acc.reduce(step_loss, "sum")) / max(n_lab, 1)  # per-token mean of the step
            if not math.isfinite(mean_loss):
                raise MidblockError(
                    f"loss is {mean_loss} at step {step + 1} (examples {idx_all[:8]}...)",
                    hint=f"last good checkpoint: {last_ckpt or 'none'}; lower --lr or check the data",
                )
            if config.max_grad_norm and fsdp:  # DTensor gradients: the norm is reduced across ranks
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            elif config.max_grad_norm:
                acc.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            step_times.append(dt)
            tok_rates.append(n_tok * world / dt)
            last_loss = mean_loss
            done = step + 1
            if config.eval_every and done % config.eval_every == 0 and eval_items:
                eval_loss = _eval_loss(model, eval_items, pad, config, acc)
            if main and done % config.log_every == 0:
                append_jsonl(
                    run / LOG_FILE,
                    {
                        "step": done,
                        "loss": mean_loss,
                        "lr": sched.get_last_lr()[0],
                        "step_s": dt,
                        "tokens_per_s": tok_rates[-1],
                        "eval_loss": eval_loss,
                    },
                )
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tok_rates[-1]:.0f}")
            want_stop = bool(on_step and on_step(done, mean_loss))
            want_stop = want_stop or stop.set  # read after the callback: a signal may have arrived meanwhile
            flag = acc.reduce(torch.tensor(float(want_stop), device=acc.device), "sum")
            if float(flag) > 0 and done < n_steps:
                stopped = True
            if (config.save_every and done % config.save_every == 0) or stopped:
                acc.wait_for_everyone()
                gathered = (full_trainable_state(inner), full_optimizer_state(inner, opt)) if fsdp else None
                if main:
                    last_ckpt = _save_checkpoint(run, done, inner, opt, sched, gathered, world)
            if stopped:
                log.warning("stopped at step %d; continue with --resume (checkpoint %s)", done, last_ckpt)
                break
    bar.close()
    if eval_items and not stopped:
        eval_loss = _eval_loss(model, eval_items, pad, config, acc)
    acc.wait_for_everyone()
    out: dict[str, str | None] = {"adapter": None, "delta": None}
    mem, mem_kind = _peak_mem(acc.device)
    result = TrainResult(
        run_dir=str(run),
        method=config.tuning.method,
        steps=len(step_times) + start,
        stopped=stopped,
        final_loss=last_loss,
        eval_loss=eval_loss,
        median_step_s=statistics.median(step_times) if step_times else None,
        tokens_per_s=statistics.median(tok_rates) if tok_rates else None,
        peak_mem_bytes=mem,
        peak_mem_kind=mem_kind,
        trainable_params=row["trainable_params"],
        rank_units=row["rank_units"],
        scaling=next(iter(p.scalings.values()), None) if p.scalings else None,
        backward_depth=report["backward_depth"],
        predicted_vs_lora=pred["vs_lora"],
        predicted_vs_full=pred["vs_full"],
        wall_s=time.perf_counter() - t_start,
        world_size=world,
        fsdp=fsdp,
    )
    state = full_trainable_state(inner) if (fsdp and not stopped) else None  # collective: every rank
    if main and not stopped:
        out = _save_outputs(run, inner, config, p, state)
        result.adapter, result.delta = out["adapter"], out["delta"]
        from midblock.models.loading import RUN_MANIFEST

        write_json(
            run / RUN_MANIFEST,
            {
                "base": config.model,
                "adapter": out["adapter"],
                "delta": out["delta"],
                "method": config.tuning.method,
                "band": p.trainable_blocks,
                "band_spec": p.band_spec,
                "targets": p.targets,
                "lora_ranks": {str(k): r for k, r in p.lora_ranks.items()},
            },
        )
    if main:
        write_json(
            run / SUMMARY_FILE,
            {**result.to_dict(), "truncated_backward": report, **provenance(config.to_dict(), config.seed)},
        )
        if not stopped:
            rundir.mark_completed()
    acc.wait_for_everyone()
    return result


def _eval_loss(model, items, pad, config, acc) -> float:
    """Mean loss over the evaluation set (each process takes its share; token-weighted mean)."""
    from midblock.data import IGNORE_INDEX, collate
    from midblock.tuning.loss import causal_lm_loss

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
                loss, _ = causal_lm_loss(model, batch, config.head_at_labels)
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if chunk else 0
            tot += torch.tensor([float(loss) * n, n], device=acc.device)
    model.train()
    tot = acc.reduce(tot, "sum")
    return float(tot[0] / tot[1]) if float(tot[1]) else float("nan")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
