"""``prepare_model(model, config)``: make exactly the intended parameters trainable, with a truncated backward.

LoRA goes through PEFT with *explicit* module names restricted to the band (PEFT cannot combine a string
target with a layer selection); per-segment ranks use ``rank_pattern`` / ``alpha_pattern`` keyed by
module-name regexes. Full-parameter methods only flip ``requires_grad``.

The backward pass must stop at the first trainable block: nothing below it may require grad, the
embedding output must not require grad (``enable_input_require_grads``, which TRL and the Trainer turn on
with checkpointing, would bring back the full-depth backward), and checkpointing is non-reentrant and
applied only to the blocks the backward visits (the band and the blocks above it), never below.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from midblock.errors import MidblockError
from midblock.layers import format_indices, segment_bounds
from midblock.models.introspect import block_of_param, get_layout, strip_peft
from midblock.selection import select, split_spec
from midblock.tuning.budget import Layout, in_out, match_budget
from midblock.tuning.config import MidBlockConfig, parse_segments

if TYPE_CHECKING:
    from peft import LoraConfig

    from midblock.models.introspect import ModelLayout

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A config resolved against a model's layout: which blocks train, how, and which modules."""

    method: str
    num_layers: int
    blocks_path: str
    lora_ranks: dict[int, int] = field(default_factory=dict)  # block -> rank (LoRA methods)
    full_blocks: list[int] = field(default_factory=list)  # full-parameter blocks
    train_rest: bool = False  # embedding, final norm and head (full fine-tuning only)
    targets: list[str] = field(default_factory=list)  # LoRA targets relative to a block
    alphas: dict[int, float] = field(default_factory=dict)
    scalings: dict[int, float] = field(default_factory=dict)
    band_spec: str = ""
    budget: dict[str, Any] | None = None
    full_modules: dict[int, list[str]] = field(default_factory=dict)  # per-matrix (Spectrum): block -> names
    lora_modules: dict[int, list[str]] = field(default_factory=dict)  # per-matrix LoRA (Spectrum): block -> names
    train_ends: bool = False  # embeddings and LM head (Spectrum, LISA), without the rest of full fine-tuning
    selection: Any = None  # the midblock.selection.Selection behind the band (strategy, evidence, schedule)

    @property
    def schedule(self) -> Any:
        """LISA's per-step schedule (``midblock.selection.lisa.LisaSchedule``), or None."""
        return self.selection.schedule if self.selection is not None else None

    @property
    def trainable_blocks(self) -> list[int]:
        return sorted(set(self.lora_ranks) | set(self.full_blocks) | set(self.full_modules))

    @property
    def backward_blocks(self) -> list[int]:
        """Blocks the backward pass visits: the first trainable one and every block above it."""
        return list(range(self.first_trainable, self.num_layers))

    @property
    def first_trainable(self) -> int:
        b = self.trainable_blocks
        return 0 if self.train_rest or self.train_ends or not b else b[0]

    def layout(self, checkpointing: bool = False) -> Layout:
        """The budget layout; for LISA the layout of one step (the active set of step 0)."""
        act = set(self.schedule.active(0)) if self.schedule is not None else None
        return Layout(
            {b: r for b, r in self.lora_ranks.items() if act is None or b in act},
            [b for b in self.full_blocks if act is None or b in act],
            list(self.targets),
            self.train_rest,
            checkpointing,
            full_modules={b: list(m) for b, m in self.full_modules.items()},
            train_ends=self.train_ends,
            lora_modules={b: list(m) for b, m in self.lora_modules.items()},
        )

    def block_targets(self, block: int) -> list[str]:
        """The LoRA targets of ``block``: its own (per-matrix LoRA) or the shared ``targets``."""
        return self.lora_modules.get(block, self.targets) if self.lora_modules else self.targets

    def module_names(self) -> list[str]:
        """Fully qualified LoRA target names, e.g. ``model.layers.6.self_attn.q_proj``."""
        return [f"{self.blocks_path}.{b}.{t}" for b in sorted(self.lora_ranks) for t in self.block_targets(b)]

    def to_dict(self) -> dict[str, Any]:

        return {
            "method": self.method,
            "num_layers": self.num_layers,
            "band_spec": self.band_spec,
            "trainable_blocks": self.trainable_blocks,
            "trainable_blocks_str": format_indices(self.trainable_blocks),
            "first_trainable_block": self.first_trainable,
            "backward_depth": self.num_layers - self.first_trainable,
            "lora_ranks": {str(k): v for k, v in self.lora_ranks.items()},
            "targets": self.targets,
            "alphas": {str(k): v for k, v in self.alphas.items()},
            "scalings": {str(k): v for k, v in self.scalings.items()},
            "budget": self.budget,
            "full_modules": {str(b): m for b, m in self.full_modules.items()},
            "lora_modules": {str(b): m for b, m in self.lora_modules.items()},
            "train_ends": self.train_ends,
            "selection": self.selection.to_dict() if self.selection is not None else None,
        }


def resolve_targets(names: tuple[str, ...] | list[str], layout: ModelLayout) -> list[str]:
    """Expand groups and short names (``q_proj``) to block-relative module names; unknown names are errors."""
    out: list[str] = []
    for n in names:
        if n == "attn":
            out += layout.attn_linears
        elif n == "mlp":
            out += layout.mlp_linears
        elif n == "all-linear":
            out += layout.linear_names
        elif n in layout.linear_names:
            out.append(n)
        else:
            hits = [m for m in layout.linear_names if m.split(".")[-1] == n]
            if not hits:
                raise MidblockError(
                    f"target module '{n}' does not exist in this model's blocks",
                    hint="existing: " + ", ".join(layout.linear_names) + " (or attn, mlp, all-linear)",
                )
            out += hits
    return list(dict.fromkeys(out))


def plan(
    config: MidBlockConfig,
    layout: ModelLayout,
    *,
    model: nn.Module | None = None,
    data: list[list[int]] | None = None,
    seed: int = 0,
) -> Plan:
    """Resolve ``config`` against a model layout (``get_layout`` of a model or of a meta skeleton).

    The band of ``midblock`` / ``midblock-full`` goes through the selection registry
    (:mod:`midblock.selection`): ``model`` and ``data`` (token id lists) serve the strategies that look at
    weights or activations, ``seed`` LISA's draws. On a meta skeleton such strategies are only validated.
    """
    L = layout.num_layers
    p = Plan(config.method, L, layout.blocks_path)
    m = config.method
    if m in ("lora", "full"):
        band = list(range(L))
        p.band_spec = "all"
    elif m in ("midblock", "midblock-full"):
        spec, form = config.band, "lora" if config.is_lora else "full"
        if form == "full" and split_spec(spec)[0].param_sized and (config.param_budget or config.budget_baseline_rank):
            spec, p.budget = budget_matched_spec(config, layout)
        targets = resolve_targets(config.target_modules, layout) if config.is_lora else None
        sel = select(
            spec, layout, model=model, data=data, analysis=config.analysis, seed=seed, form=form, targets=targets
        )
        p.selection, p.band_spec, band = sel, sel.spec, list(sel.blocks)
        modules = {b: list(x) for b, x in sel.modules.items()}
        if config.is_lora:
            p.lora_modules = modules  # per-matrix LoRA (Spectrum): adapters on these modules only
        else:
            p.full_modules, p.train_ends = modules, sel.train_ends
    elif m == "freeze":
        band = list(range(config.freeze_first, L - config.freeze_last))
        if not band:
            raise MidblockError(
                f"freezing the first {config.freeze_first} and last {config.freeze_last} of {L} blocks leaves none"
            )
        p.band_spec = f"{band[0]}-{band[-1]}"
    else:  # segments
        ranks = parse_segments(config.segments or "")
        bounds = segment_bounds(L, len(ranks))
        band = []
        for (lo, hi), r in zip(bounds, ranks):
            if r > 0:
                for b in range(lo, hi):
                    p.lora_ranks[b] = r
                band += list(range(lo, hi))
        if not band:
            raise MidblockError(f"segments '{config.segments}' select no block of a {L}-block model")
        p.band_spec = config.segments or ""
    if config.is_lora:
        p.targets = resolve_targets(config.target_modules, layout)
        if m != "segments":
            rank = config.rank
            if config.budget_baseline_rank is not None:
                per_rank = _per_rank(layout, p.targets)
                units, unit = _lora_budget_blocks(p, band)
                bm = match_budget(
                    L,
                    config.budget_baseline_rank,
                    units,
                    by=config.budget_by,
                    baseline_params_per_rank=per_rank,
                    band_params_per_rank=per_rank,
                )
                rank = bm.rank
                p.budget = {
                    "baseline": f"lora all {L} blocks r{bm.baseline_rank}",
                    "rank": bm.rank,
                    "units": bm.units,
                    "baseline_units": bm.baseline_units,
                    "by": bm.by,
                } | ({"unit": unit} if unit else {})
            p.lora_ranks = {b: rank for b in band}
        p.alphas = {b: config.alpha_for(r) for b, r in p.lora_ranks.items()}
        p.scalings = {b: config.scaling_for(r) for b, r in p.lora_ranks.items()}
    else:
        p.full_blocks = [] if p.full_modules else band  # per-matrix selections train modules, not blocks
        p.train_rest = m == "full"
    return p


def _lora_budget_blocks(p: Plan, band: list[int]) -> tuple[int, str | None]:
    """How many blocks' worth of adapters a LoRA selection trains per step, for rank-unit matching, and what
    that counts when it is not the band's blocks.

    A band: its blocks. Spectrum's LoRA form: ``k`` = adapted matrices / target types (every type gets the same
    number of matrices, so k matrices of each type cost what k whole blocks of adapters cost, in rank units and
    in parameters). LISA's LoRA form: the G active blocks of a step (adapters sit on every block, but only G
    blocks' adapters train at any step; the budget is per step, as for the full form)."""
    if p.lora_modules:
        n, t = sum(len(x) for x in p.lora_modules.values()), len(p.targets)
        per_type = {name: sum(name in x for x in p.lora_modules.values()) for name in p.targets}
        if len(set(per_type.values())) != 1:  # not Spectrum's equal counts: no block equivalent
            raise MidblockError(f"'{p.band_spec}' selects unequal numbers of matrices per type: {per_type}")
        return n // t, f"{n // t} matrices of each of {t} target types ({n} in all)"
    if p.schedule is not None:
        return p.schedule.gamma, f"{p.schedule.gamma} active blocks per step (adapters on all {p.num_layers})"
    return len(band), None


def budget_matched_spec(config: MidBlockConfig, layout: ModelLayout) -> tuple[str, dict[str, Any]]:
    """A spectrum / lisa spec whose P or G is the largest that fits a parameter budget, and the budget record.

    The budget is ``config.param_budget`` parameters, or else those of all-block LoRA at
    ``budget_baseline_rank`` on ``target_modules``. Spectrum's unit is one matrix of every module type (every
    type has one matrix per block, so k per type costs k times a block's linear parameters; P = 100k/L);
    LISA's unit is one whole block. Embeddings and head, which both train by default, are outside the budget.
    """
    strategy, arg = split_spec(config.band)
    L = layout.num_layers
    if config.param_budget:
        budget, baseline = int(config.param_budget), f"{config.param_budget} parameters"
    else:
        r = int(config.budget_baseline_rank or 0)
        budget = L * r * _per_rank(layout, resolve_targets(config.target_modules, layout))
        baseline = f"lora all {L} blocks r{r} ({', '.join(config.target_modules)})"
    suffix = ":blocks" if arg.endswith(":blocks") else ""
    block = layout.blocks[0]
    if strategy.name == "spectrum":
        unit = sum(x.numel() for n in layout.linear_names for x in block.get_submodule(n).parameters())
        what = "matrix of every module type"
    else:
        unit = sum(x.numel() for x in block.parameters())
        what = "block"
    k = min(L, budget // unit)
    if k < 1:
        raise MidblockError(
            f"a budget of {budget:,} parameters ({baseline}) is smaller than one {what} ({unit:,})",
            hint="raise the budget, or compare against a LoRA arm",
        )
    if strategy.name == "spectrum":
        spec = f"spectrum:{min(100.0, (100 * k + 0.5) / L):.6g}{suffix}"  # floor(L * P / 100) = k
    else:
        spec = f"lisa:{k}/{arg.split(':')[0].split('/')[1]}{suffix}"
    record = {"baseline": baseline, "baseline_params": budget, "params": k * unit, "by": "params", "spec": spec}
    if not suffix:
        record["outside_budget"] = "embeddings and head"
    return spec, record


def _per_rank(layout, targets: list[str]) -> int:

    return sum(sum(in_out(layout.blocks[0].get_submodule(t))) for t in targets)


# --------------------------------------------------------------------------- building the model


def lora_config(p: Plan, config: MidBlockConfig, fan_in_fan_out: bool = False) -> LoraConfig:
    """The PEFT ``LoraConfig``: explicit module names; per-rank-group patterns when ranks differ."""
    from peft import LoraConfig

    ranks = sorted(set(p.lora_ranks.values()))
    default_rank = max(ranks, key=lambda r: sum(1 for v in p.lora_ranks.values() if v == r))
    rank_pattern, alpha_pattern = {}, {}
    for r in ranks:
        if r == default_rank:
            continue
        blocks = "|".join(str(b) for b in sorted(p.lora_ranks) if p.lora_ranks[b] == r)
        targets = "|".join(re.escape(t) for t in p.targets)
        # PEFT matches keys with re.match(rf"(.*\.)?({key})$", module_name): anchor the block index.
        key = rf"{re.escape(p.blocks_path)}\.({blocks})\.({targets})"
        rank_pattern[key] = r
        alpha_pattern[key] = config.alpha_for(r)
    return LoraConfig(
        r=default_rank,
        lora_alpha=config.alpha_for(default_rank),
        target_modules=p.module_names(),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=config.alpha_policy == "rslora",
        lora_dropout=config.dropout,
        fan_in_fan_out=fan_in_fan_out,  # GPT-2's Conv1D stores (in, out)
        bias="none",
        task_type="CAUSAL_LM",
    )


def prepare_model(
    model: nn.Module,
    config: MidBlockConfig,
    *,
    base_name: str | None = None,
    data: list[list[int]] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Return ``model`` ready to train per ``config`` (a ``PeftModel`` for LoRA methods).

    Usable with any loop (HF ``Trainer``, TRL ``SFTTrainer``, your own), with or without the trainer's
    ``gradient_checkpointing=True``: the returned model's checkpointing entry points keep the backward
    truncated (:func:`keep_truncation`); ``config.gradient_checkpointing`` does the same for your own loop.
    ``base_name`` is recorded in a saved adapter (see :func:`midblock.models.loading.loadable_base`).
    ``data`` (token id lists) and ``seed`` serve the selection strategies that need them (``cka-select``
    ranks blocks on data; ``lisa`` draws its active sets from the seed). With ``lisa`` every block stays
    trainable here: the schedule (``model.midblock_plan.schedule``) narrows each step to its active set,
    which midblock's loop and :class:`midblock.tuning.trainers.MidBlockCallback` do.
    """

    layout = get_layout(model)
    p = plan(config, layout, model=model, data=data, seed=seed)
    for prm in model.parameters():
        prm.requires_grad_(False)
    if config.is_lora:
        from peft import get_peft_model

        from midblock.models.loading import peft_quietly

        conv1d = any(type(layout.blocks[0].get_submodule(t)).__name__ == "Conv1D" for t in p.targets)
        with peft_quietly():
            model = get_peft_model(model, lora_config(p, config, conv1d))
        if base_name is not None:
            # set after get_peft_model, which overwrites the config's base with the model's own path (and warns
            # when that differs from the one given): a midblock spec is not what from_pretrained can load
            from midblock.models.loading import loadable_base

            model.peft_config["default"].base_model_name_or_path = loadable_base(base_name)
        verify_lora_ranks(model, p)
    else:
        for b in p.full_blocks:
            for prm in layout.blocks[b].parameters():
                prm.requires_grad_(True)
        for b, names in p.full_modules.items():
            for name in names:
                for prm in layout.blocks[b].get_submodule(name).parameters():
                    prm.requires_grad_(True)
        if p.train_ends:
            for prm in [*layout.embedding.parameters(), *layout.lm_head.parameters()]:
                prm.requires_grad_(True)
        if p.train_rest:
            for prm in model.parameters():
                prm.requires_grad_(True)
    model.midblock_plan = p  # read by train() and the checks
    keep_truncation(model)
    if config.gradient_checkpointing:
        enable_band_checkpointing(model, p.backward_blocks)
    check_truncated_backward(model, fix=True)
    return model


def _first_trainable(model: nn.Module) -> int:
    """The first block the backward must reach, read from the plan or else from ``requires_grad``."""

    plan_ = getattr(model, "midblock_plan", None)
    if plan_ is not None:
        return plan_.first_trainable
    lay = get_layout(model)
    blocks = [block_of_param(n, lay) for n, prm in model.named_parameters() if prm.requires_grad]
    if not blocks or any(b is None for b in blocks):
        return 0  # nothing trainable yet (before PEFT wraps the model), or something outside the blocks trains
    return min(b for b in blocks if b is not None)


# The replacements are bound to the transformers model itself (types.MethodType), not closures over it, so a
# deep copy of a prepared model gets methods bound to the copy.


def _no_input_grads(self: nn.Module, *_a: Any, **_k: Any) -> None:
    log.info("enable_input_require_grads: skipped (midblock keeps the backward truncated at the band)")


def _band_checkpointing(
    self: nn.Module,
    activation_checkpointing_kwargs: dict | None = None,
    every_n_layers: int = 1,
    offload: bool = False,
    **extra: Any,
) -> None:
    kw = dict(activation_checkpointing_kwargs or extra.pop("gradient_checkpointing_kwargs", None) or {})
    if kw.pop("use_reentrant", False):
        log.warning("reentrant checkpointing needs input gradients (full-depth backward): using non-reentrant")
    if every_n_layers != 1 or offload:
        log.warning("midblock checkpointing ignores every_n_layers=%s / offload=%s", every_n_layers, offload)

    lay = get_layout(self)
    first = _first_trainable(self)
    for i in range(first):  # a trainer may have switched them on before: nothing below the band
        if getattr(lay.blocks[i], "gradient_checkpointing", False):
            lay.blocks[i].gradient_checkpointing = False
    enable_band_checkpointing(self, list(range(first, lay.num_layers)), **kw)


def _band_checkpointing_old_name(self: nn.Module, gradient_checkpointing_kwargs: dict | None = None, **kw: Any) -> None:
    _band_checkpointing(self, gradient_checkpointing_kwargs, **kw)


def keep_truncation(model: nn.Module) -> nn.Module:
    """Replace the checkpointing entry points trainers call on ``model`` by truncation-keeping versions.

    transformers' ``Trainer.train()`` calls ``activation_checkpointing_enable`` (which turns on input
    gradients for PEFT models) and TRL's ``SFTTrainer`` calls ``enable_input_require_grads``; both make the
    embedding output require grad, and then every block below the band is back-propagated. On this model:

    - ``enable_input_require_grads`` does nothing (input gradients are only needed by *reentrant*
      checkpointing, and midblock checkpoints non-reentrantly, which gives the same gradients without them);
    - ``activation_checkpointing_enable`` / ``gradient_checkpointing_enable`` checkpoint, non-reentrantly, the
      first trainable block and every block above it, never the blocks below (they keep no activations for a
      backward, so checkpointing them would only add a recompute). ``use_reentrant=True`` is replaced with a
      warning; ``every_n_layers`` and ``offload`` are ignored with a warning.

    The first trainable block is read when the trainer calls (from the plan, else from ``requires_grad``), so
    this also works on a model PEFT wraps later (the ``peft_config=`` route). The methods are set on the
    transformers model instance, to which PEFT's wrappers forward attribute look-ups. Returns ``model``.
    """
    import types

    inner = strip_peft(model)
    plan_ = getattr(model, "midblock_plan", None)
    if plan_ is not None and inner is not model:
        object.__setattr__(inner, "midblock_plan", plan_)  # the bound methods read it from the inner model
    for name, fn in (
        ("enable_input_require_grads", _no_input_grads),
        ("activation_checkpointing_enable", _band_checkpointing),
        ("gradient_checkpointing_enable", _band_checkpointing_old_name),
    ):
        object.__setattr__(inner, name, types.MethodType(fn, inner))
    return model


def verify_lora_ranks(model: nn.Module, p: Plan) -> None:
    """Inspect the built LoRA modules: exactly the planned modules, each at its planned rank."""
    from peft.tuners.lora import LoraLayer

    lay = get_layout(model)
    built: dict[str, int] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and "default" in getattr(mod, "r", {}):
            built[name] = mod.r["default"]
    expected = {f"{b}.{t}": p.lora_ranks[b] for b in p.lora_ranks for t in p.block_targets(b)}
    got = {}
    for name, r in built.items():
        b = block_of_param(name, lay)
        rel = name.split(f"{lay.blocks_path}.{b}.", 1)[-1]
        got[f"{b}.{rel}"] = r
    if got != expected:
        wrong = sorted(set(got.items()) ^ set(expected.items()))[:3]
        raise RuntimeError(f"PEFT built LoRA modules that differ from the plan: {wrong}")


def enable_band_checkpointing(model: nn.Module, blocks: list[int], **checkpoint_kwargs: Any) -> None:
    """Non-reentrant activation checkpointing on ``blocks`` only (no input gradients needed).

    ``prepare_model`` passes the blocks the backward visits (the band and the blocks above it): blocks
    below the band keep no activations for a backward anyway, so checkpointing them would only cost a
    recompute; blocks above the band hold activations for the backward, so checkpointing them saves as
    much memory as the peer set-up (checkpointing everything) without its full-depth backward.
    """
    from torch.utils.checkpoint import checkpoint

    fn = functools.partial(checkpoint, **{**checkpoint_kwargs, "use_reentrant": False})
    lay = get_layout(model)
    for b in blocks:
        block = lay.blocks[b]
        if not hasattr(type(block), "gradient_checkpointing"):
            raise MidblockError(f"{type(block).__name__} does not support per-block checkpointing")
        block.gradient_checkpointing = True
        block._gradient_checkpointing_func = fn


def _input_grad_hooks(emb: nn.Module) -> list[int]:
    return [k for k, h in emb._forward_hooks.items() if "require" in getattr(h, "__name__", "")]


def check_truncated_backward(model: nn.Module, *, fix: bool = False) -> dict[str, Any]:
    """Verify the backward stops at the first trainable block; with ``fix=True`` repair what can be repaired.

    Violations: a parameter below the first trainable block requires grad (refused: that is a different
    method), the embedding output requires grad (``enable_input_require_grads``; fixed by removing the
    hook), reentrant checkpointing or checkpointing below the band (fixed: non-reentrant on the band only).
    Returns a report with the backward depth.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    lay = get_layout(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise MidblockError("no parameter requires grad: nothing would train")
    blocks = [block_of_param(n, lay) for n in trainable]
    outside = [n for n, b in zip(trainable, blocks) if b is None]
    first = 0 if outside else min(b for b in blocks if b is not None)
    plan_ = getattr(model, "midblock_plan", None)
    if plan_ is not None and first < plan_.first_trainable:
        bad = next(n for n, b in zip(trainable, blocks) if b is None or b < plan_.first_trainable)
        raise MidblockError(
            f"{bad} requires grad but lies below the band (first trainable block {plan_.first_trainable})",
            hint="freeze it, or choose a band that includes it",
        )
    fixed: list[str] = []
    emb = lay.embedding
    hooks = _input_grad_hooks(emb)
    if first > 0 and hooks:
        if not fix:
            raise MidblockError("the embedding output requires grad (enable_input_require_grads): full-depth backward")
        inner = getattr(getattr(getattr(model, "base_model", None), "model", None), "disable_input_require_grads", None)
        for k in hooks:
            emb._forward_hooks.pop(k, None)
        if inner is not None:
            try:
                inner()
            except AttributeError:  # no handle left to remove: the hooks are already gone
                pass
        fixed.append("removed input-require-grads hooks")
    emb_grad = bool(emb.weight.requires_grad)
    if first > 0:
        with torch.enable_grad():
            out = emb(torch.zeros(1, 1, dtype=torch.long, device=emb.weight.device))
        if out.requires_grad:
            raise MidblockError("the embedding output still requires grad; remove the trainer's input-grad hook")
    ckpt = []
    for i, block in enumerate(lay.blocks):
        if getattr(block, "gradient_checkpointing", False):
            f = getattr(block, "_gradient_checkpointing_func", None)
            reentrant = getattr(f, "keywords", {}).get("use_reentrant", True) if f is not None else True
            if i < first or reentrant:
                if not fix:
                    raise MidblockError(
                        f"block {i} uses {'reentrant ' if reentrant else ''}checkpointing below/in band"
                    )
                if i < first:
                    block.gradient_checkpointing = False
                else:
                    block._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
                    ckpt.append(i)
                fixed.append(f"block {i} checkpointing")
            else:
                ckpt.append(i)
    if fixed:
        log.info("truncated backward: fixed %s", "; ".join(dict.fromkeys(fixed)))
    return {
        "first_trainable_block": first,
        "backward_depth": lay.num_layers - first,
        "num_layers": lay.num_layers,
        "embedding_trainable": emb_grad,
        "checkpointed_blocks": ckpt,
        "fixed": list(dict.fromkeys(fixed)),
    }


def selection_summary(p: Plan) -> dict[str, Any] | None:
    """What a plan's selection strategy chose, short enough to print (the full record is ``p.to_dict()``)."""
    sel = p.selection
    if sel is None:
        return None
    out: dict[str, Any] = {"strategy": sel.strategy, "spec": sel.spec, "blocks": format_indices(p.trainable_blocks)}
    if p.full_modules or p.lora_modules:
        per_type: dict[str, int] = {}
        for names in (p.full_modules or p.lora_modules).values():
            for n in names:
                per_type[n] = per_type.get(n, 0) + 1
        out["matrices"] = per_type
    if sel.strategy in ("spectrum", "lisa"):
        out["form"] = "lora" if p.lora_ranks else "full"
        out["embeddings_and_head"] = p.train_ends
    if p.schedule is not None:
        out["lisa"] = p.schedule.to_dict() | {"switches": p.schedule.switches}
    if sel.strategy == "cka-select":
        out["cka"] = sel.details.get("cka")
    return out


def step_trainable_params(model: nn.Module, p: Plan) -> int:
    """Parameters one optimizer step trains: those requiring grad, less LISA's inactive blocks' (step 0's)."""
    n = sum(x.numel() for x in model.parameters() if x.requires_grad)
    if p.schedule is None:
        return n
    active = set(p.schedule.active(0))
    blocks = get_layout(model).blocks
    idle = [x for b in range(len(blocks)) if b not in active for x in blocks[b].parameters() if x.requires_grad]
    return n - sum(x.numel() for x in idle)
