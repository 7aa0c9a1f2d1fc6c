"""``TrainConfig`` / ``TrainResult``: the arguments and the outcome of :func:`midblock.tuning.train.train`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from midblock.aliases import accepts_old_names, renamed, stored
from midblock.data.tasks import TASKS
from midblock.errors import MidblockError
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.monitorconfig import MonitorConfig
from midblock.validation import SEED_LIMIT, check_float_fields, check_number

Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "fp32", "bf16"]
Overlong = Literal["drop", "error", "truncate"]
LossOn = Literal["completion", "all"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)
# Fields that may change between a run and its --resume (everything else must match).
# The per-layer monitor only reads the model (eval mode, no gradient, no random numbers): not part of the run.
RUN_CONTROL = ("out", "resume", "progress", "save_every", "eval_every", "log_every", "monitor")


def without_run_control(settings: dict[str, Any]) -> dict[str, Any]:
    """Training settings (a whole config or a grid's partial overrides) less run control: what keys a run."""
    return {k: v for k, v in settings.items() if k not in RUN_CONTROL}


@accepts_old_names
@dataclass
class TrainConfig:
    """Everything a training run needs. ``tuning`` says what to train; the rest says how."""

    model: str = field(default="smollm2-135m", metadata={"help": "model spec (load_model)"})
    out: str | None = field(default=None, metadata={"help": "run directory (required)"})
    task: str | None = field(default=None, metadata={"help": " | ".join(TASKS) + " (default from --data)"})
    data: str | None = field(default=None, metadata={"help": "data file or directory for the task"})
    train_rows: int | None = field(default=None, metadata={"help": "use only the first N training rows"})
    dev_size: int = field(
        default=0,
        metadata={
            "help": "gsm8k/jsonl: hold out this many train rows as the dev split (chosen by content hash); "
            "training never sees them. arith has a dev split of its own"
        },
    )
    tuning: MidBlockConfig = field(default_factory=MidBlockConfig, metadata={"help": "what to train"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (default 1e-3 LoRA, 2e-5 full)"})
    schedule: Schedule = field(default="linear", metadata={"help": "learning-rate schedule after the warmup"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps", "flag": "--warmup"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides epochs)"})
    epochs: float | None = field(default=None, metadata={"help": "passes over the data (default 1 if no steps)"})
    batch_size: int = field(default=8, metadata={"help": "examples per process per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_length: int = field(default=512, metadata={"help": "longest example in tokens (see --overlong)"})
    overlong: Overlong = field(
        default="drop",
        metadata={
            "help": "an example over --max-length: drop (and report it), error, or truncate (the paper's "
            "protocol; a cut GSM8K solution loses its #### line)"
        },
    )
    loss_on: LossOn = field(
        default="completion",
        metadata={"help": "tokens the loss is taken over: completion (the answer) or all (prompt and answer)"},
    )
    seed: int = field(default=0, metadata={"help": "data order and LoRA init (random presets keep seed-0 weights)"})
    precision: Precision = field(
        default="auto",
        metadata={
            "help": "auto: bf16 autocast where the hardware has bf16 (a GPU, or a CPU with avx512_bf16/AMX), "
            "fp32 elsewhere; bf16 autocasts anyway (emulated, ~30x slower, on other CPUs)"
        },
    )
    labelled_head: bool = field(
        default=True,
        metadata={
            "help": "the LM head runs only at labelled positions (the default); --no-labelled-head runs it at "
            "every position (slower)"
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    eval_every: int = field(default=0, metadata={"help": "evaluation loss every N steps (0 = only at the end)"})
    eval_loss_items: int = field(default=64, metadata={"help": "examples in the evaluation-loss set"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only when stopped)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in --out from its last checkpoint"})
    log_every: int = field(default=1, metadata={"help": "write a log line every N steps"})
    progress: bool = field(default=True, metadata={"help": "hide the progress bar", "flag": "--no-progress"})
    monitor: MonitorConfig = field(
        default_factory=MonitorConfig, metadata={"help": "the per-layer monitor (monitor.jsonl, TensorBoard)"}
    )
    fsdp: bool = field(
        default=False,
        metadata={"help": "shard with FSDP (fully_shard per block); also on under an accelerate FSDP config"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.tuning, dict):
            self.tuning = MidBlockConfig.from_dict(self.tuning)
        if isinstance(self.monitor, dict):
            self.monitor = MonitorConfig.from_dict(self.monitor)
        if not self.out:
            raise MidblockError("a training run needs an output directory", hint="pass --out DIR")
        if self.schedule not in SCHEDULES:
            raise MidblockError(f"unknown schedule '{self.schedule}'", hint="use " + ", ".join(SCHEDULES))
        if self.overlong not in get_args(Overlong):
            raise MidblockError(f"unknown --overlong '{self.overlong}'", hint="use drop, error or truncate")
        if self.loss_on not in get_args(LossOn):
            raise MidblockError(f"unknown --loss-on '{self.loss_on}'", hint="use completion or all")
        if self.precision not in PRECISIONS:
            raise MidblockError(f"unknown precision '{self.precision}'", hint="use " + ", ".join(PRECISIONS))
        for name in ("batch_size", "grad_accum", "max_length", "log_every"):
            if getattr(self, name) < 1:
                raise MidblockError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "eval_loss_items"):
            if getattr(self, name) < 0:
                raise MidblockError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise MidblockError(f"steps must be >= 1, got {self.steps}")
        # inf/nan pass a plain `<= 0` test; check_number refuses them before the run directory exists
        if self.epochs is not None:
            check_number("--epochs", self.epochs, low=0, low_open=True)
        if self.lr is not None:
            check_number("learning rate (--lr)", self.lr, low=0, low_open=True, hint="e.g. --lr 1e-4")
        check_number("--weight-decay", self.weight_decay, low=0)
        check_number("--max-grad-norm", self.max_grad_norm, low=0, hint="0 turns clipping off")
        if self.train_rows is not None and self.train_rows < 1:
            raise MidblockError(f"train_rows must be >= 1, got {self.train_rows}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise MidblockError(f"--seed must be an integer in [0, {SEED_LIMIT - 1}], got {self.seed!r}")
        check_number("--dev-size", self.dev_size, low=0, hint="0: no dev split is held out")
        check_float_fields(self)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.tuning.is_lora else 2e-5)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tuning"] = self.tuning.to_dict()
        d["monitor"] = self.monitor.to_dict()
        return d

    def fingerprint(self) -> dict[str, Any]:
        """What must be equal for ``--resume`` to continue the same run, in the spelling runs were first keyed
        under (``limit``, ``head_at_labels``, ``eval_limit``: see :mod:`midblock.aliases`)."""
        return stored(without_run_control(self.to_dict()), TrainConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, warn: bool = True) -> TrainConfig:
        """From a dict; old setting names work (one warning each unless ``warn`` is False: a saved file)."""
        d = renamed(d, cls, warn=warn)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainResult:
    """What a run produced and how fast. Also written to ``train_summary.json``."""

    run_dir: str
    method: str
    steps: int
    stopped: bool  # True when interrupted (signal or callback) before the last step; a checkpoint exists
    final_loss: float | None
    eval_loss: float | None
    median_step_s: float | None  # over every logged step, a resumed run's earlier segments included
    tokens_per_s: float | None  # the same steps' median
    peak_mem_bytes: int
    peak_mem_kind: str  # "rss" (CPU, process peak) or "cuda_max_allocated"
    trainable_params: int
    rank_units: int
    scaling: float | None  # alpha/r (alpha/sqrt(r) for rslora); None for full-parameter methods
    backward_depth: int
    predicted_vs_lora: float
    predicted_vs_full: float
    wall_s: float  # set-up and training; a resumed run adds its earlier segments up to the checkpoint it resumed from
    world_size: int = 1  # processes that trained together (DDP or FSDP)
    fsdp: bool = False  # parameters were sharded with FSDP
    precision: str | None = None  # the resolved precision it computed in: fp32 or bf16 (never "auto")
    adapter: str | None = None
    delta: str | None = None
    selection: dict[str, Any] | None = None  # what the band's selection strategy chose (selection_summary)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
