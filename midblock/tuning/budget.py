"""Budgets (rank units, trainable parameters), the FLOP model of a training step, and the parameter table.

Everything here is pure arithmetic on shapes, so it runs on a meta-device skeleton in milliseconds.

FLOP model, per token, for one decoder block with linear FLOPs ``Lf = 2 * (linear params)`` and attention
FLOPs ``A = 4 * T * attn_width`` (QK^T and AV over the full T x T square):

- forward: ``Lf + A`` for every block;
- activation gradient: ``Lf + 2A`` for every block at or above the first trainable block (blocks below
  it get no backward at all: the truncated backward);
- weight gradient: ``Lf`` for a full-parameter block, nothing for a frozen one;
- LoRA on a module (in, out) at rank r costs ``2r(in+out)`` in each of forward, activation and weight
  gradient;
- gradient checkpointing repeats the forward of the checkpointed blocks: those the backward visits
  (the first trainable block and everything above it);
- LM head: ``2dV`` forward and activation gradient per token it is applied to (only labelled tokens with
  head-at-labels), plus ``2dV`` weight gradient when it is trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from midblock.errors import MidblockError
from midblock.layers import format_indices
from midblock.models.introspect import get_layout

if TYPE_CHECKING:
    from torch import nn


def rank_units(ranks: Iterable[int]) -> int:
    """The paper's budget: the sum of the per-layer ranks."""
    return int(sum(int(r) for r in ranks))


def layout_rank_units(layout: Layout) -> int | float:
    """Rank units of a layout: the sum of the per-block ranks, where a block with adapters on only some of the
    target modules (per-matrix LoRA, Spectrum's LoRA form) counts that share of its rank: rank x adapted
    matrices / target types. A block with every target counts its rank, as in the paper; Spectrum's k matrices
    of every type at rank r count k x r, the units of a band of k blocks."""
    if not layout.lora_modules:
        return rank_units(layout.lora.values())
    units = Fraction(sum(r * len(layout.lora_targets(b)) for b, r in layout.lora.items()), max(1, len(layout.targets)))
    return int(units) if units.denominator == 1 else float(units)


def _count(blocks: int | Sequence[int]) -> int:
    n = blocks if isinstance(blocks, int) else len(list(blocks))
    if n <= 0:
        raise MidblockError("a budget needs at least one block")
    return int(n)


@dataclass
class BudgetMatch:
    """The rank a band gets so its budget matches a baseline."""

    rank: int
    blocks: int
    baseline_rank: int
    baseline_blocks: int
    by: str
    units: int
    baseline_units: int
    params: int | None = None
    baseline_params: int | None = None


def match_budget(
    baseline_blocks: int | Sequence[int],
    baseline_rank: int,
    band_blocks: int | Sequence[int],
    *,
    by: str = "rank-units",
    baseline_params_per_rank: int | None = None,
    band_params_per_rank: int | None = None,
) -> BudgetMatch:
    """Largest rank whose budget on ``band_blocks`` does not exceed the baseline's.

    ``by='rank-units'`` (the paper's rule): ``rank = floor(baseline_blocks * baseline_rank / band_blocks)``,
    e.g. 16 blocks at r64 -> 9 blocks at r113. ``by='params'``: the same with the LoRA parameters one rank
    unit costs per block (``*_params_per_rank``, e.g. sum of in+out over the target modules), which differs
    from rank units when the two arms target different modules.
    """
    nb, nx = _count(baseline_blocks), _count(band_blocks)
    if baseline_rank <= 0:
        raise MidblockError(f"baseline rank must be positive, got {baseline_rank}")
    if by == "rank-units":
        rank = (nb * baseline_rank) // nx
        params = base_params = None
    elif by == "params":
        if not baseline_params_per_rank or not band_params_per_rank:
            raise MidblockError("matching by params needs the parameters per rank unit of both arms")
        base_params = nb * baseline_rank * baseline_params_per_rank
        rank = base_params // (nx * band_params_per_rank)
        params = nx * rank * band_params_per_rank
    else:
        raise MidblockError(f"unknown budget rule '{by}'", hint="use rank-units or params")
    if rank < 1:
        raise MidblockError(f"a budget of {nb} blocks x r{baseline_rank} gives the band rank 0", hint="raise the rank")
    return BudgetMatch(rank, nx, baseline_rank, nb, by, nx * rank, nb * baseline_rank, params, base_params)


# --------------------------------------------------------------------------- model shapes


@dataclass
class ModelShape:
    """What the FLOP model and the parameter table need to know about a model."""

    num_layers: int
    d_model: int
    vocab: int
    block_linear_params: int  # weights of one block's linear modules
    block_params: int  # every parameter of one block
    attn_width: int  # heads * head_dim of the attention core
    other_params: int  # embedding, final norm, (untied) head
    head_params: int
    modules: dict[str, tuple[int, int]] = field(default_factory=dict)  # block-relative name -> (in, out)
    module_params: dict[str, int] = field(default_factory=dict)  # block-relative name -> weight (+ bias) size
    ends_params: int = 0  # input embedding and LM head (a tied pair counted once)

    @property
    def total_params(self) -> int:
        return self.num_layers * self.block_params + self.other_params


def in_out(mod: nn.Module) -> tuple[int, int]:
    if hasattr(mod, "in_features"):
        return int(mod.in_features), int(mod.out_features)
    w = mod.weight  # GPT-2's Conv1D stores (in, out)
    return int(w.shape[0]), int(w.shape[1])


def model_shape(model: nn.Module) -> ModelShape:
    """Read the shapes off a model (a meta-device skeleton works)."""

    lay = get_layout(model)
    block = lay.blocks[0]
    modules = {n: in_out(block.get_submodule(n)) for n in lay.linear_names}
    lin = sum(i * o for i, o in modules.values())
    bparams = sum(p.numel() for p in block.parameters())
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    d = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0))
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    vocab = int(lay.lm_head.weight.shape[0])
    all_params = {id(p): p.numel() for p in model.parameters()}
    total = sum(all_params.values())
    return ModelShape(
        num_layers=lay.num_layers,
        d_model=d,
        vocab=vocab,
        block_linear_params=lin,
        block_params=bparams,
        attn_width=int(heads * head_dim),
        other_params=total - lay.num_layers * bparams,
        head_params=int(lay.lm_head.weight.numel()),
        modules=modules,
        module_params={n: sum(p.numel() for p in block.get_submodule(n).parameters()) for n in modules},
        ends_params=sum({id(p): p.numel() for m in (lay.embedding, lay.lm_head) for p in m.parameters()}.values()),
    )


# --------------------------------------------------------------------------- FLOP model


@dataclass
class Layout:
    """Which blocks train and how: ``lora[i] = rank`` for LoRA blocks, ``full`` = full-parameter blocks."""

    lora: dict[int, int] = field(default_factory=dict)
    full: list[int] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # LoRA target names relative to a block
    train_head: bool = False  # full fine-tuning trains the (tied) embedding / head too
    checkpointing: bool = False
    # The peer set-up (input grads on, checkpointing on every block): backward from block 0, all recomputed.
    act_from: int | None = None
    checkpoint_all: bool = False
    full_modules: dict[int, list[str]] = field(default_factory=dict)  # per-matrix full training (Spectrum)
    train_ends: bool = False  # embeddings and head train (Spectrum, LISA): the backward reaches block 0
    lora_modules: dict[int, list[str]] = field(default_factory=dict)  # per-matrix LoRA: block -> its targets

    def lora_targets(self, block: int) -> list[str]:
        """The LoRA targets of ``block``: its own list (per-matrix LoRA) or the shared ``targets``."""
        return self.lora_modules.get(block, self.targets) if self.lora_modules else self.targets

    @property
    def trainable_blocks(self) -> list[int]:
        return sorted(set(self.lora) | set(self.full) | set(self.full_modules))

    @property
    def first_trainable(self) -> int | None:
        b = self.trainable_blocks
        if self.train_ends:
            return 0
        return b[0] if b else None


@dataclass
class StepFlops:
    forward: float
    act_grad: float
    weight_grad: float
    recompute: float

    @property
    def total(self) -> float:
        return self.forward + self.act_grad + self.weight_grad + self.recompute


def step_flops(
    shape: ModelShape, layout: Layout, *, seq_len: int, tokens: int, head_tokens: int | None = None
) -> StepFlops:
    """FLOPs of one training step on ``tokens`` tokens of length-``seq_len`` sequences (see module doc)."""
    lf = 2.0 * shape.block_linear_params
    attn = 4.0 * seq_len * shape.attn_width
    head_tokens = tokens if head_tokens is None else head_tokens
    first = layout.first_trainable
    if first is None and not (layout.train_head or layout.train_ends):
        raise MidblockError("nothing is trainable in this layout")
    first = shape.num_layers if first is None else first
    if layout.act_from is not None:
        first = min(first, layout.act_from)
    fwd = act = wg = rec = 0.0
    for b in range(shape.num_layers):
        targets = layout.lora_targets(b)
        lora = sum(2.0 * (i + o) for n, (i, o) in shape.modules.items() if n in targets) * layout.lora.get(b, 0)
        f = lf + attn + lora
        fwd += f
        if b >= first:
            act += lf + 2 * attn + lora
        if b in layout.full:
            wg += lf
        wg += sum(2.0 * i * o for n, (i, o) in shape.modules.items() if n in layout.full_modules.get(b, ()))
        wg += lora
        if layout.checkpoint_all or (layout.checkpointing and b >= first):
            rec += f
    head = 2.0 * shape.d_model * shape.vocab
    fwd_t, act_t, wg_t, rec_t = fwd * tokens, act * tokens, wg * tokens, rec * tokens
    fwd_t += head * head_tokens
    act_t += head * head_tokens
    if layout.train_head or layout.train_ends:
        wg_t += head * head_tokens
    return StepFlops(fwd_t, act_t, wg_t, rec_t)


def all_block_lora(shape: ModelShape, rank: int, targets: list[str], checkpointing: bool = False) -> Layout:
    return Layout(lora={b: rank for b in range(shape.num_layers)}, targets=targets, checkpointing=checkpointing)


def full_ft(shape: ModelShape, checkpointing: bool = False) -> Layout:
    return Layout(full=list(range(shape.num_layers)), train_head=True, checkpointing=checkpointing)


def predicted_ratios(
    shape: ModelShape,
    layout: Layout,
    *,
    baseline_rank: int,
    seq_len: int,
    tokens: int,
    head_tokens: int | None = None,
) -> dict[str, float]:
    """Predicted step compute relative to all-block LoRA (same targets, ``baseline_rank``) and to full FT."""
    kw = {"seq_len": seq_len, "tokens": tokens, "head_tokens": head_tokens}
    me = step_flops(shape, layout, **kw).total
    targets = layout.targets or [n for n in shape.modules]
    lora = step_flops(shape, all_block_lora(shape, baseline_rank, targets, layout.checkpointing), **kw).total
    full = step_flops(shape, full_ft(shape, layout.checkpointing), **kw).total
    return {"step_gflops": me / 1e9, "vs_lora": me / lora, "vs_full": me / full}


# --------------------------------------------------------------------------- parameter table


def trainable_params(shape: ModelShape, layout: Layout) -> int:
    lora = sum(
        r * sum(i + o for n, (i, o) in shape.modules.items() if n in layout.lora_targets(b))
        for b, r in layout.lora.items()
    )
    full = len(layout.full) * shape.block_params + (shape.other_params if layout.train_head else 0)
    modules = sum(shape.module_params.get(n, 0) for names in layout.full_modules.values() for n in names)
    ends = shape.ends_params if layout.train_ends and not layout.train_head else 0
    return int(lora + full + modules + ends)


def parameter_row(
    name: str, shape: ModelShape, layout: Layout, alphas: dict[int, float], scalings: dict[int, float]
) -> dict[str, Any]:
    """One row of the table printed and saved before training."""

    n = trainable_params(shape, layout)
    ranks = sorted(set(layout.lora.values()))
    return {
        "arm": name,
        "blocks_trained": format_indices(layout.trainable_blocks),
        "num_blocks": len(layout.trainable_blocks),
        "ranks": ",".join(str(r) for r in ranks) if ranks else "full",
        "alpha": ",".join(f"{a:g}" for a in sorted(set(alphas.values()))) if alphas else "-",
        "scaling": ",".join(f"{s:.4g}" for s in sorted(set(scalings.values()))) if scalings else "-",
        "trainable_params": n,
        "rank_units": layout_rank_units(layout),
        "share_of_model": n / shape.total_params,
        "backward_depth": shape.num_layers - layout.first_trainable if layout.first_trainable is not None else 0,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of parameter rows (shares as percentages)."""
    if not rows:
        return ""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if c == "share_of_model":
                cells.append(f"{100 * v:.3f}%")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
