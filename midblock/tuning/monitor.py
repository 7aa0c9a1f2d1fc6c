"""A per-layer monitor of a training run: where the model changes, while it trains.

At the start it records the base model's hidden states on a fixed probe batch of held-out rows (pooled over
real tokens, per block, once); every ``every`` optimizer steps it reads, per block:

- ``cka_change``: 1 - linear CKA between the current and the base states at the block's output, computed
  by the code of ``midblock analyze`` (``capture.collect`` then ``rows.pair_rows``; the analysis metric
  ``cka``), streamed through the one model in memory. For LoRA the base is the adapter-disabled model;
- ``weight_change``: ||W - W0||_F / ||W0||_F over the block's linear weights (the analysis's
  ``weight_delta_rel`` / ``lora_delta_rel``); for LoRA from the factors, ||s B A||_F through r x r matrices,
  never the merged weight; for full-parameter training against a CPU copy of the trained weights at step 0;
- ``grad_share``: the block's share of the step's squared gradient norm, ||g_block||^2 / ||g||^2 (the shares
  of all parameter groups add up to 1; clipping scales every gradient alike, so it changes no share).

:class:`LayerMonitor` does the work; ``midblock train --monitor-every N`` (``midblock.tuning.train``) and the
``Trainer`` callback :class:`MidBlockMonitor` call it. Readings are plain dicts (one JSON line each in
``monitor.jsonl``); :func:`scalars` turns one into ``midblock/cka_change/block_07`` style scalars.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback

from midblock.errors import MidblockError
from midblock.tuning.monitorconfig import MonitorConfig

if TYPE_CHECKING:
    from torch.utils.data import DataLoader
    from torch.utils.tensorboard import SummaryWriter
    from transformers import TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

MONITOR_FILE = "monitor.jsonl"
QUANTITIES = ("cka_change", "weight_change", "grad_share")
PROBE_BATCH = 8  # probe rows per forward (the result does not depend on it)


# --------------------------------------------------------------------------- the pieces, each on its own


def probe_rows(rows: Sequence[Any], n: int, max_length: int | None = None) -> list[list[int]]:
    """The first ``n`` token-id lists of ``rows``, each cut to ``max_length`` tokens: lists of ids, or dicts with
    ``input_ids`` (and optionally an ``attention_mask``, whose zeros are padding and are dropped)."""
    out: list[list[int]] = []
    for r in rows:
        if len(out) == n:
            break
        is_map = isinstance(r, Mapping)
        ids = r["input_ids"] if is_map else r
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        mask = r.get("attention_mask") if is_map else None
        if mask is not None:
            mask = mask.tolist() if torch.is_tensor(mask) else list(mask)
            ids = [t for t, m in zip(ids, mask) if m]
        if len(ids) >= 2:
            out.append([int(t) for t in ids[:max_length]])
    if len(out) < 4:
        raise MidblockError(
            f"the monitor's probe batch has {len(out)} usable rows; CKA needs at least 4",
            hint="give it more held-out rows (--eval-loss-items, or probe=... / an eval_dataset in a Trainer)",
        )
    return out


def rows_from_dataloader(loader: Any, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows (ids with their mask) from a trainer's evaluation dataloader's padded batches."""
    out: list[dict[str, Any]] = []
    for batch in loader:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        for i in range(ids.shape[0]):
            out.append({"input_ids": ids[i], "attention_mask": None if mask is None else mask[i]})
        if len(out) >= n:
            break
    return out[:n]


def trained_blocks(model: nn.Module) -> list[int]:
    """Blocks holding a parameter that trains (the band, for Mid-Block tuning)."""
    from midblock.models.introspect import block_of_param, get_layout

    lay = get_layout(model)
    return sorted(
        {b for n, p in model.named_parameters() if p.requires_grad and (b := block_of_param(n, lay)) is not None}
    )


def outside_share(cka_change: Sequence[float], band: Sequence[int]) -> float:
    """The fraction of the representation change that arises in blocks outside ``band``.

    Block b's own part is the rise of the CKA change across it, max(0, c_b - c_{b-1}) (c_{-1} = 0: the
    embedding output); a block's output carries every change made below it, so the rise is what the block
    adds. NaN when nothing changed yet.
    """
    prev, inside, total = 0.0, 0.0, 0.0
    for b, c in enumerate(cka_change):
        c = 0.0 if c is None or not math.isfinite(c) else c
        rise = max(0.0, c - prev)
        total += rise
        inside += rise if b in band else 0.0
        prev = c
    return (total - inside) / total if total > 1e-9 else float("nan")


def alarms(
    reading: dict[str, Any], previous: dict[str, Any] | None, band: Sequence[int], cfg: MonitorConfig
) -> list[str]:
    """The warnings a reading raises under ``cfg``'s thresholds (none when both are off)."""
    out = []
    share = reading.get("outside_share")
    if cfg.alarm_outside is not None and share is not None and math.isfinite(share) and share > cfg.alarm_outside:
        out.append(
            f"step {reading['step']}: {share:.0%} of the representation change arises outside the trained blocks "
            f"{_span(band)} (threshold {cfg.alarm_outside:.0%})"
        )
    if cfg.alarm_jump is not None and previous is not None:
        for b, (now, before) in enumerate(zip(reading["cka_change"], previous["cka_change"])):
            if now is not None and before is not None and now - before > cfg.alarm_jump:
                out.append(
                    f"step {reading['step']}: block {b}'s CKA change jumped {before:.4f} -> {now:.4f} since step "
                    f"{previous['step']} (threshold +{cfg.alarm_jump})"
                )
    return out


def _span(blocks: Sequence[int]) -> str:
    from midblock.layers import format_indices

    return format_indices(list(blocks)) or "none"


def block_key(b: int, num_blocks: int) -> str:
    return f"block_{b:0{max(2, len(str(num_blocks - 1)))}d}"


def scalars(reading: dict[str, Any], num_blocks: int) -> dict[str, float]:
    """A reading as flat scalars: ``midblock/cka_change/block_07`` ..., ``midblock/outside_share``."""
    out: dict[str, float] = {}
    for q in QUANTITIES:
        values = reading.get(q)
        if values is None:
            continue
        for b, v in enumerate(values):
            if v is not None:
                out[f"midblock/{q}/{block_key(b, num_blocks)}"] = float(v)
    share = reading.get("outside_share")
    if share is not None and math.isfinite(share):
        out["midblock/outside_share"] = float(share)
    return out


def _clean(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


# --------------------------------------------------------------------------- the engine


class LayerMonitor:
    """Base states, weight snapshot and readings of one model; used by the training loop and the callback.

    ``probe``: token-id lists (held-out rows); ``pad_id``: any id (padded positions are masked out).
    Memory: the probe's pooled base states (rows x hidden per block) and, for full-parameter training only,
    a CPU copy of the trained linear weights.
    """

    def __init__(self, model: nn.Module, probe: list[list[int]], pad_id: int, config: MonitorConfig) -> None:
        from midblock.analysis.capture import CaptureSpec
        from midblock.models.introspect import get_layout

        self.config = config
        self.probe = probe
        self.pad_id = int(pad_id)
        self.num_blocks = get_layout(model).num_layers
        self.spec = CaptureSpec(layers=list(range(1, self.num_blocks + 1)), token_stats=(), pooled=True)
        self.band = trained_blocks(model)
        self.base = None
        self.readings: list[dict[str, Any]] = []
        self._grads: dict[int, list[float] | None] = {}
        self._start(model)

    # ----- step 0

    def _start(self, model: nn.Module) -> None:
        """The base's pooled states on the probe rows, the linear weights' norms, the trained weights' copy."""
        from midblock.analysis.weights import _linears
        from midblock.models.introspect import block_of_param, get_layout

        with _adapters_off(model):
            self.base = self._states(model)
        lay = get_layout(model)
        self._mods: list[tuple[int, str, nn.Module]] = []
        self._w0_sq: list[float] = [0.0] * self.num_blocks
        self._w0: dict[tuple[int, str], torch.Tensor] = {}
        for i, block in enumerate(lay.blocks):
            for rel in _linears(lay):
                mod = block.get_submodule(rel)
                w = getattr(mod, "base_layer", mod).weight
                self._mods.append((i, rel, mod))
                self._w0_sq[i] += float(w.detach().to(torch.float64).pow(2).sum())
                if w.requires_grad:  # full-parameter training: the step-0 weight, on the CPU
                    self._w0[(i, rel)] = w.detach().to("cpu", copy=True)
        self._param_block = [(block_of_param(n, lay), p) for n, p in model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def _states(self, model: nn.Module):
        """Pooled per-block states of the probe rows, by the analysis's own capture (eval mode, no grad)."""
        from midblock.analysis.capture import collect, make_batches

        was = model.training
        model.eval()
        try:
            batches = make_batches(self.probe, PROBE_BATCH, self.pad_id)
            with _full_precision(model):
                return collect({"model": model}, batches, self.spec)["model"]
        finally:
            model.train(was)

    # ----- each reading

    @torch.no_grad()
    def record_grads(self, model: nn.Module, step: int) -> None:
        """Each block's share of the squared gradient norm, read before the optimizer step clears it."""
        sq = {}
        dev = None
        for b, p in self._param_block:
            if p.grad is None:
                continue
            g = p.grad.detach()
            v = torch.linalg.vector_norm(g, dtype=torch.float32).pow(2)
            key = -1 if b is None else b
            sq[key] = sq[key] + v if key in sq else v
            dev = g.device
        if not sq:
            self._grads[step] = None
            return
        keys = list(sq)
        vals = torch.stack([sq[k].to(dev) for k in keys]).double().cpu().tolist()
        total = sum(vals)
        by = dict(zip(keys, vals))
        self._grads[step] = [by.get(b, 0.0) / total if total > 0 else 0.0 for b in range(self.num_blocks)]

    @torch.no_grad()
    def weight_change(self, model: nn.Module) -> list[float]:
        """||W - W0|| / ||W0|| per block over its linear weights; LoRA from the factors (r x r products)."""
        from midblock.analysis import metrics as M

        d2 = [0.0] * self.num_blocks
        for i, rel, mod in self._mods:
            if hasattr(mod, "lora_A"):
                for name in getattr(mod, "active_adapters", []):
                    if name in mod.lora_A:
                        d2[i] += M.lora_delta_sq(
                            mod.lora_A[name].weight, mod.lora_B[name].weight, float(mod.scaling[name])
                        )
            w0 = self._w0.get((i, rel))
            if w0 is not None:
                w = getattr(mod, "base_layer", mod).weight.detach()
                d2[i] += float((w.to(torch.float64) - w0.to(w.device, torch.float64)).pow(2).sum())
        return [math.sqrt(d / w) if w > 0 else float("nan") for d, w in zip(d2, self._w0_sq)]

    def cka_change(self, model: nn.Module) -> list[float]:
        """1 - CKA(base, current) per block output: the analysis's ``cka`` rows on the probe rows."""
        from midblock.analysis.rows import pair_rows

        now = self._states(model)
        cka = {layer: v for layer, _, v in pair_rows(self.base, now, self.spec.layers, {"cka"}) if _ == "cka"}
        return [1.0 - cka[b + 1] for b in range(self.num_blocks)]

    def read(self, model: nn.Module, step: int) -> dict[str, Any]:
        """One reading at optimizer step ``step`` (after the step); alarms are logged as warnings."""
        cka = self.cka_change(model)
        reading = {
            "step": int(step),
            "cka_change": [_clean(v) for v in cka],
            "weight_change": [_clean(v) for v in self.weight_change(model)],
            "grad_share": self._grads.pop(step, None),
            "outside_share": _clean(outside_share(cka, self.band)),
        }
        self._grads = {k: v for k, v in self._grads.items() if k > step}
        reading["alarms"] = alarms(reading, self.readings[-1] if self.readings else None, self.band, self.config)
        for a in reading["alarms"]:
            log.warning("midblock monitor: %s", a)
        self.readings.append(reading)
        return reading

    def meta(self) -> dict[str, Any]:
        """What the readings mean: the first line of ``monitor.jsonl``."""
        from midblock.fingerprint import rows_digest

        return {
            "kind": "meta",
            "num_blocks": self.num_blocks,
            "band": self.band,
            "every": self.config.every,
            "probe_rows": len(self.probe),
            "probe_tokens": sum(len(r) for r in self.probe),
            "probe_digest": rows_digest(self.probe),
            "quantities": list(QUANTITIES),
            "config": self.config.to_dict(),
            "probe": self.probe,  # the token ids: anyone can rerun the analysis on the same rows
        }


@contextlib.contextmanager
def _full_precision(model: nn.Module):
    """The model's own forward, outside any autocast: the probe runs at the weights' precision, as the analysis
    does. Under mixed precision ``accelerate`` (``midblock train --precision bf16``, a Trainer with
    ``bf16=True``) replaces the prepared model's ``forward`` with an autocast wrapper and keeps the original
    as ``_original_forward``; it is put back for the probe only."""
    original = model.__dict__.get("_original_forward")
    wrapped = model.__dict__.get("forward")
    dev = next(model.parameters()).device
    if original is not None and wrapped is not None:
        model.forward = original
    try:
        with torch.autocast(dev.type, enabled=False):
            yield
    finally:
        if original is not None and wrapped is not None:
            model.forward = wrapped


@contextlib.contextmanager
def _adapters_off(model: nn.Module):
    """The base model: PEFT's adapter-disabled context for a LoRA model, the model itself otherwise."""
    off = getattr(model, "disable_adapter", None)
    if off is not None and hasattr(model, "peft_config"):
        with off():
            yield
    else:
        yield


# --------------------------------------------------------------------------- where readings go


class MonitorLog:
    """``monitor.jsonl`` (a meta line, then one line per reading) and, when installed, TensorBoard events."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / MONITOR_FILE
        self.tb_dir = Path(run_dir) / "tensorboard"
        self.tensorboard = tensorboard
        self._writer = None

    def begin(self, meta: dict[str, Any], resume_step: int | None = None) -> None:
        """A fresh file with ``meta``; resumed at ``resume_step``: the readings after it are dropped."""
        import json

        from midblock.io import read_jsonl_tolerant, write_text

        keep = []
        if resume_step is not None and self.path.exists():
            keep = [
                r for r in read_jsonl_tolerant(self.path) if r.get("kind") == "reading" and r["step"] <= resume_step
            ]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in [meta, *keep]))
        self.num_blocks = meta["num_blocks"]
        if self.tensorboard:
            self._writer = tensorboard_writer(self.tb_dir)

    def write(self, reading: dict[str, Any]) -> None:
        from midblock.io import append_jsonl

        append_jsonl(self.path, {"kind": "reading", **reading})
        if self._writer is not None:
            for k, v in scalars(reading, self.num_blocks).items():
                self._writer.add_scalar(k, v, reading["step"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def draw(self) -> None:
        """``monitor.png`` beside the readings (what ``midblock monitor`` draws); a failure only warns: the run's
        results matter more than its figure."""
        from midblock.reporting.monitor_plots import plot_monitor

        run = self.path.parent
        try:
            meta, readings = read_monitor(self.path)
            plot_monitor(meta, readings, run / "monitor.png", title=run.name)
        except Exception as e:
            log.warning("could not draw %s (%s); run: midblock monitor %s", run / "monitor.png", e, run)


def tensorboard_writer(log_dir: Path) -> SummaryWriter | None:
    """A ``SummaryWriter`` when TensorBoard is installed (the ``tensorboard`` extra), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("TensorBoard is not installed (pip install 'midblock[tensorboard]'): monitor.jsonl only")
        return None
    return SummaryWriter(str(log_dir))


def read_monitor(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, readings) of a ``monitor.jsonl`` or of a directory holding one."""
    from midblock.io import read_jsonl_tolerant

    p = Path(path)
    f = p / MONITOR_FILE if p.is_dir() else p
    if not f.exists():
        raise MidblockError(
            f"{p} holds no {MONITOR_FILE}", hint="train with --monitor-every N, or attach MidBlockMonitor to a Trainer"
        )
    lines = read_jsonl_tolerant(f)
    metas = [r for r in lines if r.get("kind") == "meta"]
    readings = [r for r in lines if r.get("kind") == "reading"]
    if not metas or not readings:
        raise MidblockError(f"{f} holds no monitor readings", hint="is the run still starting?")
    return metas[0], readings


# --------------------------------------------------------------------------- transformers' Trainer


class MidBlockMonitor(TrainerCallback):
    """The per-layer monitor in ``Trainer`` / TRL's ``SFTTrainer``: ``MidBlockMonitor(every=50).attach(trainer)``.

    ``probe``: held-out rows (token-id lists, dicts with ``input_ids``, or a tokenised dataset); by default the
    first ``rows`` of the trainer's ``eval_dataset`` (as its evaluation dataloader pads them). A reading is
    taken at step 0, every ``every`` optimizer steps (the gradient share read in ``on_pre_optimizer_step``,
    before the optimizer and ``zero_grad``; the rest in ``on_step_end``) and at the last step. Each is logged
    through ``Trainer.log`` (so every ``report_to`` backend receives ``midblock/cka_change/block_07`` style
    scalars; TensorBoard and W&B file them under ``train/``) and written to ``OUTPUT_DIR/monitor.jsonl``,
    which ``midblock monitor`` draws. ``attach`` registers the callback and gives it the trainer whose ``log``
    it calls; without it the readings go to ``monitor.jsonl`` and ``self.readings`` only.
    """

    def __init__(
        self,
        every: int = 50,
        probe: Sequence[Any] | None = None,
        *,
        rows: int = 32,
        max_length: int = 128,
        alarm_outside: float | None = None,
        alarm_jump: float | None = None,
    ) -> None:
        self.config = MonitorConfig(
            every=every, rows=rows, max_length=max_length, alarm_outside=alarm_outside, alarm_jump=alarm_jump
        )
        if not self.config.enabled:
            raise MidblockError("MidBlockMonitor needs every >= 1", hint="e.g. MidBlockMonitor(every=50)")
        self.probe = probe
        self.trainer = None
        self.monitor: LayerMonitor | None = None
        self.out: MonitorLog | None = None

    def attach(self, trainer: Any) -> MidBlockMonitor:
        """Add this callback to ``trainer`` (if not there yet) and log through its ``log``."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    @property
    def readings(self) -> list[dict[str, Any]]:
        return self.monitor.readings if self.monitor else []

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        processing_class: Any = None,
        eval_dataloader: DataLoader | None = None,
        **kw: Any,
    ) -> TrainerControl:
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise MidblockError("MidBlockMonitor does not support DeepSpeed or FSDP (sharded parameters)")
        if not state.is_world_process_zero:
            return control
        src = self.probe
        if src is None:  # the trainer's evaluation rows, as its collator pads them
            if self.trainer is not None and getattr(self.trainer, "eval_dataset", None) is not None:
                eval_dataloader = self.trainer.get_eval_dataloader()
            if eval_dataloader is None:
                raise MidblockError(
                    "MidBlockMonitor needs held-out probe rows",
                    hint="pass probe=[...] or give the trainer an eval_dataset",
                )
            src = rows_from_dataloader(eval_dataloader, self.config.rows)
        rows = probe_rows(src, self.config.rows, self.config.max_length)
        tok = processing_class
        pad = getattr(tok, "pad_token_id", None)
        pad = pad if pad is not None else (getattr(tok, "eos_token_id", None) or 0)
        if state.global_step > 0 and not hasattr(model, "peft_config"):
            log.warning(
                "MidBlockMonitor: resumed at step %d: the base states are those of the resumed model", state.global_step
            )
        self.monitor = LayerMonitor(model, rows, pad, self.config)
        self.out = MonitorLog(args.output_dir, tensorboard=False)  # the trainer's report_to does the rest
        self.out.begin(self.monitor.meta())
        self._emit(self.monitor.read(model, state.global_step))
        if self.trainer is None:
            log.warning("MidBlockMonitor is not attached to the trainer: readings go to %s only", self.out.path)
        return control

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kw: Any,
    ) -> TrainerControl:
        if self.monitor is not None and (state.global_step + 1) % self.config.every == 0:
            self.monitor.record_grads(model, state.global_step + 1)
        return control

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kw: Any,
    ) -> TrainerControl:
        last = state.max_steps and state.global_step >= state.max_steps
        if self.monitor is not None and (state.global_step % self.config.every == 0 or last):
            should_log = control.should_log
            self._emit(self.monitor.read(model, state.global_step))
            control.should_log = should_log  # the handler's on_log cleared it: the trainer's own log still runs
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        if self.out is not None:
            self.out.draw()
        return control

    def _emit(self, reading: dict[str, Any]) -> None:
        self.out.write(reading)
        if self.trainer is not None:
            from transformers import Trainer

            # Trainer's own log, not a subclass's: TRL's SFTTrainer.log would flush (and clear) its running
            # token metrics into this record
            Trainer.log(self.trainer, scalars(reading, self.monitor.num_blocks))


# --------------------------------------------------------------------------- midblock's own loop


class LoopMonitor:
    """The monitor in ``midblock train``: readings to ``RUN/monitor.jsonl`` and ``RUN/tensorboard`` (when
    TensorBoard is installed). Built before a checkpoint is loaded (the model is still the base), begun after."""

    def __init__(self, model: nn.Module, rows: Sequence[Any], pad_id: int, config: MonitorConfig, run_dir: Path):
        self.monitor = LayerMonitor(model, probe_rows(rows, config.rows, config.max_length), pad_id, config)
        self.out = MonitorLog(run_dir)
        self.every = config.every

    def begin(self, model: nn.Module, start: int) -> None:
        """A fresh ``monitor.jsonl`` with the step-0 reading, or, resumed at ``start``, the readings up to it."""
        self.out.begin(self.monitor.meta(), resume_step=start or None)
        if not start:
            self.out.write(self.monitor.read(model, 0))

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        if step % self.every == 0:
            self.monitor.record_grads(model, step)

    def after_step(self, model: nn.Module, step: int, last: bool) -> None:
        if step % self.every == 0 or last:
            self.out.write(self.monitor.read(model, step))

    def close(self) -> None:
        """Close the event file and draw ``RUN/monitor.png`` (what ``midblock monitor RUN`` draws)."""
        self.out.close()
        self.out.draw()
