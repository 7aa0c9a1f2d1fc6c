"""What a comparison runs: the grid (methods x bands x seeds), its presets, and its validation.

A grid is a plain dict (a YAML file, a preset, or flags) validated by :class:`CompareConfig`. Each method
entry is a set of :class:`~midblock.tuning.config.MidBlockConfig` fields plus a ``name`` (the arm's label)
and optional ``bands`` (one arm per band). The demo's profiles are presets too (``quick``, ``full``,
``smoke``), so ``midblock demo`` and ``midblock compare --preset quick`` train and score the same arms.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from midblock.aliases import accepts_old_names, renamed
from midblock.data.tasks import DEFAULT_DEV_SIZE, builtin_tasks, has_own_dev
from midblock.errors import MidblockError
from midblock.evaluation.config import EVAL_TASKS, PROTOCOLS, EvalConfig
from midblock.evaluation.extract import EXTRACTORS
from midblock.layers import PAPER_BAND
from midblock.registry import Registry
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.trainconfig import TrainConfig
from midblock.validation import SEED_LIMIT

TRAIN_KEYS = (
    "steps",
    "epochs",
    "lr",
    "batch_size",
    "grad_accum",
    "max_length",
    "overlong",
    "loss_on",
    "train_rows",
    "precision",
    "schedule",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "labelled_head",
    "eval_loss_items",
    "monitor",
    "save_every",  # run control, like monitor: not in a cell's key (TrainConfig.fingerprint leaves it out)
)
FORGETTING_KEYS = ("data", "limit", "max_length", "batch_size")
FORGETTING_DATA = "general, " + ", ".join(builtin_tasks()) + " or a file"  # what forgetting's `data` names
PAPER_SEGMENT_BANDS = {
    "mid-seg2-4": PAPER_BAND,
    "seg1(first)": "seg1/5",
    "seg2": "seg2/5",
    "seg3": "seg3/5",
    "seg4": "seg4/5",
    "seg5(last)": "seg5/5",
    "seg1-2": "seg1-2/5",
    "seg2-3": "seg2-3/5",
    "seg3-4": "seg3-4/5",
    "seg4-5": "seg4-5/5",
}

# The demo's profiles, which are also compare presets: two arms (all-block LoRA, and LoRA on the paper's
# band with the same rank units and alpha/r), the same data order per seed, zero-shot scoring in the format
# the arms were trained on, forgetting as perplexity on the bundled general-text corpus.
PROFILES: dict[str, dict[str, Any]] = {
    # Minutes on 2 CPU cores with SmolLM2-135M, in fp32 on a CPU without bf16 instructions. Budgeted from the
    # 50-step, 100-item version measured on such a CPU (941 s: 5.15 / 4.61 s per LoRA / band step, 1.3
    # problems/s decoded): 20 steps per arm, 64 problems for the base and each arm (96 new tokens: the
    # longest arith answer has 86), the evaluation loss at the end of training on 16 examples instead of 64.
    # Learning rate 4e-3: the band landscape's dev search (100 steps) chose it for uniform LoRA, and the
    # paper's band scored within 0.5 points of its best there. In 20 steps, uniform LoRA on 64 dev problems:
    # 1e-3 gave 49 answers in the `#### N` format and 4 right, 4e-3 gave 62 and 9 (fp32, seed 0).
    # Small enough that the arms are not told apart: it shows the pipeline, what tuning teaches and the
    # layer profile, not a difference between the methods.
    "quick": dict(
        steps=20, batch_size=8, lr=4e-3, rank=8, eval_items=64, seeds=1, max_new_tokens=96, eval_loss_items=16
    ),
    # A smaller band landscape: the same steps, items, seeds and dev-split learning-rate search as the
    # ``band-landscape`` preset, for its two arms uniform LoRA and the paper's band.
    "full": dict(steps=100, batch_size=8, lr=1e-3, rank=8, eval_items=400, seeds=3, max_new_tokens=96),
    # For tests on tiny random models: seconds, not minutes.
    "smoke": dict(steps=4, batch_size=4, lr=1e-3, rank=4, eval_items=6, seeds=1, max_new_tokens=24),
}
# auto: bf16 where the hardware has it, fp32 elsewhere (midblock.tuning.precision); smoke stays fp32 so that
# tests compute the same numbers on every machine
PROFILE_PRECISION = {"quick": "auto", "full": "auto", "smoke": "fp32"}
# forgetting texts: every text of the bundled probe (about 24,900 scored tokens) in the full profile; the quick
# demo scores 24 texts spread over its three sources (about 6,000 tokens) to stay within its time, six in the
# test profile
PROFILE_PPL_TEXTS: dict[str, int | None] = {"quick": 24, "full": None, "smoke": 6}
# Forgetting as the presets measure it: the bundled probe's texts (200-330 tokens each, so never cut at 512)
FORGETTING = {"data": "general", "limit": None, "max_length": 512, "batch_size": 8}

# The band landscape: which band should LoRA train? Every arm has the rank units of uniform r8 and equal
# alpha/r; each arm's learning rate is chosen on the dev split (never the test split) from a shared grid;
# three seeds with the same data order per seed across arms; 400 test items. About 3 hours on 2 CPU cores.
LANDSCAPE_BANDS = {"paper": PAPER_BAND, "bottom": "seg1-2/5", "top": "seg4-5/5", "auto": "auto"}
# The shared learning-rate grid. Uniform LoRA's dev accuracy kept rising at the top of the first grids
# (0.285 / 0.370 / 0.420 / 0.465 at 5e-4 / 1e-3 / 2e-3 / 4e-3), and a rate chosen at the edge of its grid says
# too little, so the grid moved up: four doublings from 1e-3.
LANDSCAPE_LRS = [1e-3, 2e-3, 4e-3, 8e-3]


def two_arm_grid(
    profile: str = "quick",
    *,
    model: str = "smollm2-135m",
    task: str = "arith",
    data: str | None = None,
    band: str = PAPER_BAND,
    seed: int = 0,
    steps: int | None = None,
    eval_items: int | None = None,
    precision: str | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """The demo's comparison as a grid: all-block LoRA vs mid-block LoRA on ``band``, matched budgets and
    alpha/r (``constant-ratio``; a preset can set another alpha policy on both arms)."""
    if profile not in PROFILES:
        raise MidblockError(f"unknown profile '{profile}'", hint="use " + ", ".join(PROFILES))
    s = PROFILES[profile]
    steps = steps or s["steps"]
    return {
        "model": model,
        "task": task,
        "data": data,
        "eval_task": task,
        "eval_data": data,
        "protocol": "original",
        "eval_items": eval_items or s["eval_items"],
        "max_new_tokens": s["max_new_tokens"],
        "seeds": [seed + i for i in range(s["seeds"])],
        "baseline": "lora",
        "train": {
            "steps": steps,
            "lr": lr or s["lr"],
            "batch_size": s["batch_size"],
            "max_length": 384,
            "precision": precision or PROFILE_PRECISION[profile],
            "warmup_steps": max(1, steps // 10),
            # the per-layer monitor: five readings per run (step 0 and every quarter of the run) on 16 probe rows,
            # for the report's heatmaps (about 3 s a reading on 2 cores); it only reads the model, so the cells'
            # training fingerprints do not include it
            "monitor": {"every": max(1, steps // 4), "rows": 16},
        }
        | ({"eval_loss_items": s["eval_loss_items"]} if "eval_loss_items" in s else {}),
        "methods": [
            {"name": "lora", "method": "lora", "rank": s["rank"], "alpha_policy": "constant-ratio"},
            {
                "name": "midblock",
                "method": "midblock",
                "band": band,
                "rank": s["rank"],
                "budget_baseline_rank": s["rank"],
                "alpha_policy": "constant-ratio",
            },
        ],
        "forgetting": FORGETTING | {"limit": PROFILE_PPL_TEXTS[profile]},
        "include_base": True,
    } | ({"lr_search": {"lrs": LANDSCAPE_LRS, "split": "dev", "eval_items": 200}} if profile == "full" else {})


def band_landscape(alpha_policy: str = "constant-ratio", model: str = "smollm2-135m") -> dict[str, Any]:
    """The ``band-landscape`` preset: uniform LoRA r8 against LoRA on four bands of the same budget."""
    common = {"alpha_policy": alpha_policy}
    methods = [{"name": "uniform", "method": "lora", "rank": 8, **common}]
    for name, band in LANDSCAPE_BANDS.items():
        methods.append({"name": name, "method": "midblock", "band": band, "budget_baseline_rank": 8, **common})
    return {
        "model": model,
        "task": "arith",
        "eval_task": "arith",
        "protocol": "original",
        "eval_items": 400,
        "max_new_tokens": 96,
        "seeds": [0, 1, 2],
        "baseline": "uniform",
        # bf16, as the published run (docs/results.md): on a CPU without bf16 instructions `compare` warns
        # before it starts (about 30x slower there); --precision fp32 or auto trains another grid
        "train": {"steps": 100, "batch_size": 8, "max_length": 384, "precision": "bf16", "warmup_steps": 10},
        "methods": methods,
        "lr_search": {"lrs": LANDSCAPE_LRS, "split": "dev", "eval_items": 200},
        "auto_analysis": {"data": "arith", "samples": 64, "max_length": 256},
        "forgetting": dict(FORGETTING),
        "include_base": True,
    }


# The selection family: the paper's band and `auto` beside the layer-selection methods in wide use, in their
# two forms, each arm at a learning rate chosen on the dev split from a grid of its own form.
# - LoRA arms (uniform r8, the paper's band, auto, CKA-select): the rank units of uniform r8, equal alpha/r.
# - Full-parameter arms (the paper's band, Spectrum, LISA): the same trainable parameters per step, those of
#   full training on the paper's band (3 of 5 segments: 18 of SmolLM2-135M's 30 blocks, 63.7M parameters).
#   Spectrum at P = 60 trains 60% of the matrices of every module type: floor(30 x 0.6) = 18 per type, the
#   linear weights of 18 blocks (63.70M: the band's count less its 18 x 1,152 norm weights); LISA trains 18
#   whole blocks per step (the band's 63.72M), a new draw every 20 of the 100 steps. Both in their ':blocks'
#   forms: the reference tools also train the embeddings and the head (28.3M tied parameters on SmolLM2-135M,
#   44% on top of the budget), which would break the match and the truncated backward. --param-budget
#   63721728 (or the band's count on another model) chooses the same P and G; the specs are written out so the
#   preset does not depend on one model's shapes. The table reports every arm's trainable parameters.
# - Rate grids in factor-2 steps: LoRA the band landscape's (1e-3..8e-3, inside which its arms chose), full
#   parameters 5e-5..4e-4. A 20-step check of paper-full on SmolLM2-135M (batch 8, fp32, seed 0; eval loss on
#   32 train examples, dev accuracy on 32 dev problems): 1.25e-5 0.870 / -, 5e-5 0.297 / 3, 2e-4 0.079 / 7,
#   8e-4 0.162 / 2 right: the best rate lies near 2e-4, past which the loss rises; 100 steps may prefer a
#   lower one, so the grid spans 5e-5 to 4e-4 (the 1.25e-5 first proposed would have chosen its top).
#   A rate chosen at either end of its grid is flagged in lr_search.md and compare.md.
SELECTION_ARMS: dict[str, tuple[str, str]] = {  # label: (method, selection spec)
    "paper": ("midblock", PAPER_BAND),
    "auto": ("midblock", "auto"),
    "cka-select:0.5": ("midblock", "cka-select:0.5"),
    "paper-full": ("midblock-full", PAPER_BAND),
    "spectrum:60:blocks": ("midblock-full", "spectrum:60:blocks"),
    "lisa:18/20:blocks": ("midblock-full", "lisa:18/20:blocks"),
}
SELECTION_LRS = {"lora": LANDSCAPE_LRS, "full": [5e-5, 1e-4, 2e-4, 4e-4]}


def selection_family(alpha_policy: str = "constant-ratio", model: str = "smollm2-135m") -> dict[str, Any]:
    """The ``selection-family`` preset: LoRA arms (uniform r8, the paper's band, ``auto``, CKA-select) at the
    rank units of uniform r8, full-parameter arms (the paper's band, Spectrum, LISA) at the paper band's
    parameters, each arm's rate from a dev grid of its form; the band landscape's settings otherwise."""
    lora = {"alpha_policy": alpha_policy, "lrs": SELECTION_LRS["lora"]}
    methods: list[dict[str, Any]] = [{"name": "uniform", "method": "lora", "rank": 8, **lora}]
    for name, (method, band) in SELECTION_ARMS.items():
        if method == "midblock":
            methods.append({"name": name, "method": method, "band": band, "budget_baseline_rank": 8, **lora})
        else:
            methods.append({"name": name, "method": method, "band": band, "lrs": SELECTION_LRS["full"]})
    grid = band_landscape(alpha_policy, model)
    return grid | {
        "methods": methods,
        "train": grid["train"] | {"precision": "auto"},
        # a best rate at an end of its arm's grid tries up to two more rates beyond it (issue #24: the chosen
        # rate must lie inside the grid); each such step is one more search run of that arm
        "lr_search": {"split": "dev", "eval_items": 200, "extend": 2},
    }


def paper_protocol(alpha_policy: str = "fixed", model: str = "smollm2-135m") -> dict[str, Any]:
    """The ``paper-protocol`` preset: the paper's training protocol as its code states it, at our scale.

    LoRA on q,k,v,o with alpha fixed at 128 and dropout 0.05 in every arm; uniform r64 against the band
    seg2-4/5 at the same rank units; the first 2,000 GSM8K training examples cut at 128 tokens, loss over
    the whole sequence; one epoch at batch 32, no warmup, one shared learning rate (1e-4, the paper's for 1B
    and 7B); 100 test items scored as the paper's code scores them. Seeds are a list, so the paper's
    one-seed comparison is replayed once per seed and the spread across seeds is visible.
    """
    common = {"rank": 64, "alpha_policy": alpha_policy, "dropout": 0.05, "target_modules": ["attn"]}
    return {
        "model": model,
        "task": "gsm8k",
        "eval_task": "gsm8k",
        "protocol": "paper",
        "eval_items": 100,
        "seeds": [0, 1, 2, 3, 4],
        "baseline": "uniform-r64",
        "train": {
            "train_rows": 2000,
            "epochs": 1,
            "lr": 1e-4,
            "batch_size": 32,
            "grad_accum": 1,
            "max_length": 128,
            "overlong": "truncate",
            "loss_on": "all",
            "warmup_steps": 0,
            "schedule": "linear",
        },
        "methods": [
            {"name": "uniform-r64", "method": "lora", **common},
            {"name": "mid-seg2-4", "method": "midblock", "band": PAPER_BAND, "budget_baseline_rank": 64, **common},
        ],
        "forgetting": dict(FORGETTING),
        "include_base": True,
    }


def paper_segments(alpha_policy: str = "constant-ratio", model: str = "smollm2-135m") -> dict[str, Any]:
    """The ``paper-segments`` preset: the paper's layouts, uniform r64 LoRA on q,k,v,o against the band
    seg2-4/5 and every single segment, pair, first- and last-segment layout at the same rank units.

    GSM8K, the first 2,000 training examples for one epoch, 3 seeds, the lm-eval protocol on the full test set;
    ``--alpha-policy fixed`` gives the paper's alpha = 128 for every rank."""
    common = {"rank": 64, "alpha_policy": alpha_policy, "dropout": 0.05, "target_modules": ["attn"]}
    methods = [{"name": "uniform-r64", "method": "lora", **common}]
    for label, band in PAPER_SEGMENT_BANDS.items():
        methods.append({"name": label, "method": "midblock", "band": band, "budget_baseline_rank": 64, **common})
    return {
        "model": model,
        "task": "gsm8k",
        "eval_task": "gsm8k",
        "protocol": "lm-eval",
        "eval_items": None,
        "seeds": [0, 1, 2],
        "baseline": "uniform-r64",
        "train": {"train_rows": 2000, "epochs": 1, "lr": 1e-4, "batch_size": 4, "grad_accum": 8, "max_length": 512},
        "methods": methods,
        "forgetting": None,
        "include_base": True,
    }


def _profile_grid(profile: str, alpha_policy: str) -> dict[str, Any]:
    grid = two_arm_grid(profile)
    grid["methods"] = [m | {"alpha_policy": alpha_policy} for m in grid["methods"]]
    return grid


def quick_preset(alpha_policy: str = "constant-ratio") -> dict[str, Any]:
    """The demo's ``quick`` profile: all-block LoRA r8 against LoRA on the paper's band on arith, 20 steps
    per arm, 64 test items, one seed (minutes on 2 CPU cores)."""
    return _profile_grid("quick", alpha_policy)


def full_preset(alpha_policy: str = "constant-ratio") -> dict[str, Any]:
    """The demo's ``full`` profile: the same two arms with the band landscape's 100 steps, 400 test items,
    3 seeds and learning rates chosen on the dev split."""
    return _profile_grid("full", alpha_policy)


def smoke_preset(alpha_policy: str = "constant-ratio") -> dict[str, Any]:
    """The demo's ``smoke`` profile, for tests on tiny random models: 4 steps, 6 test items, fp32 (seconds)."""
    return _profile_grid("smoke", alpha_policy)


# name -> the function that builds the preset's grid (``midblock compare --preset``); each takes the
# ``alpha_policy`` of its arms and has its own default (``fixed`` for paper-protocol, ``constant-ratio`` otherwise)
PRESETS: Registry[Callable[..., dict[str, Any]]] = Registry("preset")
PRESETS.register("quick", quick_preset)
PRESETS.register("full", full_preset)
PRESETS.register("smoke", smoke_preset)
PRESETS.register("band-landscape", band_landscape)
PRESETS.register("paper-segments", paper_segments)
PRESETS.register("selection-family", selection_family)
PRESETS.register("paper-protocol", paper_protocol)


def preset(name: str, alpha_policy: str | None = None) -> dict[str, Any]:
    """The grid of a named preset (a plain dict, as a YAML file would give); ``alpha_policy`` None: the
    preset's own (``fixed`` for paper-protocol, ``constant-ratio`` otherwise)."""
    make = PRESETS.lookup(name)
    return make(alpha_policy) if alpha_policy else make()


@dataclass(frozen=True)
class Cell:
    """One training run of the grid: an arm (its label, tuning settings and any training settings of its
    own, e.g. a learning rate) at one seed."""

    label: str
    seed: int
    tuning: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """A readable file-name part; not unique on its own (``a b`` and ``a/b`` share it): the cell's
        directory adds the hash of its fingerprint, which includes the label itself."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)[:60]


def _require(cond: bool, what: str, hint: str | None = None) -> None:
    if not cond:
        raise MidblockError(what, hint=hint)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_lrs(lrs: Any, what: str) -> None:
    """A learning-rate grid: a non-empty list of distinct finite positive numbers."""
    _require(
        isinstance(lrs, list)
        and bool(lrs)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in lrs)
        and all(math.isfinite(x) and x > 0 for x in lrs),
        f"{what} must be a non-empty list of finite positive learning rates, got {lrs!r}",
    )
    _require(len(set(lrs)) == len(lrs), f"{what} lists a rate twice: {lrs!r}")


@accepts_old_names
@dataclass
class CompareConfig:
    """A comparison grid; ``methods`` entries are MidBlockConfig fields plus ``name`` and optional ``bands``."""

    methods: list[dict[str, Any]] = field(metadata={"help": "method entries: name, method, band(s), rank, ..."})
    model: str = field(default="smollm2-135m", metadata={"help": "base model spec"})
    task: str = field(default="arith", metadata={"help": "training task"})
    data: str | None = field(default=None, metadata={"help": "training data (file/dir) for the task"})
    eval_task: str | None = field(default=None, metadata={"help": f"evaluation task ({' | '.join(EVAL_TASKS)})"})
    eval_data: str | None = field(default=None, metadata={"help": "GSM8K location for evaluation"})
    protocol: str = field(default="original", metadata={"help": "evaluation protocol"})
    metric: str | None = field(default=None, metadata={"help": "extractor reported (default: protocol's first)"})
    eval_items: int | None = field(default=None, metadata={"help": "test items scored (default: all)"})
    eval_batch_size: int = field(default=16, metadata={"help": "items decoded together"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "override the protocol's token limit"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "training seeds"})
    baseline: str | None = field(default=None, metadata={"help": "label of the baseline arm (default: first)"})
    train: dict[str, Any] = field(default_factory=dict, metadata={"help": "TrainConfig fields shared by cells"})
    forgetting: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "{data: general (the bundled probe) | general-v1 | "
            + " | ".join(builtin_tasks())
            + " | FILE, limit, max_length, batch_size}"
        },
    )
    include_base: bool = field(default=False, metadata={"help": "also evaluate the untuned base model"})
    lr_search: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "choose each arm's learning rate first: {lrs: [...], split: dev, eval_items: N, extend: K}; one "
            "seed (the first) per rate, scored on the dev split, the best rate per arm used for every seed; a "
            "method entry's own 'lrs: [...]' replaces the shared grid for that arm (lr_search.lrs may then be "
            "left out); extend: a best rate at an end of its grid tries the next rate beyond it, up to K times"
        },
    )
    dev_size: int | None = field(
        default=None,
        metadata={
            "help": "gsm8k/jsonl: train rows held out as the dev split of the learning-rate search (chosen by "
            "content hash; no cell trains on them); default 200 when the grid searches on a task without a "
            "dev split of its own, else 0"
        },
    )
    auto_analysis: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "for arms with band 'auto' and no analysis: analyse the base first ({data, samples, "
            "max_length, split: train|dev}, never the test split) and train the band it recommends"
        },
    )

    def __post_init__(self) -> None:
        self._rename_nested()
        self._check_types()
        if self.eval_task is None:
            self.eval_task = self.task if self.task in EVAL_TASKS else "gsm8k"
        self.eval_config()  # validates task, protocol, eval_items, batch size, token limit
        if self.metric is None:
            self.metric = PROTOCOLS[self.protocol].primary[0]
        EXTRACTORS.lookup(self.metric)
        _require(len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}")
        bad = sorted(set(self.train) - set(TRAIN_KEYS))
        _require(not bad, f"unknown train setting '{bad[0] if bad else ''}'", "use " + ", ".join(TRAIN_KEYS))
        if self.forgetting:
            bad = sorted(set(self.forgetting) - set(FORGETTING_KEYS))
            _require(
                not bad, f"unknown forgetting setting '{bad[0] if bad else ''}'", "use " + ", ".join(FORGETTING_KEYS)
            )
            _require(bool(self.forgetting.get("data")), f"forgetting needs 'data' ({FORGETTING_DATA})")
        self._check_search()
        self._resolve_dev_size()
        self._check_methods()
        for cell in self.cells():  # every training setting checked before anything runs
            if cell.tuning.get("band") == "auto" and not cell.tuning.get("analysis"):
                cell = replace(cell, tuning=cell.tuning | {"band": PAPER_BAND})  # resolved when the grid runs
            self.train_config(cell, "validation")
        labels = list(dict.fromkeys(c.label for c in self.cells()))
        if self.baseline is None:
            self.baseline = labels[0]
        _require(
            self.baseline in labels,
            f"baseline '{self.baseline}' is not in the grid",
            "choose one of " + ", ".join(labels),
        )

    def _rename_nested(self) -> None:
        """Old setting names in ``train``, each method entry's ``train`` and ``lr_search`` (one warning each;
        see :mod:`midblock.aliases`); anything that is not a mapping is left for the checks to refuse."""
        if isinstance(self.train, dict):
            self.train = renamed(self.train, TrainConfig, label="train")
        if isinstance(self.lr_search, dict):
            self.lr_search = renamed(self.lr_search, "lr_search")
        if isinstance(self.methods, list):
            self.methods = [
                m | {"train": renamed(m["train"], TrainConfig, label=f"train of method entry '{m.get('name')}'")}
                if isinstance(m, dict) and isinstance(m.get("train"), dict)
                else m
                for m in self.methods
            ]

    def _check_types(self) -> None:
        """Wrong YAML types get one line naming the key, before anything is created."""
        _require(
            isinstance(self.methods, list) and bool(self.methods),
            f"'methods' must be a non-empty list of method entries, got {self.methods!r}",
            "e.g. methods: [{name: lora, method: lora}]",
        )
        _require(
            isinstance(self.seeds, list) and bool(self.seeds) and all(_is_int(s) for s in self.seeds),
            f"'seeds' must be a non-empty list of integers, got {self.seeds!r}",
            "e.g. seeds: [0, 1, 2]",
        )
        for s in self.seeds:  # torch, numpy and random all accept this range; 2**64 overflowed in torch
            _require(0 <= s < SEED_LIMIT, f"seed {s} is out of range", f"seeds are integers in [0, {SEED_LIMIT - 1}]")
        for key in ("model", "task", "protocol"):
            _require(isinstance(getattr(self, key), str), f"'{key}' must be a string, got {getattr(self, key)!r}")
        for key in ("data", "eval_task", "eval_data", "metric", "baseline"):
            v = getattr(self, key)
            _require(v is None or isinstance(v, str), f"'{key}' must be a string, got {v!r}")
        for key in ("eval_items", "max_new_tokens"):
            v = getattr(self, key)
            _require(v is None or _is_int(v), f"'{key}' must be an integer, got {v!r}")
        _require(_is_int(self.eval_batch_size), f"'eval_batch_size' must be an integer, got {self.eval_batch_size!r}")
        _require(isinstance(self.train, dict), f"'train' must be a mapping of training settings, got {self.train!r}")
        _require(
            self.forgetting is None or isinstance(self.forgetting, dict),
            f"'forgetting' must be a mapping (data, limit, max_length) or empty, got {self.forgetting!r}",
        )
        _require(
            isinstance(self.include_base, bool), f"'include_base' must be true or false, got {self.include_base!r}"
        )

    def _check_search(self) -> None:
        if self.lr_search is not None:
            ls = self.lr_search
            _require(isinstance(ls, dict), f"'lr_search' must be a mapping, got {ls!r}")
            bad = sorted(set(ls) - {"lrs", "split", "eval_items", "extend"})
            hint = "use lrs, split, eval_items, extend"
            _require(not bad, f"unknown lr_search setting '{bad[0] if bad else ''}'", hint)
            ext = ls.get("extend", 0)
            _require(_is_int(ext) and ext >= 0, f"'lr_search.extend' must be an integer >= 0, got {ext!r}")
            if "lrs" in ls or not any(isinstance(m, dict) and "lrs" in m for m in self.methods):
                _check_lrs(ls.get("lrs"), "'lr_search.lrs'")
            _require(ls.get("split", "dev") in ("dev", "test"), "'lr_search.split' must be dev or test")
            if ls.get("split", "dev") == "test":
                raise MidblockError(
                    "lr_search on the test split would choose settings on the numbers it reports",
                    hint="use split: dev",
                )
            lim = ls.get("eval_items")
            _require(lim is None or (_is_int(lim) and lim > 0), f"'lr_search.eval_items' must be > 0, got {lim!r}")
        if self.auto_analysis is not None:
            aa = self.auto_analysis
            _require(isinstance(aa, dict), f"'auto_analysis' must be a mapping, got {aa!r}")
            bad = sorted(set(aa) - {"data", "samples", "max_length", "split"})
            hint = "use data, samples, max_length, split"
            _require(not bad, f"unknown auto_analysis setting '{bad[0] if bad else ''}'", hint)
            _require(aa.get("split", "train") in ("train", "dev"), "'auto_analysis.split' must be train or dev")

    def _resolve_dev_size(self) -> None:
        """``dev_size`` None: DEFAULT_DEV_SIZE when a learning-rate search needs a dev split that the
        evaluation task does not have (gsm8k), 0 otherwise."""
        if self.dev_size is None:
            self.dev_size = DEFAULT_DEV_SIZE if self.lr_search and not has_own_dev(self.eval_task) else 0
        _require(
            _is_int(self.dev_size) and self.dev_size >= 0, f"'dev_size' must be an integer >= 0, got {self.dev_size!r}"
        )
        if self.lr_search and not has_own_dev(self.eval_task):
            _require(self.dev_size > 0, f"lr_search on {self.eval_task} needs a dev split", "set dev_size, e.g. 200")

    def search_config(self) -> EvalConfig:
        """The evaluation of the learning-rate search: the dev split, as many items as asked."""
        ls = self.lr_search or {}
        split = ls.get("split", "dev")
        return replace(
            self.eval_config(),
            split=split,
            eval_items=ls.get("eval_items", self.eval_items),
            dev_size=self.eval_dev_size,
        )

    @property
    def train_dev_size(self) -> int:
        """Rows every cell's training holds out: the dev split, when one is carved from the training task."""
        return self.dev_size if not has_own_dev(self.task) else 0

    @property
    def eval_dev_size(self) -> int:
        return self.dev_size if not has_own_dev(self.eval_task) else 0

    def arm_lrs(self, m: dict[str, Any]) -> list[float]:
        """The learning-rate grid the search tries for method entry ``m``: its own ``lrs``, else the shared
        ``lr_search.lrs`` (empty without a search)."""
        if not self.lr_search:
            return []
        return list(m.get("lrs") or self.lr_search.get("lrs") or [])

    def _check_methods(self) -> None:
        known = set(MidBlockConfig.__dataclass_fields__) | {"name", "bands", "train", "lrs"}
        names = []
        for m in self.methods:
            _require(
                isinstance(m, dict) and "method" in m,
                f"method entry {m!r} has no 'method'",
                "e.g. {name: lora, method: lora}",
            )
            label = m.get("name", m["method"])
            extra = sorted(set(m) - known)
            _require(not extra, f"method entry '{label}' has unknown key '{extra[0] if extra else ''}'")
            bands = m.get("bands")
            _require(
                bands is None or (isinstance(bands, list) and all(isinstance(b, str) for b in bands)),
                f"'bands' of method entry '{m.get('name', m['method'])}' must be a list of band specs, got {bands!r}",
            )
            own = m.get("train", {})
            _require(isinstance(own, dict), f"'train' of method entry '{label}' must be a mapping, got {own!r}")
            bad = sorted(set(own) - set(TRAIN_KEYS))
            _require(not bad, f"unknown train setting '{bad[0] if bad else ''}' in method entry '{label}'")
            if "lrs" in m:
                _check_lrs(m["lrs"], f"'lrs' of method entry '{label}'")
                hint = "add lr_search: {split: dev, eval_items: N} to the grid"
                _require(bool(self.lr_search), f"method entry '{label}' has 'lrs' but the grid has no lr_search", hint)
            elif self.lr_search and not self.lr_search.get("lrs"):
                hint = "give it 'lrs: [...]' or the grid a shared lr_search.lrs"
                _require(False, f"method entry '{label}' has no learning-rate grid to search", hint)
            names.append(str(m.get("name") or m["method"]))
            for c in self.expand(m, 0):
                tuning = dict(c.tuning)
                if tuning.get("band") == "auto" and not tuning.get("analysis"):
                    hint = "add auto_analysis: {data, samples} to the grid, or an analysis directory to the entry"
                    _require(bool(self.auto_analysis), f"method entry '{label}' has band 'auto' but no analysis", hint)
                    tuning["band"] = PAPER_BAND  # resolved from the grid's own base analysis when run
                MidBlockConfig.from_dict(tuning)  # raises for an unknown method, band policy, rank...
        _require(len(set(names)) == len(names), "two method entries share a name", "give each entry a distinct 'name'")
        # Arms are told apart by their label alone (cells, tables, exports): two arms with one label would be
        # pooled as if they were seeds of one arm, so labels must be unique after `bands` expansion too.
        labels = [c.label for m in self.methods for c in self.expand(m, 0)]
        dup = next((x for x in labels if labels.count(x) > 1), None)
        _require(
            dup is None,
            f"two arms of the grid get the label '{dup}' (after expanding 'bands')",
            "rename one method entry: a label names one arm",
        )
        _require(
            not (self.include_base and "base" in labels),
            "an arm is named 'base', which is the base model's row (include_base: true)",
            "rename that method entry",
        )

    def search_cells(self) -> list[Cell]:
        """The learning-rate search's runs: every arm at every rate, on the first seed."""
        if not self.lr_search:
            return []
        return [
            replace(c, train=c.train | {"lr": lr})
            for m in self.methods
            for c in self.expand(m, self.seeds[0])
            for lr in self.arm_lrs(m)
        ]

    def check_depth(self, layout: Any) -> None:
        """Every arm's band resolved against the model (``layout``: its block structure), and every training
        setting of the search's runs checked, before the first cell: a band past the last block, or one that
        selects no block, would otherwise stop the grid after the arms before it had trained."""
        from midblock.tuning.prepare import plan

        for cell in [*self.cells(), *self.search_cells()]:
            if cell.tuning.get("band") == "auto" and not cell.tuning.get("analysis"):
                continue  # resolved from the grid's own analysis of this model, so within its depth
            self.train_config(cell, "validation")
            try:
                plan(MidBlockConfig.from_dict(cell.tuning), layout)
            except MidblockError as e:
                raise MidblockError(f"arm '{cell.label}': {e.problem}", hint=e.hint) from e

    def train_config(self, cell: Cell, out: str | Path, resume: bool = False, progress: bool = True) -> TrainConfig:
        """The training run of ``cell``: the grid's shared settings, then the arm's own."""
        return TrainConfig(
            model=self.model,
            task=self.task,
            data=self.data,
            out=str(out),
            seed=cell.seed,
            dev_size=self.train_dev_size,
            tuning=MidBlockConfig.from_dict(cell.tuning),
            resume=resume,
            progress=progress,
            **(self.train | cell.train),
        )

    def eval_config(self) -> EvalConfig:
        return EvalConfig(
            task=self.eval_task,
            protocol=self.protocol,
            eval_items=self.eval_items,
            batch_size=self.eval_batch_size,
            max_new_tokens=self.max_new_tokens,
            data=self.eval_data,
        )

    @staticmethod
    def expand(m: dict[str, Any], seed: int) -> list[Cell]:
        """The arms of one method entry (one per band when it lists several) at ``seed``."""
        name = str(m.get("name") or m["method"])
        tuning = {k: v for k, v in m.items() if k not in ("name", "bands", "train", "lrs")}
        if isinstance(tuning.get("target_modules"), list):
            tuning["target_modules"] = tuple(tuning["target_modules"])
        own = dict(m.get("train") or {})
        bands = m.get("bands")
        if not bands:
            return [Cell(name, seed, tuning, own)]
        return [Cell(f"{name}[{b}]" if len(bands) > 1 else name, seed, tuning | {"band": b}, own) for b in bands]

    def cells(self) -> list[Cell]:
        return [c for s in self.seeds for m in self.methods for c in self.expand(m, s)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompareConfig:
        """From a grid dict (a YAML file, a preset); old setting names work, with one warning each."""
        d = renamed(d, cls, label="the grid")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise MidblockError(
                f"unknown compare setting '{unknown[0]}'", hint="use " + ", ".join(cls.__dataclass_fields__)
            )
        if "methods" not in d:
            raise MidblockError("the comparison grid has no 'methods' list")
        return cls(**d)


def load_grid(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.exists():
        raise MidblockError(f"grid file {p} does not exist")
    if not p.is_file():
        raise MidblockError(f"grid file {p} is not a regular file", hint="pass a YAML file to --config")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MidblockError(f"grid file {p} is not UTF-8 text", hint="save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise MidblockError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(d, dict):
        raise MidblockError(f"{p} must hold a mapping with a 'methods' list")
    return d
