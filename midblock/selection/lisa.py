"""LISA (Pan et al., "LISA: Layerwise Importance Sampling for Memory-Efficient Large Language Model
Fine-Tuning", NeurIPS 2024, arXiv 2403.17919).

``lisa:G/K``: every K optimizer steps a fresh random set of G blocks trains, the other blocks are frozen.

- Full form (``--method midblock-full``, the paper's): the active blocks' parameters train; the embeddings
  and the LM head always train (``lisa:G/K:blocks`` keeps them frozen, and then the backward of each step
  stops at the lowest active block).
- LoRA form (``--method midblock``): LoRA adapters on every block, and only the active blocks' adapters train
  at each step; the base weights, the embeddings and the head stay frozen (whatever the suffix), so each
  step's backward stops at its lowest active block. Its budget is per step: G blocks' adapters.

How it runs: every block is a candidate, so ``prepare_model`` leaves all of them trainable (their
parameters, or in the LoRA form their adapters; an optimizer built afterwards, by midblock's loop or a
``Trainer``, holds every candidate); the schedule narrows ``requires_grad`` to the active set at the start
of each optimizer step and widens it again after the step (so checkpoints and the saved delta or adapter
hold every block the run trained). A frozen block's gradient is None, and PyTorch's AdamW skips parameters
without a gradient: no update, no weight decay, its moments kept.

Differences from the reference callbacks (LMFlow's ``DynamicLayerActivationCallback``, axolotl's LISA
callback), which switch ``requires_grad`` in ``on_step_begin`` at every multiple of K:

- optimizer state: the same. The reference callbacks leave the optimizer alone, so a block that becomes
  active again continues from its old Adam moments and step count; midblock does the same.
- the random sets: the reference seeds NumPy's global generator with the global step, so every run draws
  the same sets whatever its seed; midblock draws set number ``s = step // K`` from
  ``random.Random(seed * 1000003 + s)``: reproducible from the training seed, different between seeds, and
  the same after ``--resume``. The global random state is not touched.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from midblock.errors import MidblockError
from midblock.models.introspect import get_layout
from midblock.selection import Context, Selection, bad_spec, register, split_suffix

EXAMPLE = "lisa:2/20 (2 blocks, a new set every 20 steps) or lisa:2/20:blocks"
_ARG = re.compile(r"^(\d+)/(\d+)$")


@dataclass
class LisaSchedule:
    """Which blocks train at each optimizer step; switches the model's ``requires_grad`` accordingly."""

    gamma: int  # active blocks per period
    period: int  # K: steps between switches
    num_layers: int
    seed: int = 0
    train_ends: bool = True  # embeddings and head (their requires_grad is never switched)
    adapters_only: bool = False  # LoRA form: switch only the blocks' LoRA adapters, never their base weights
    switches: list[dict[str, Any]] = field(default_factory=list)  # one record per switch this process saw
    _period_index: int | None = None

    def active(self, step: int) -> list[int]:
        """The active blocks at optimizer step ``step`` (0-based): the draw of period ``step // K``."""
        rng = random.Random(self.seed * 1_000_003 + step // self.period)
        return sorted(rng.sample(range(self.num_layers), self.gamma))

    def backward_depth(self, step: int) -> int:
        """Blocks the backward visits at ``step``: all of them when the embeddings train, else from the lowest
        active block up."""
        return self.num_layers if self.train_ends else self.num_layers - self.active(step)[0]

    def begin_step(self, model: nn.Module, step: int) -> list[int]:
        """Freeze every block but the active set of ``step`` (call before the step's first forward)."""
        act = set(self.active(step))
        for b, block in enumerate(get_layout(model).blocks):
            for p in self.candidates(block):
                p.requires_grad_(b in act)
        if step // self.period != self._period_index:
            self._period_index = step // self.period
            self.switches.append({"step": step, "active": sorted(act), "backward_depth": self.backward_depth(step)})
        return sorted(act)

    def end_step(self, model: nn.Module) -> None:
        """Every candidate block trainable again (call after the optimizer step)."""
        for block in get_layout(model).blocks:
            for p in self.candidates(block):
                p.requires_grad_(True)

    def candidates(self, block: nn.Module) -> list[nn.Parameter]:
        """The parameters of ``block`` the schedule switches: all of them, or its LoRA adapters (PEFT's
        ``lora_*`` parameters) in the LoRA form."""
        if not self.adapters_only:
            return list(block.parameters())
        return [p for n, p in block.named_parameters() if "lora_" in n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma,
            "period": self.period,
            "seed": self.seed,
            "train_ends": self.train_ends,
            "adapters_only": self.adapters_only,
        }


class Lisa:
    """``lisa:G/K[:blocks]``: G random blocks, redrawn every K steps, trained in full or through LoRA adapters
    on every block (arXiv 2403.17919)."""

    name = "lisa"
    forms = ("lora", "full")
    param_sized = True

    def parse(self, arg: str) -> tuple[int, int, bool]:
        main, ends = split_suffix(arg, f"lisa:{arg}")
        m = _ARG.match(main.replace(" ", ""))
        if not m:
            raise bad_spec(f"lisa:{arg}", "write the active blocks and the switching period as G/K", EXAMPLE)
        gamma, period = int(m[1]), int(m[2])
        if gamma < 1 or period < 1:
            raise bad_spec(f"lisa:{arg}", "G and K must be >= 1", EXAMPLE)
        return gamma, period, ends

    def select(self, arg: str, ctx: Context) -> Selection:
        gamma, period, ends = self.parse(arg)
        ends = ends and ctx.form == "full"  # the LoRA form trains adapters only
        L = ctx.num_layers
        if gamma > L:
            raise MidblockError(f"lisa:{arg}: {gamma} active blocks, but the model has {L}", hint=f"use G <= {L}")
        sched = LisaSchedule(gamma, period, L, ctx.seed, ends, adapters_only=ctx.form == "lora")
        sel = Selection(f"lisa:{arg}", self.name, list(range(L)), train_ends=ends, schedule=sched)
        sel.details = {"first_active": sched.active(0)}
        return sel


register(Lisa())
