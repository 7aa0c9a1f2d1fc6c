"""Mid-Block tuning inside transformers' ``Trainer`` and TRL's ``SFTTrainer``.

Three pieces, each usable on its own:

- :func:`midblock.tuning.prepare.prepare_model` already makes the model keep the truncated backward when a
  trainer switches on gradient checkpointing (``keep_truncation``);
- :class:`MidBlockCallback` re-applies that at ``on_train_begin`` (after the trainer has built, wrapped or
  PEFT-converted the model), checks it, and gives the model a head that computes the logits only where there
  are labels (:func:`use_labelled_head`);
- :func:`band_lora_config` returns a PEFT ``LoraConfig`` restricted to the band (matched rank units, alpha
  policy) for the ``peft_config=`` route TRL users know.

Why the head matters: in TRL 1.16 the fused LM head scores only the labelled positions on Triton devices but
*every* position elsewhere (CPU included), and transformers' ``Trainer`` builds the full batch x length x
vocabulary logits. For short completions the head then costs more than the band's blocks.
"""

from __future__ import annotations

import logging
import types
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import TrainerCallback

from midblock.aliases import renamed_kwargs
from midblock.data.tasks import IGNORE_INDEX
from midblock.errors import MidblockError
from midblock.models.introspect import get_layout, strip_peft
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.loss import chunked_head_ce, plain_linear
from midblock.tuning.prepare import check_truncated_backward, keep_truncation, lora_config, plan

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)


def band_lora_config(
    model: nn.Module,
    config: MidBlockConfig | None = None,
    *,
    data: list[list[int]] | None = None,
    **fields: Any,
) -> LoraConfig:
    """A PEFT ``LoraConfig`` with LoRA on the band only, to pass as ``SFTTrainer(peft_config=...)``.

    ``config`` (or ``MidBlockConfig(**fields)``) is resolved against ``model``: explicit module names of the
    band's blocks, the rank matched to ``budget_baseline_rank`` all-block LoRA when given, lora_alpha from the
    alpha policy (alpha/r constant across ranks by default). ``model`` is also given truncation-keeping
    checkpointing (:func:`~midblock.tuning.prepare.keep_truncation`) and remembers the plan; add
    :class:`MidBlockCallback` to the trainer for the rest. ``band`` may be any selection in its LoRA form (a
    band spec, ``auto``, ``cka-select:F``, which ranks the blocks on ``data``: token id lists, ``spectrum:P``,
    whose ``target_modules`` are the selected matrices); for ``lisa:G/K`` use :func:`prepare_model`, whose
    model carries the schedule that :class:`MidBlockCallback` switches.
    """

    if config is not None and fields:
        raise MidblockError("pass either a MidBlockConfig or its fields, not both")
    unknown = sorted(set(fields) - set(MidBlockConfig.__dataclass_fields__))
    if unknown:
        raise MidblockError(f"band_lora_config got unknown field '{unknown[0]}'", hint="see MidBlockConfig's fields")
    cfg = config if config is not None else MidBlockConfig(**fields)
    if not cfg.is_lora:
        what = f"band '{cfg.band}'" if cfg.method == "midblock-full" else f"method '{cfg.method}'"
        raise MidblockError(
            f"{what} trains full parameters: there is no LoraConfig for it", hint="use prepare_model instead"
        )
    if strip_peft(model) is not model:
        raise MidblockError("the model is already a PEFT model", hint="pass the plain transformers model")
    layout = get_layout(model)
    p = plan(cfg, layout, model=model, data=data)
    conv1d = any(type(layout.blocks[0].get_submodule(t)).__name__ == "Conv1D" for t in p.targets)
    model.midblock_plan = p  # PEFT wrappers forward attribute look-ups here: the checks find the band
    keep_truncation(model)
    return lora_config(p, cfg, conv1d)


def use_labelled_head(model: nn.Module) -> bool:
    """Make the model's training forward compute logits only at labelled positions; True when installed.

    Applies to calls with ``labels`` in training mode with gradients on, which is how ``Trainer`` and TRL's
    ``SFTTrainer`` compute the loss: the backbone runs as usual, the head and the cross-entropy run fused and
    chunked (:func:`midblock.tuning.loss.chunked_head_ce`) on the positions whose next-token label is not -100.
    The loss is the same mean over labelled tokens (or the sum over ``num_items_in_batch``, the Trainer's
    gradient-accumulation normaliser); ``logits`` is None. For TRL's ``fused_lm_head=True`` call it returns
    TRL's per-token fields: ``log_probs`` (exact values; their gradient is exact for TRL's summed ``nll``
    loss, which is why ``loss_type='dft'`` is left to TRL), ``is_top1``, ``label_mask`` and ``entropy`` (the
    predicted distribution's entropy at each labelled position, 0 elsewhere: the positions TRL averages its
    logged ``entropy`` over, so the logged value is TRL's own). Every other call goes to the original forward.
    Not installed (False, logged) for heads that are not a plain ``nn.Linear`` or that scale or soft-cap logits.
    """

    inner = strip_peft(model)
    if getattr(inner.forward, "__func__", None) is _labelled_forward:
        return True
    lay = get_layout(model)
    cfg = getattr(inner, "config", None)
    text_cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    scaled = any(
        getattr(text_cfg, k, None) not in (None, 1.0)
        for k in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    )
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    head = lay.lm_head
    if scaled or head is None or not plain_linear(head) or backbone is None or backbone is inner:
        log.info("labelled-positions head not installed (scaled logits or an unusual head): the model's own is used")
        return False
    # the forward in place now (TRL's fused-head forward, or the model's own) answers every other call; bound
    # methods, not closures, so that a deep copy of the model calls its own copy
    object.__setattr__(inner, "_midblock_original_forward", inner.forward)
    object.__setattr__(inner, "forward", types.MethodType(_labelled_forward, inner))
    return True


def _labelled_forward(self: nn.Module, *args: Any, labels: torch.Tensor | None = None, **kw: Any) -> Any:
    fused = kw.pop("fused_lm_head", None)
    nib = kw.pop("num_items_in_batch", None)
    plain = (
        args
        or labels is None
        or not self.training
        or not torch.is_grad_enabled()
        or kw.get("shift_labels") is not None
        or kw.get("inputs_embeds") is not None
        or kw.get("output_router_logits")
    )
    if plain:
        if fused is not None:
            kw["fused_lm_head"] = fused
        if nib is not None:
            kw["num_items_in_batch"] = nib
        return self._midblock_original_forward(*args, labels=labels, **kw)

    kw["use_cache"] = False
    kw.pop("logits_to_keep", None)
    kw.pop("return_dict", None)
    hidden = getattr(self, self.base_model_prefix)(**kw).last_hidden_state[:, :-1]
    head = self.get_output_embeddings()
    target = labels[:, 1:].to(hidden.device)
    mask = target != IGNORE_INDEX
    stats: dict[str, torch.Tensor] = {}
    total = chunked_head_ce(hidden[mask], head.weight, head.bias, target[mask], reduction="sum", stats=stats)
    n = mask.sum()
    loss = total / (nib if nib is not None else n.clamp(min=1))
    if not fused:
        from transformers.modeling_outputs import CausalLMOutputWithPast

        return CausalLMOutputWithPast(loss=loss, logits=None)
    rows = stats.get("row_loss", hidden.new_zeros(0, dtype=torch.float32))
    top1 = stats.get("is_top1", torch.zeros(0, dtype=torch.bool, device=hidden.device))
    ent = stats.get("entropy", hidden.new_zeros(0, dtype=torch.float32))
    # Each row holds its exact log-probability; the gradient rides on a term whose value is zero: the rows sum
    # to -total in value and in gradient, which is all TRL's nll loss uses.
    live = (total - total.detach()) / n.clamp(min=1)
    log_probs = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    log_probs = log_probs.masked_scatter(mask, -(rows.detach() + live))
    return types.SimpleNamespace(
        loss=loss,
        log_probs=log_probs,
        entropy=torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(mask, ent.detach()),
        log_sum_sq_probs=None,
        mean_logits=None,
        is_top1=torch.zeros(mask.shape, dtype=torch.bool, device=hidden.device).masked_scatter(mask, top1),
        label_mask=mask,
        aux_loss=None,
    )


def _schedule(model: nn.Module | None) -> Any:
    """LISA's schedule of a prepared model (``prepare_model(..., band='lisa:G/K')``), or None."""
    if model is None:
        return None
    plan_ = getattr(model, "midblock_plan", None) or getattr(strip_peft(model), "midblock_plan", None)
    return getattr(plan_, "schedule", None)


class LisaCallback(TrainerCallback):
    """LISA's switching inside ``Trainer`` / ``SFTTrainer`` for a model prepared with ``band='lisa:G/K'``.

    ``on_step_begin`` freezes every block but the active set of ``state.global_step`` (the same draws as
    midblock's own loop: :class:`midblock.selection.lisa.LisaSchedule`, seeded by ``prepare_model(...,
    seed=)``); ``on_step_end`` (after the optimizer step and ``zero_grad``) makes every block trainable again.
    The trainer's optimizer, built before training starts while every block is trainable, holds them all; a
    frozen block has no gradient, so AdamW skips it and keeps its moments, as in the reference callbacks.
    :class:`MidBlockCallback` does the same, so use one of the two. ``switches`` lists the switches seen.
    """

    def __init__(self) -> None:
        self.switches: list[dict[str, Any]] = []

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        sch = _schedule(model)
        if sch is not None:
            sch.begin_step(model, state.global_step)
            self.switches = sch.switches
        return control

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        sch = _schedule(model)
        if sch is not None:
            sch.end_step(model)
        return control


class MidBlockCallback(LisaCallback):
    """Keeps Mid-Block tuning intact inside ``Trainer`` / ``SFTTrainer``; add it with ``callbacks=[...]``.

    At ``on_train_begin`` (after the trainer has enabled checkpointing, added its hooks and, on the
    ``peft_config=`` route, built the PEFT model): installs the truncation-keeping checkpointing methods,
    repairs whatever the trainer switched on (input-gradient hooks removed, checkpointing non-reentrant and
    only from the first trainable block up), checks the truncated backward (raises ``MidblockError`` when a
    parameter below the band trains), and, with ``labelled_head`` (default), installs the labelled-positions
    head. ``report`` holds the last check's result. With a ``lisa:G/K`` band it also switches the active blocks
    every step (:class:`LisaCallback`).
    """

    @renamed_kwargs(head_at_labels="labelled_head")
    def __init__(self, labelled_head: bool = True) -> None:
        super().__init__()
        self.labelled_head = labelled_head
        self.report: dict[str, Any] | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> TrainerControl:

        if model is None:
            raise MidblockError("MidBlockCallback got no model from the trainer")
        keep_truncation(model)
        report = check_truncated_backward(model, fix=True)
        head = False
        if self.labelled_head:
            if getattr(args, "loss_type", "nll") not in (None, "nll"):
                log.info("labelled-positions head left out: TRL loss_type=%s weights tokens", args.loss_type)
            else:
                head = use_labelled_head(model)
        report["labelled_head"] = head
        self.report = report
        log.info(
            "midblock: backward through %d of %d blocks (from block %d), checkpointed %s, labelled head %s%s",
            report["backward_depth"],
            report["num_layers"],
            report["first_trainable_block"],
            report["checkpointed_blocks"] or "none",
            "on" if head else "off",
            f"; fixed: {', '.join(report['fixed'])}" if report["fixed"] else "",
        )
        return control
