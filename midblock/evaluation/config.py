"""What an evaluation is: the protocols, the decoding knobs and ``EvalConfig`` (light: no torch, so the
command line can build its options without loading a model library)."""

from __future__ import annotations

from dataclasses import dataclass, field

from midblock.aliases import accepts_old_names
from midblock.data.tasks import TASKS, has_own_dev
from midblock.errors import MidblockError
from midblock.evaluation.prompts import DEFAULT_SAMPLING, FEWSHOT_SEED, SAMPLING
from midblock.registry import Registry
from midblock.validation import check_number


@dataclass
class DecodeConfig:
    """How to decode: greedy always; these are the knobs a protocol sets."""

    max_new_tokens: int = field(default=256, metadata={"help": "most tokens generated per item"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "stop strings; the completion is cut at the first"})
    batch_size: int = field(default=16, metadata={"help": "prompts decoded together"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar with items/s"})
    prefix_cache: bool = field(
        default=True,
        metadata={"help": "compute the KV cache of the token prefix every prompt shares (few-shot exemplars) once"},
    )
    min_prefix: int = field(default=16, metadata={"help": "shortest shared prefix worth caching, in tokens"})
    engine: str = field(
        default="loop",
        metadata={
            "help": "loop: our greedy loop that drops finished rows from the batch and its KV cache; "
            "generate: transformers' generate with the StopOnStrings criterion (finished rows ride along)"
        },
    )

    def __post_init__(self) -> None:
        check_number("max_new_tokens", self.max_new_tokens, low=1)
        check_number("--batch-size", self.batch_size, low=1)
        self.stop = tuple(s for s in self.stop if s)
        if self.engine not in ("loop", "generate"):
            raise MidblockError(f"unknown decoding engine '{self.engine}'", hint="use loop or generate")


# The tasks `midblock eval` scores: the registered tasks whose rows carry a '#### N' gold answer
EVAL_TASKS: Registry = TASKS.subset("task", lambda t: t.scored)
HARNESS_STOPS = ("Question:", "</s>", "<|im_end|>")


@dataclass(frozen=True)
class Protocol:
    """How a protocol prompts, decodes and scores; ``primary``: the extractors it reports."""

    num_fewshot: int
    max_new_tokens: int
    stop: tuple[str, ...]
    primary: tuple[str, ...]
    doc: str = field(default="", compare=False, repr=False)


# name -> Protocol (``--protocol``); every extractor is recorded under every protocol, ``primary`` is its own
PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.register(
    "lm-eval",
    Protocol(
        num_fewshot=5,
        max_new_tokens=256,
        stop=HARNESS_STOPS,
        primary=("strict-match", "flexible-extract"),
        doc="lm-evaluation-harness gsm8k: 5-shot with the harness's own exemplar draw per item, 256 new tokens, "
        "its stop strings; scored strict-match and flexible-extract.",
    ),
)
PROTOCOLS.register(
    "paper",
    Protocol(
        num_fewshot=0,
        max_new_tokens=64,
        stop=(),
        primary=("paper",),
        doc="The paper's reference code: zero-shot, 64 new tokens, no stop strings; the last number, compared "
        "as a float.",
    ),
)
PROTOCOLS.register(
    "original",
    Protocol(
        num_fewshot=0,
        max_new_tokens=256,
        stop=HARNESS_STOPS,
        primary=("original",),
        doc="openai/grade-school-math's scorer on zero-shot Question/Answer prompts (the format `midblock "
        "train` fine-tunes on), 256 new tokens and the harness's stop strings; the first #### N.",
    ),
)


@accepts_old_names
@dataclass(kw_only=True)
class EvalConfig:
    """What to evaluate and how; validated on construction, before any model is loaded."""

    task: str = field(default="gsm8k", metadata={"help": " or ".join(EVAL_TASKS)})
    split: str = field(
        default="test",
        metadata={
            "help": "test, or dev for tuning settings (arith: its own dev split; gsm8k: --dev-size rows carved "
            "from train)"
        },
    )
    dev_size: int = field(
        default=0,
        metadata={
            "help": "gsm8k --split dev: the dev split is this many train rows chosen by content hash (as "
            "`train --dev-size` holds them out); its few-shot exemplars come from the rest of train"
        },
    )
    protocol: str = field(default="lm-eval", metadata={"help": ", ".join(PROTOCOLS)})
    eval_items: int | None = field(
        default=None, metadata={"help": "score at most this many items (--task ppl: texts) (default: all)"}
    )
    offset: int = field(default=0, metadata={"help": "skip this many test items first"})
    chat_template: bool = field(default=False, metadata={"help": "wrap prompts in the tokenizer's chat template"})
    batch_size: int = field(default=16, metadata={"help": "prompts decoded together"})
    seed: int = field(default=FEWSHOT_SEED, metadata={"help": "seed of the few-shot exemplar sampler"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "override the protocol's token limit"})
    num_fewshot: int | None = field(default=None, metadata={"help": "override the protocol's number of shots"})
    data: str | None = field(default=None, metadata={"help": "GSM8K directory/file (default: $MIDBLOCK_GSM8K)"})
    fewshot_sampling: str = field(
        default=DEFAULT_SAMPLING,
        metadata={
            "help": "lm-eval: the harness's own draw per item; fixed: one draw shared by all items (fast); "
            "per-item: a draw per item seeded by (seed, index)"
        },
    )
    backend: str = field(default="hf", metadata={"help": "hf (transformers generate) or vllm"})

    def __post_init__(self) -> None:
        EVAL_TASKS.lookup(self.task, also=("ppl",))
        if self.split not in ("test", "dev"):
            raise MidblockError(f"unknown evaluation split '{self.split}'", hint="use test or dev")
        check_number("--dev-size", self.dev_size, low=0)
        if self.split == "dev" and not has_own_dev(self.task) and self.dev_size < 1:
            raise MidblockError(
                f"{self.task} has no dev split of its own", hint="pass --dev-size N (rows carved from train)"
            )
        PROTOCOLS.lookup(self.protocol)
        if self.eval_items is not None:
            check_number("--eval-items", self.eval_items, low=1, hint="omit it to evaluate every item")
        check_number("--offset", self.offset, low=0)
        check_number("--batch-size", self.batch_size, low=1)
        if self.max_new_tokens is not None:
            check_number("max_new_tokens", self.max_new_tokens, low=1)
        if self.num_fewshot is not None:
            check_number("num_fewshot", self.num_fewshot, low=0)
        if self.fewshot_sampling not in SAMPLING:
            raise MidblockError(
                f"unknown few-shot sampling '{self.fewshot_sampling}'", hint="use one of " + ", ".join(SAMPLING)
            )
        if self.backend not in ("hf", "vllm"):
            raise MidblockError(f"unknown backend '{self.backend}'", hint="use hf or vllm")

    @property
    def train_dev_size(self) -> int:
        """Rows held out of train for this evaluation: the dev split's, when it is the one scored."""
        return self.dev_size if self.split == "dev" else 0

    @property
    def spec(self) -> Protocol:
        return PROTOCOLS[self.protocol]

    def decode_config(self, progress: bool = True) -> DecodeConfig:
        p = self.spec
        return DecodeConfig(
            max_new_tokens=self.max_new_tokens or p.max_new_tokens,
            stop=p.stop,
            batch_size=self.batch_size,
            progress=progress,
        )

    @property
    def shots(self) -> int:
        return self.spec.num_fewshot if self.num_fewshot is None else self.num_fewshot
