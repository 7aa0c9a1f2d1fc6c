"""What an analysis is: the metric families and ``AnalyzeConfig`` (light: no torch, so the command line can
build its options without loading a model library)."""

from __future__ import annotations

from dataclasses import dataclass, field

from midblock.data.tasks import builtin_tasks
from midblock.errors import MidblockError
from midblock.registry import Registry
from midblock.validation import check_float_fields, check_number


@dataclass(frozen=True)
class MetricFamily:
    """A metric family ``--metrics`` names: the CSV metrics it writes (definitions: ``docs/metrics.md``)."""

    metrics: tuple[str, ...]
    opt_in: bool = False  # costly: runs only when asked for by name (or with --metrics all)
    pooled: bool = False  # computed from the pooled (one vector per sample) states
    doc: str = field(default="", compare=False, repr=False)


# metric family (what --metrics accepts) -> the metric names it writes, in the order `all` lists them
FAMILIES: Registry[MetricFamily] = Registry("metric")


def _family(name: str, metrics: tuple[str, ...], doc: str, *, opt_in: bool = False, pooled: bool = False) -> None:
    FAMILIES.register(name, MetricFamily(metrics, opt_in, pooled, doc))


_family("prompt_entropy", ("prompt_entropy",), "Per sample: Renyi entropy of the token Gram matrix, normalised.")
# opt-in: the centred prompt entropy doubles the eigensolves of the hooks
_family(
    "prompt_entropy_centered",
    ("prompt_entropy_centered",),
    "The prompt entropy after subtracting each sample's mean token (opt-in).",
    opt_in=True,
)
_family("dataset_entropy", ("dataset_entropy",), "Entropy of the pooled rows' Gram matrix, normalised.", pooled=True)
_family(
    "effective_rank",
    ("effective_rank", "rankme"),
    "Effective rank of the pooled rows (paper's form and RankMe).",
    pooled=True,
)
_family("curvature", ("curvature",), "Per sample: mean turning angle between consecutive token steps.")
_family("sparsity", ("sparsity",), "Per sample: fraction of near-zero entries of the hidden states.")
_family("l2_norm", ("l2_norm", "token_norm"), "Mean norm of the pooled vectors and of the token rows.", pooled=True)
_family(
    "spectral",
    ("s_max", "condition_number", "rank_deficiency"),
    "Largest singular value, condition number and rank deficiency of the pooled rows.",
    pooled=True,
)
_family(
    "cka",
    ("cka", "cka_unbiased", "cka_consecutive"),
    "Linear CKA of the pooled rows: base vs variant, and between consecutive layers.",
    pooled=True,
)
# opt-in: token CKA keeps 3 D x D matrices per layer
_family(
    "cka_token",
    ("cka_token", "cka_token_unbiased"),
    "Linear CKA over every real token, base vs variant, from streamed moments (opt-in).",
    opt_in=True,
)
_family("cosine", ("cosine",), "Mean cosine of each sample's pooled vector, base vs variant.", pooled=True)
_family(
    "mean_shift",
    ("mean_shift", "mean_shift_rel"),
    "Norm of the shift of the pooled mean, base to variant (and relative).",
    pooled=True,
)
_family(
    "change_intensity",
    ("change_intensity",),
    "Mean norm of each sample's pooled change, base to variant.",
    pooled=True,
)
# opt-in: the logit lens runs the V-wide LM head at every layer (31 x for SmolLM2)
_family(
    "logit_lens",
    ("logit_ce", "logit_top1_agreement", "logit_kl"),
    "Each layer through the final norm and LM head: next-token CE, top-1 agreement and KL (opt-in).",
    opt_in=True,
)
_family(
    "weight_delta",
    (
        "weight_delta",
        "weight_delta_rel",
        "weight_delta_attn",
        "weight_delta_attn_rel",
        "weight_delta_mlp",
        "weight_delta_mlp_rel",
    ),
    "Norm of each block's weight change, base to variant (all, attention, MLP; and relative).",
)
_family(
    "lora_delta",
    (
        "lora_delta",
        "lora_delta_rel",
        "lora_delta_attn",
        "lora_delta_attn_rel",
        "lora_delta_mlp",
        "lora_delta_mlp_rel",
    ),
    "Norm of a LoRA variant's scaled B A per block, without forming the change.",
)
_family("grad_norm", ("grad_norm", "grad_norm_rel"), "Base only: norm of each block's loss gradient (and relative).")

OPT_IN = tuple(f for f, fam in FAMILIES.items() if fam.opt_in)
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
        metadata={"help": ", ".join(builtin_tasks()) + " or FILE.jsonl; repeatable", "flag": "--data", "repeat": True},
    )
    samples: int = field(default=200, metadata={"help": "samples per dataset"})
    max_length: int = field(default=128, metadata={"help": "tokens per sample (longer texts are truncated)"})
    layers: str = field(
        default="all", metadata={"help": "layer indices 0..L to analyse (0 = embedding output); any band spec"}
    )
    metrics: list[str] = field(
        default_factory=lambda: list(DEFAULT_METRICS),
        metadata={
            "help": "comma list of metric families ("
            + ", ".join(FAMILIES)
            + "), 'default' (all but "
            + ", ".join(OPT_IN)
            + ") or 'all' (see docs/metrics.md; default: default)"
        },
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
            owner = next((f for f, fam in FAMILIES.items() if m in fam.metrics), None)
            if owner is None:
                raise FAMILIES.unknown(m, also=("default", "all"))
            raise MidblockError(f"unknown metric '{m}'", hint=f"'{m}' is written by family '{owner}'")
    if not out:
        raise MidblockError("no metric selected", hint="--metrics all")
    return list(dict.fromkeys(out))
