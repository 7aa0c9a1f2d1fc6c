"""``MidBlockConfig``: which blocks to train, how (LoRA or full parameters), at what rank and step size.

Validated in ``__post_init__`` (PEFT style) so a bad value fails before any model is loaded; anything that
needs the model (band indices, module names) is resolved later by :func:`midblock.tuning.prepare.plan`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from midblock.errors import MidblockError
from midblock.layers import PAPER_BAND
from midblock.lora import lora_scaling
from midblock.selection import check_spec, param_sized
from midblock.validation import check_float_fields, check_number

Method = Literal["lora", "midblock", "midblock-full", "full", "freeze", "segments"]
AlphaPolicy = Literal["constant-ratio", "fixed", "rslora"]
BudgetRule = Literal["rank-units", "params"]
METHODS: tuple[str, ...] = get_args(Method)
LORA_METHODS = ("lora", "midblock", "segments")
ALPHA_POLICIES: tuple[str, ...] = get_args(AlphaPolicy)
TARGET_GROUPS = ("attn", "mlp", "all-linear")
PAPER_ALPHA = 128.0  # the paper's fixed lora_alpha
DEFAULT_RATIO = 2.0  # alpha / r when nothing else is given (PEFT's common alpha = 2r)
RSLORA_ALPHA = 16.0


def parse_segments(pattern: str) -> list[int]:
    """``'-1,113,113,113,-1'`` -> ``[-1, 113, 113, 113, -1]`` (-1 = frozen segment)."""
    try:
        vals = [int(v) for v in str(pattern).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise MidblockError(
            f"cannot parse segments '{pattern}'", hint="write one rank per segment, -1 for frozen: -1,113,113,113,-1"
        ) from None
    if not vals:
        raise MidblockError("segments pattern is empty", hint="e.g. -1,113,113,113,-1")
    bad = [v for v in vals if v == 0 or v < -1]
    if bad:
        raise MidblockError(
            f"segments '{pattern}' holds rank {bad[0]}", hint="each entry is a rank >= 1 or -1 (frozen)"
        )
    if all(v == -1 for v in vals):
        raise MidblockError(f"segments '{pattern}' freezes every segment", hint="give at least one segment a rank")
    return vals


@dataclass
class MidBlockConfig:
    """What to train. ``method`` picks the family; the other fields refine it."""

    method: Method = field(
        default="midblock",
        metadata={
            "help": "lora (all blocks) | midblock (LoRA on the band) | midblock-full (full params of the band) | "
            "full | freeze (full params except first/last N blocks) | segments (per-segment ranks)"
        },
    )
    band: str = field(
        default=PAPER_BAND,
        metadata={
            "help": "what midblock / midblock-full train: a band spec (seg2-4/5, 0.2:0.8, 6-23...), 'auto' with "
            "--analysis, or a selection strategy: spectrum:P, cka-select:F, lisa:G/K; midblock puts LoRA on the "
            "selection, midblock-full trains it in full (there spectrum and lisa train embeddings and head too, "
            "':blocks' keeps them frozen)"
        },
    )
    analysis: str | None = field(
        default=None, metadata={"help": "analysis directory whose results.json recommends the band for band='auto'"}
    )
    rank: int = field(default=8, metadata={"help": "LoRA rank r (for segments: the reference rank of the alpha ratio)"})
    alpha: float | None = field(
        default=None,
        metadata={"help": "lora_alpha; default: 2r (constant-ratio), 128 (fixed, the paper's), 16 (rslora)"},
    )
    alpha_policy: AlphaPolicy = field(
        default="constant-ratio",
        metadata={
            "help": "constant-ratio: alpha/r equal across ranks and arms; fixed: one alpha for every rank; "
            "rslora: scaling alpha/sqrt(r)"
        },
    )
    budget_baseline_rank: int | None = field(
        default=None,
        metadata={
            "help": "set the band's rank so it matches all-block LoRA of this rank (see budget_by)",
            "flag": "--match-rank-of",
        },
    )
    budget_by: BudgetRule = field(default="rank-units", metadata={"help": "rank-units (the paper's rule) or params"})
    param_budget: int | None = field(
        default=None,
        metadata={
            "help": "spectrum / lisa with midblock-full: trainable block parameters per step to match; P "
            "(matrices per type) or G (blocks) becomes the largest that fits (--match-rank-of R instead matches "
            "all-block LoRA at rank R); embeddings and head are outside the budget"
        },
    )
    target_modules: tuple[str, ...] = field(
        default=("attn",),
        metadata={
            "help": "module names relative to a block (q_proj, self_attn.o_proj, c_attn...) or groups "
            "attn | mlp | all-linear; default: the paper's q,k,v,o = the attention projections",
            "flag": "--targets",
        },
    )
    segments: str | None = field(default=None, metadata={"help": "per-segment ranks, e.g. -1,113,113,113,-1"})
    freeze_first: int = field(default=0, metadata={"help": "freeze method: blocks frozen at the bottom"})
    freeze_last: int = field(default=0, metadata={"help": "freeze method: blocks frozen at the top"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "non-reentrant checkpointing of the band and the blocks above it",
            "flag": "--grad-checkpointing",
        },
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MidblockError(f"unknown method '{self.method}'", hint="choose one of " + ", ".join(METHODS))
        if self.alpha_policy not in ALPHA_POLICIES:
            raise MidblockError(
                f"unknown alpha policy '{self.alpha_policy}'", hint="choose one of " + ", ".join(ALPHA_POLICIES)
            )
        if self.budget_by not in ("rank-units", "params"):
            raise MidblockError(f"unknown budget rule '{self.budget_by}'", hint="use rank-units or params")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise MidblockError(f"rank must be a positive integer, got {self.rank!r}", hint="e.g. --rank 8")
        if self.budget_baseline_rank is not None and self.budget_baseline_rank <= 0:
            raise MidblockError(f"budget baseline rank must be positive, got {self.budget_baseline_rank}")
        if self.param_budget is not None:
            if isinstance(self.param_budget, bool) or not isinstance(self.param_budget, int) or self.param_budget < 1:
                raise MidblockError(f"param budget must be a positive integer, got {self.param_budget!r}")
            if self.method != "midblock-full" or not param_sized(self.band):
                raise MidblockError(
                    "--param-budget applies to spectrum and lisa bands with --method midblock-full",
                    hint="e.g. --method midblock-full --band lisa:2/20; LoRA arms match --match-rank-of R",
                )
        if self.alpha is not None:
            check_number("alpha", self.alpha, low=0, low_open=True)
        check_number("dropout", self.dropout, low=0, high=1, high_open=True)
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(t for t in self.target_modules.replace(" ", "").split(",") if t)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules and self.method in LORA_METHODS:
            raise MidblockError("no target modules given", hint="use e.g. attn, mlp, all-linear or q_proj,v_proj")
        if not isinstance(self.band, str) or not self.band.strip():
            raise MidblockError("band spec is empty", hint="use e.g. seg2-4/5, 6-23 or auto with --analysis DIR")
        if self.band == "auto" and not self.analysis:
            raise MidblockError(
                "band 'auto' needs an analysis", hint="pass --analysis DIR (a `midblock analyze` output)"
            )
        if self.method in ("midblock", "midblock-full"):
            check_spec(self.band)  # a strategy's argument; band indices are checked against the model later
        if self.method == "segments":
            if not self.segments:
                raise MidblockError("method segments needs a pattern", hint="e.g. --segments -1,113,113,113,-1")
            parse_segments(self.segments)
        elif self.segments:
            raise MidblockError(f"--segments only applies to method segments, not {self.method}")
        if self.freeze_first < 0 or self.freeze_last < 0:
            raise MidblockError("freeze_first / freeze_last must be >= 0")
        if self.method == "freeze" and self.freeze_first == 0 and self.freeze_last == 0:
            raise MidblockError("method freeze needs --freeze-first and/or --freeze-last", hint="or use method full")
        check_float_fields(self)

    # ------------------------------------------------------------------ derived values

    @property
    def is_lora(self) -> bool:
        return self.method in LORA_METHODS

    def resolved_band_spec(self) -> str:
        """The band spec after ``auto`` is looked up in the analysis (``results.json: recommended_band.spec``)."""
        if self.band != "auto":
            return self.band
        from midblock.selection.bands import recommended_spec

        return recommended_spec(self.analysis)

    def alpha_for(self, rank: int) -> float:
        """lora_alpha used at ``rank`` under the alpha policy."""
        if self.alpha_policy == "constant-ratio":
            ratio = (self.alpha / self.rank) if self.alpha is not None else DEFAULT_RATIO
            return ratio * rank
        if self.alpha_policy == "fixed":
            return self.alpha if self.alpha is not None else PAPER_ALPHA
        return self.alpha if self.alpha is not None else RSLORA_ALPHA

    def scaling_for(self, rank: int) -> float:
        """LoRA's multiplier of BA: alpha/r, or alpha/sqrt(r) for rslora."""
        return lora_scaling(self.alpha_for(rank), rank, rslora=self.alpha_policy == "rslora")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MidBlockConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "target_modules" in known and isinstance(known["target_modules"], list):
            known["target_modules"] = tuple(known["target_modules"])
        return cls(**known)
