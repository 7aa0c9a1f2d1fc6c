"""What an analysis is: the metric families and ``AnalyzeConfig`` (light: no torch, so the command line can
build its options without loading a model library)."""

from __future__ import annotations

from dataclasses import dataclass, field

from midblock.errors import MidblockError
from midblock.validation import check_float_fields, check_number

# metric family (what --metrics accepts) -> the metric names it writes
FAMILIES: dict[str, tuple[str, ...]] = {
    "prompt_entropy": ("prompt_entropy",),
    "prompt_entropy_centered": ("prompt_entropy_centered",),
    "dataset_entropy": ("dataset_entropy",),
    "effective_rank": ("effective_rank", "rankme"),
    "curvature": ("curvature",),
    "sparsity": ("sparsity",),
    "l2_norm": ("l2_norm", "token_norm"),
    "spectral": ("s_max", "condition_number", "rank_deficiency"),
    "cka": ("cka", "cka_unbiased", "cka_consecutive"),
    "cka_token": ("cka_token", "cka_token_unbiased"),
    "cosine": ("cosine",),
    "mean_shift": ("mean_shift", "mean_shift_rel"),
    "change_intensity": ("change_intensity",),
    "logit_lens": ("logit_ce", "logit_top1_agreement", "logit_kl"),
    "weight_delta": (
        "weight_delta",
        "weight_delta_rel",
        "weight_delta_attn",
        "weight_delta_attn_rel",
        "weight_delta_mlp",
        "weight_delta_mlp_rel",
    ),
    "lora_delta": (
        "lora_delta",
        "lora_delta_rel",
        "lora_delta_attn",
        "lora_delta_attn_rel",
        "lora_delta_mlp",
        "lora_delta_mlp_rel",
    ),
    "grad_norm": ("grad_norm", "grad_norm_rel"),
}
# Costly families that run only when asked for (or with --metrics all): token CKA keeps 3 D x D
# matrices per layer; the logit lens runs the V-wide LM head at every layer (31 x for SmolLM2); the
# centred prompt entropy doubles the eigensolves of the hooks.
OPT_IN = ("cka_token", "logit_lens", "prompt_entropy_centered")
DEFAULT_METRICS = tuple(f for f in FAMILIES if f not in OPT_IN)


@dataclass
class AnalyzeConfig:
    """Settings of one analysis run (everything that changes the numbers is in the fingerprint)."""

    base: str = field(metadata={"help": "base model spec (smollm2-135m, random:<preset>, a directory...)"})
    variants: list[str] = field(
        default_factory=list,
        metadata={
            "help": "variant model spec (a tuned model, BASE+ADAPTER, a midblock train run dir); repeatable",
            "flag": "--variant",
            "repeat": True,
        },
    )
    names: list[str] = field(
        default_factory=list,
        metadata={
            "help": "the variants' names in tables and figures, one per --variant in order (default: from their "
            "paths); repeatable",
            "flag": "--name",
            "repeat": True,
        },
    )
    datasets: list[str] = field(
        default_factory=lambda: ["gsm8k"],
        metadata={"help": "gsm8k, arith or FILE.jsonl; repeatable", "flag": "--data", "repeat": True},
    )
    samples: int = field(default=200, metadata={"help": "samples per dataset"})
    max_length: int = field(default=128, metadata={"help": "tokens per sample (longer texts are truncated)"})
    layers: str = field(
        default="all", metadata={"help": "layer indices 0..L to analyse (0 = embedding output); any band spec"}
    )
    metrics: list[str] = field(
        default_factory=lambda: list(DEFAULT_METRICS),
        metadata={"help": "comma list of metric families, 'default' or 'all' (see docs/metrics.md; default: default)"},
    )
    batch_size: int = field(default=8, metadata={"help": "samples per forward"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ..."})
    dtype: str = field(default="fp32", metadata={"help": "fp32, bf16 or fp16 model weights"})
    split: str = field(default="test", metadata={"help": "dataset split analysed"})
    padding_side: str = field(default="right", metadata={"help": "right or left (results do not depend on it)"})
    alpha: float = field(default=1.0, metadata={"help": "Renyi entropy order"})
    grad_batches: int = field(default=4, metadata={"help": "batches of the analysed data averaged for grad_norm"})
    seed: int = field(default=0, metadata={"help": "seed of random presets and data generation"})
    device_map: str | None = field(
        default=None, metadata={"help": "from_pretrained device_map, e.g. 'auto' to spread a big model (accelerate)"}
    )
    sequential: bool = field(
        default=False,
        metadata={
            "help": "keep one model in memory: the base over all batches first (what the paired metrics need is "
            "spilled to OUT/cache/spill, deleted on success), then each variant; the same results as lockstep",
            "aliases": ("--one-model-at-a-time",),
        },
    )

    def __post_init__(self) -> None:
        if not self.variants and not self.base:
            raise MidblockError("analyze needs a base model")
        check_number("--samples", self.samples, low=1)
        check_number("--max-length", self.max_length, low=2)
        check_number("--batch-size", self.batch_size, low=1)
        if self.padding_side not in ("left", "right"):
            raise MidblockError(f"padding side must be left or right, got {self.padding_side!r}")
        if self.dtype not in ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16"):
            raise MidblockError(f"unknown dtype '{self.dtype}'", hint="use fp32, bf16 or fp16")
        check_number("--grad-batches", self.grad_batches, low=1)
        check_number("Renyi alpha", self.alpha, low=0, low_open=True)
        if not self.datasets:
            raise MidblockError("analyze needs at least one dataset", hint="--data gsm8k")
        if self.device_map and self.device:
            raise MidblockError("--device and --device-map exclude each other", hint="pass only one of them")
        if self.names and len(self.names) != len(self.variants):
            raise MidblockError(
                f"{len(self.names)} --name for {len(self.variants)} --variant", hint="give one name per variant"
            )
        bad = [n for n in self.names if not n or n == "base" or "," in n]
        if bad or len(set(self.names)) != len(self.names):
            raise MidblockError(
                f"variant names must be distinct, non-empty, without commas and not 'base': {self.names}"
            )
        self.metrics = parse_metrics(self.metrics)
        check_float_fields(self)


def parse_metrics(metrics: str | list[str] | None) -> list[str]:
    """Metric families from a list or comma string; ``all`` = every family, ``default`` = the default set."""
    if metrics is None:
        return list(DEFAULT_METRICS)
    items = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    out: list[str] = []
    for m in items:
        if m == "all":
            out.extend(FAMILIES)
        elif m == "default":
            out.extend(DEFAULT_METRICS)
        elif m in FAMILIES:
            out.append(m)
        else:
            owner = next((f for f, names in FAMILIES.items() if m in names), None)
            hint = f"'{m}' is written by family '{owner}'" if owner else "choose from all, " + ", ".join(FAMILIES)
            raise MidblockError(f"unknown metric '{m}'", hint=hint)
    if not out:
        raise MidblockError("no metric selected", hint="--metrics all")
    return list(dict.fromkeys(out))
