"""The settings of the surgery grids and of the early-exit run (light: the command line builds its options
from them without torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from midblock.aliases import accepts_old_names
from midblock.data.tasks import TASKS
from midblock.errors import MidblockError
from midblock.evaluation.config import EVAL_TASKS, PROTOCOLS
from midblock.validation import check_number

DIRECTIONS = ("into-base", "into-variant")


@accepts_old_names
@dataclass
class SurgeryConfig:
    """What both grids share: the two models, how to measure, where to write."""

    base: str = field(metadata={"help": "base model spec (smollm2-135m, random:<preset>, a directory...)"})
    variant: str = field(metadata={"help": "the tuned model: HF dir, midblock train run, BASE+ADAPTER, random:..."})
    out: str = field(metadata={"help": "output (run) directory; report.html gets a section"})
    task: str | None = field(
        default=None, metadata={"help": "measure task accuracy (Wilson 95% intervals)", "choices": tuple(EVAL_TASKS)}
    )
    protocol: str = field(default="original", metadata={"help": f"evaluation protocol ({', '.join(PROTOCOLS)})"})
    eval_items: int | None = field(default=20, metadata={"help": "test items scored per configuration"})
    data: str | None = field(default=None, metadata={"help": "GSM8K directory/file for --task gsm8k"})
    corpus: str | None = field(
        default=None, metadata={"help": "text (.txt, blank-line separated) or .jsonl corpus for token loss/perplexity"}
    )
    corpus_limit: int | None = field(default=None, metadata={"help": "use at most this many corpus texts"})
    batch_size: int = field(default=8, metadata={"help": "batch size of generation and scoring"})
    max_length: int = field(default=512, metadata={"help": "tokens per corpus text (longer ones are cut)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "override the protocol's token limit"})
    seed: int = field(default=0, metadata={"help": "seed of a random: base"})
    variant_seed: int | None = field(default=None, metadata={"help": "seed of a random: variant (default seed+1)"})

    def __post_init__(self) -> None:
        if self.eval_items is not None:
            check_number("--eval-items", self.eval_items, low=1)
        check_number("--batch-size", self.batch_size, low=1)
        if self.task is not None:
            EVAL_TASKS.lookup(self.task)
        if self.variant_seed is None:
            self.variant_seed = self.seed + 1


@accepts_old_names
@dataclass
class SwapConfig(SurgeryConfig):
    segments: int | None = field(default=None, metadata={"help": "one configuration per segment of K"})
    bands: list[str] | None = field(
        default=None, metadata={"help": "one configuration per layer spec (6-23, seg2-4/5...)", "nargs": "+"}
    )
    with_head: bool = field(default=False, metadata={"help": "swap the final norm and LM head too"})
    direction: Literal["into-base", "into-variant"] = field(
        default="into-base", metadata={"help": "which way the blocks move"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction not in DIRECTIONS:
            raise MidblockError(f"unknown direction '{self.direction}'", hint="use into-base or into-variant")
        if (self.segments is None) == (not self.bands):
            raise MidblockError("give exactly one of --segments K or --bands SPEC [SPEC ...]")
        if self.segments is not None:
            check_number("--segments", self.segments, low=1)


@accepts_old_names
@dataclass
class InterpolateConfig(SurgeryConfig):
    weights: list[str] = field(
        default_factory=lambda: ["0,1,1,1,0"],
        metadata={
            "help": "a per segment (K = number of values), e.g. 0,1,1,1,0; repeat for several",
            "flag": "--weights",
            "repeat": True,
        },
    )
    extrapolate: bool = field(default=False, metadata={"help": "allow weights outside [0, 1]"})
    save: str | None = field(default=None, metadata={"help": "write the first --weights model to this directory"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.weights:
            raise MidblockError("give at least one --weights list")
        for w in self.weights:
            parse_weights(w, self.extrapolate)


@dataclass
class EarlyExitConfig:
    """Early exit / logit lens of base and variant on one task's texts."""

    base: str = field(metadata={"help": "base model spec"})
    variant: str = field(metadata={"help": "tuned model spec (HF dir, run dir, BASE+ADAPTER, random:...)"})
    out: str = field(metadata={"help": "output (run) directory"})
    task: str | None = field(
        default=None, metadata={"help": "task of the texts (default: from --data)", "choices": tuple(TASKS)}
    )
    data: str | None = field(default=None, metadata={"help": "data file or directory"})
    split: str = field(default="test", metadata={"help": "which split's examples"})
    samples: int = field(default=50, metadata={"help": "number of examples"})
    batch_size: int = field(default=8, metadata={"help": "examples per forward pass"})
    max_length: int = field(default=256, metadata={"help": "tokens per text (longer texts are cut)"})
    seed: int = field(default=0, metadata={"help": "seed of a random: base"})
    variant_seed: int | None = field(default=None, metadata={"help": "seed of a random: variant (default seed+1)"})

    def __post_init__(self) -> None:
        check_number("--samples", self.samples, low=1)
        check_number("--batch-size", self.batch_size, low=1)
        check_number("--max-length", self.max_length, low=2)
        if self.variant_seed is None:
            self.variant_seed = self.seed + 1


def parse_weights(text: str, extrapolate: bool = False) -> list[float]:
    """``'0,1,1,1,0'`` -> [0.0, 1.0, 1.0, 1.0, 0.0]; outside [0, 1] only with ``extrapolate``."""
    try:
        out = [float(x) for x in str(text).split(",")]
    except ValueError:
        raise MidblockError(
            f"cannot parse weights '{text}'", hint="use comma-separated numbers, e.g. 0,1,1,1,0"
        ) from None
    if not out or any(not math.isfinite(a) for a in out):
        raise MidblockError(f"weights '{text}' must be finite numbers", hint="e.g. 0,1,1,1,0")
    if not extrapolate and any(not 0.0 <= a <= 1.0 for a in out):
        raise MidblockError(f"weights '{text}' leave [0, 1]", hint="pass --extrapolate to allow that")
    return out
