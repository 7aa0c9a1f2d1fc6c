"""``compare``: a grid of training runs (method x band x seed), each trained then evaluated, in one table.

Every cell trains through :func:`midblock.tuning.train.train`, is scored by :func:`evaluate_model` on the
same test items, and optionally has its loss on a held-out corpus measured (forgetting). A finished cell
writes ``cells/<id>/cell.json`` last, so a rerun skips it; an interrupted cell resumes its training
(from a checkpoint) and its evaluation (from the per-item file). Results: ``compare.csv``, ``compare.md``,
``compare.png`` and ``compare.json`` (with provenance).

Differences against the baseline are paired: on each test item the two arms' correctness (averaged over the
seeds both ran) is differenced and the items are resampled with a bootstrap.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from midblock.errors import MidblockError
from midblock.evaluation.evaluate import EVAL_TASKS, PROTOCOLS, EvalConfig, evaluate_model

log = logging.getLogger(__name__)

TRAIN_KEYS = (
    "steps",
    "epochs",
    "lr",
    "batch_size",
    "grad_accum",
    "max_length",
    "limit",
    "precision",
    "schedule",
    "warmup_steps",
    "weight_decay",
    "head_at_labels",
    "eval_limit",
)
PAPER_SEGMENT_BANDS = {
    "mid-seg2-4": "seg2-4/5",
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


def preset(name: str, alpha_policy: str = "constant-ratio") -> dict[str, Any]:
    """The grid of a named preset (a plain dict, as a YAML file would give)."""
    if name == "quick":
        return {
            "model": "smollm2-135m",
            "task": "arith",
            "eval_task": "arith",
            "protocol": "original",
            "eval_limit": 64,
            "seeds": [0],
            "baseline": "lora",
            "train": {"steps": 40, "lr": 1e-3, "batch_size": 8, "max_length": 256},
            "methods": [
                {"name": "lora", "method": "lora", "rank": 8, "alpha_policy": alpha_policy},
                {
                    "name": "midblock",
                    "method": "midblock",
                    "band": "seg2-4/5",
                    "budget_baseline_rank": 8,
                    "alpha_policy": alpha_policy,
                },
            ],
            "forgetting": {"data": "gsm8k", "limit": 16, "max_length": 256},
            "include_base": False,
        }
    if name == "paper-segments":
        # the paper's layouts: uniform r64 LoRA on q,k,v,o vs every segment layout at the same rank units
        common = {"rank": 64, "alpha_policy": alpha_policy, "dropout": 0.05, "target_modules": ["attn"]}
        methods = [{"name": "uniform-r64", "method": "lora", **common}]
        for label, band in PAPER_SEGMENT_BANDS.items():
            methods.append({"name": label, "method": "midblock", "band": band, "budget_baseline_rank": 64, **common})
        return {
            "model": "smollm2-135m",
            "task": "gsm8k",
            "eval_task": "gsm8k",
            "protocol": "lm-eval",
            "eval_limit": None,
            "seeds": [0, 1, 2],
            "baseline": "uniform-r64",
            "train": {"limit": 2000, "epochs": 1, "lr": 1e-4, "batch_size": 4, "grad_accum": 8, "max_length": 512},
            "methods": methods,
            "forgetting": None,
            "include_base": True,
        }
    raise MidblockError(f"unknown preset '{name}'", hint="use quick or paper-segments")


@dataclass
class Cell:
    label: str  # the method entry's name (plus band when the entry lists several)
    seed: int
    tuning: dict[str, Any]

    @property
    def id(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.label}__s{self.seed}")


@dataclass
class CompareConfig:
    """A comparison grid; ``methods`` entries are MidBlockConfig fields plus ``name`` and optional ``bands``."""

    methods: list[dict[str, Any]] = field(metadata={"help": "method entries: name, method, band(s), rank, ..."})
    model: str = field(default="smollm2-135m", metadata={"help": "base model spec"})
    task: str = field(default="arith", metadata={"help": "training task"})
    data: str | None = field(default=None, metadata={"help": "training data (file/dir) for the task"})
    eval_task: str | None = field(default=None, metadata={"help": "evaluation task (gsm8k | arith)"})
    eval_data: str | None = field(default=None, metadata={"help": "GSM8K location for evaluation"})
    protocol: str = field(default="original", metadata={"help": "evaluation protocol"})
    metric: str | None = field(default=None, metadata={"help": "extractor reported (default: protocol's first)"})
    eval_limit: int | None = field(default=None, metadata={"help": "test items (default: all)"})
    eval_batch_size: int = field(default=16, metadata={"help": "items decoded together"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "override the protocol's token limit"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "training seeds"})
    baseline: str | None = field(default=None, metadata={"help": "label of the baseline arm (default: first)"})
    train: dict[str, Any] = field(default_factory=dict, metadata={"help": "TrainConfig fields shared by cells"})
    forgetting: dict[str, Any] | None = field(default=None, metadata={"help": "{data, limit, max_length} for ppl"})
    include_base: bool = field(default=False, metadata={"help": "also evaluate the untuned base model"})

    def __post_init__(self) -> None:
        from midblock.tuning.config import MidBlockConfig

        if not self.methods:
            raise MidblockError("the comparison grid names no methods")
        if self.eval_task is None:
            self.eval_task = self.task if self.task in EVAL_TASKS else "gsm8k"
        EvalConfig(
            task=self.eval_task,
            protocol=self.protocol,
            limit=self.eval_limit,
            batch_size=self.eval_batch_size,
            max_new_tokens=self.max_new_tokens,
        )
        if self.metric is None:
            self.metric = PROTOCOLS[self.protocol].primary[0]
        from midblock.evaluation.extract import EXTRACTORS

        if self.metric not in EXTRACTORS:
            raise MidblockError(f"unknown metric '{self.metric}'", hint="choose one of " + ", ".join(EXTRACTORS))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise MidblockError(f"seeds must be distinct and non-empty, got {self.seeds}")
        bad = sorted(set(self.train) - set(TRAIN_KEYS))
        if bad:
            raise MidblockError(f"unknown train setting '{bad[0]}'", hint="use " + ", ".join(TRAIN_KEYS))
        known = set(MidBlockConfig.__dataclass_fields__) | {"name", "bands"}
        for m in self.methods:
            if not isinstance(m, dict) or "method" not in m:
                raise MidblockError(f"method entry {m!r} has no 'method'", hint="e.g. {name: lora, method: lora}")
            extra = sorted(set(m) - known)
            if extra:
                raise MidblockError(f"method entry '{m.get('name', m['method'])}' has unknown key '{extra[0]}'")
            for c in self._expand(m, 0):
                MidBlockConfig.from_dict(c.tuning)  # raises for an unknown method, band policy, rank...
        labels = [c.label for c in self.cells()]
        if len(set(labels)) != len(labels) // len(self.seeds):
            raise MidblockError("two method entries share a name", hint="give each entry a distinct 'name'")
        if self.baseline is None:
            self.baseline = labels[0]
        if self.baseline not in labels:
            raise MidblockError(
                f"baseline '{self.baseline}' is not in the grid",
                hint="choose one of " + ", ".join(dict.fromkeys(labels)),
            )

    @staticmethod
    def _expand(m: dict[str, Any], seed: int) -> list[Cell]:
        name = str(m.get("name") or m["method"])
        tuning = {k: v for k, v in m.items() if k not in ("name", "bands")}
        if "target_modules" in tuning and isinstance(tuning["target_modules"], list):
            tuning["target_modules"] = tuple(tuning["target_modules"])
        bands = m.get("bands")
        if not bands:
            return [Cell(name, seed, tuning)]
        return [Cell(f"{name}[{b}]" if len(bands) > 1 else name, seed, tuning | {"band": b}) for b in bands]

    def cells(self) -> list[Cell]:
        return [c for s in self.seeds for m in self.methods for c in self._expand(m, s)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompareConfig:
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
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise MidblockError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(d, dict):
        raise MidblockError(f"{p} must hold a mapping with a 'methods' list")
    return d


# --------------------------------------------------------------------------- running cells


def _forgetting_texts(cc: CompareConfig) -> list[str] | None:
    if not cc.forgetting:
        return None
    src, limit = cc.forgetting.get("data"), cc.forgetting.get("limit")
    if src in ("gsm8k", "arith"):
        from midblock.data import load_rows

        rows = load_rows(src, "test", cc.eval_data if src == "gsm8k" else None, limit=limit)
        return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    from midblock.evaluation.ppl import load_texts

    if not src:
        raise MidblockError("forgetting needs 'data' (gsm8k, arith or a .txt/.jsonl file)")
    return load_texts(src, limit)


def _train_cell(cc: CompareConfig, cell: Cell, tdir: Path, progress: bool) -> dict[str, Any]:
    from midblock.io import read_json
    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.train import SUMMARY_FILE, TrainConfig, train

    if (tdir / "COMPLETED").exists() and (tdir / SUMMARY_FILE).exists():
        return read_json(tdir / SUMMARY_FILE)
    resume = (tdir / "checkpoints").is_dir() and any((tdir / "checkpoints").iterdir())
    if tdir.exists() and not resume:
        shutil.rmtree(tdir)  # interrupted before its first checkpoint: start the cell's training over
    tc = TrainConfig(
        model=cc.model,
        task=cc.task,
        data=cc.data,
        out=str(tdir),
        seed=cell.seed,
        tuning=MidBlockConfig.from_dict(cell.tuning),
        resume=resume,
        progress=progress,
        **cc.train,
    )
    return train(tc).to_dict()


def _run_cell(
    cc: CompareConfig, cell: Cell | None, cdir: Path, texts: list[str] | None, progress: bool, do_eval: bool = True
) -> dict[str, Any]:
    """Train (unless ``cell`` is None: the base model), evaluate and measure loss; cached in ``cell.json``."""
    from midblock.evaluation.ppl import token_loss
    from midblock.io import read_json, read_jsonl_tolerant, write_json
    from midblock.models import load_model

    done = cdir / "cell.json"
    if done.exists():
        rec = read_json(done)
        rec["items"] = read_jsonl_tolerant(cdir / "eval" / "items.jsonl")
        return rec
    cdir.mkdir(parents=True, exist_ok=True)
    tres = _train_cell(cc, cell, cdir / "train", progress) if cell is not None else None
    spec = str(cdir / "train") if cell is not None else cc.model
    model, tok = load_model(spec)
    ecfg = EvalConfig(
        task=cc.eval_task,
        protocol=cc.protocol,
        limit=cc.eval_limit,
        batch_size=cc.eval_batch_size,
        max_new_tokens=cc.max_new_tokens,
        data=cc.eval_data,
    )
    summary = {"items": []}
    if do_eval:
        summary = evaluate_model(model, tok, cfg=ecfg, out_dir=cdir / "eval", model_spec=spec, progress=progress)
    ppl = None
    if texts:
        fm = cc.forgetting or {}
        ppl = token_loss(model, tok, texts, max_length=int(fm.get("max_length", 512)), progress=progress)
    items = summary.pop("items")
    rec = {
        "label": cell.label if cell else "base",
        "seed": cell.seed if cell else None,
        "tuning": cell.tuning if cell else None,
        "train": tres,
        "eval": summary if do_eval else None,
        "ppl": ppl,
    }
    write_json(done, rec)
    rec["items"] = items
    return rec


def compare(config: CompareConfig | dict[str, Any], out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every cell of the grid and write the comparison table; returns the table rows."""
    from midblock.io import fresh_output_dir

    cc = config if isinstance(config, CompareConfig) else CompareConfig.from_dict(dict(config))
    out = fresh_output_dir(out)
    texts = _forgetting_texts(cc)  # validated (and loaded) before any training
    from midblock.data import load_rows

    load_rows(cc.eval_task, "test", cc.eval_data, limit=1)  # the evaluation data exists
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    base = None
    if cc.include_base or texts:
        base = _run_cell(cc, None, out / "cells" / "base", texts, progress, do_eval=cc.include_base)
    cells = cc.cells()
    for k, cell in enumerate(cells):
        log.info("cell %d/%d: %s (seed %d)", k + 1, len(cells), cell.label, cell.seed)
        results.append(_run_cell(cc, cell, out / "cells" / cell.id, texts, progress))
    from midblock.evaluation.compare_table import build_rows, write_outputs

    rows = build_rows(cc, results, base)
    write_outputs(cc, rows, out, wall_s=time.perf_counter() - t0)
    return {"rows": rows, "out": str(out), "config": asdict(cc)}
