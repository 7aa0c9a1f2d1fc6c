"""``compare``: run every cell of a grid (train, evaluate, measure forgetting) and write one table.

Each cell lives in ``cells/<label>__s<seed>-<hash>/``, where the hash is the key of the cell's fingerprint:
the base model's files, the training and test data (their rows), the arm's tuning settings, every training
and evaluation setting, the forgetting corpus and the package version. A rerun with the same settings finds
its finished cells (``cell.json`` is written last) and resumes interrupted ones (training from its
checkpoint, evaluation from its per-item file); a rerun with any setting changed gets new directories and
recomputes, never reusing a result made otherwise. Two arms can never share a directory: the label is part
of the fingerprint.

Outputs: ``compare.csv``, ``compare.md``, ``compare.png`` and ``compare.json`` (with provenance), from
:mod:`midblock.experiments.table`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from midblock.data import load_rows
from midblock.evaluation.evaluate import evaluate_model
from midblock.evaluation.ppl import load_texts, token_loss
from midblock.experiments.grid import Cell, CompareConfig
from midblock.experiments.table import build_rows
from midblock.fingerprint import FINGERPRINT_FILE, check_or_record, make, rows_digest, spec_identity
from midblock.io import fresh_output_dir, read_json, read_jsonl_tolerant, write_json
from midblock.models import load_model
from midblock.reporting.compare_report import write_outputs
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.train import SUMMARY_FILE, TrainConfig, train

log = logging.getLogger(__name__)

CELL_FILE = "cell.json"


def general_corpus() -> list[str]:
    """The bundled general-text corpus used to measure forgetting (our own sentences, one per line)."""
    text = resources.files("midblock.data").joinpath("corpora/general.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def forgetting_texts(cc: CompareConfig) -> list[str] | None:
    """The texts whose perplexity measures forgetting; loaded (and so validated) before any training."""
    if not cc.forgetting:
        return None
    src, limit = cc.forgetting["data"], cc.forgetting.get("limit")
    if src == "general":
        return general_corpus()[:limit]
    if src in ("gsm8k", "arith"):
        rows = load_rows(src, "test", cc.eval_data if src == "gsm8k" else None, limit=limit)
        return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    return load_texts(src, limit)


def _train_config(cc: CompareConfig, cell: Cell, tdir: Path, resume: bool = False, progress: bool = True):
    return TrainConfig(
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


class _Inputs:
    """What every cell's fingerprint shares, computed once per ``compare`` call."""

    def __init__(self, cc: CompareConfig, texts: list[str] | None) -> None:
        ecfg = cc.eval_config()
        self.model = spec_identity(cc.model)
        train_rows = load_rows(cc.task, "train", cc.data, limit=cc.train.get("limit"))
        self.train_data = rows_digest(train_rows)
        self.test_data = rows_digest(load_rows(cc.eval_task, "test", cc.eval_data, limit=cc.eval_limit))
        # few-shot exemplars come from the evaluation task's train split
        self.shot_data = rows_digest(load_rows(cc.eval_task, "train", cc.eval_data)) if ecfg.shots else None
        self.evaluation = {k: v for k, v in asdict(ecfg).items() if k != "data"} | {"metric": cc.metric}
        self.forgetting = {"settings": cc.forgetting, "texts": rows_digest(texts)} if texts else None

    def cell_fingerprint(self, cc: CompareConfig, cell: Cell | None) -> dict[str, Any]:
        training = None
        if cell is not None:
            tc = _train_config(cc, cell, Path("cell"))
            training = {k: v for k, v in tc.fingerprint().items() if k != "model"}
        return make(
            arm={"label": cell.label, "seed": cell.seed} if cell else {"label": "base"},
            model=self.model,
            data={"train": self.train_data, "test": self.test_data, "shots": self.shot_data},
            training=training,
            evaluation=self.evaluation,
            forgetting=self.forgetting,
        )


def cell_dir(root: Path, cell: Cell | None, fp: dict[str, Any]) -> Path:
    name = f"{cell.slug}__s{cell.seed}" if cell else "base"
    return root / "cells" / f"{name}-{fp['key'][:10]}"


def _train_cell(cc: CompareConfig, cell: Cell, tdir: Path, progress: bool) -> dict[str, Any]:
    if (tdir / "COMPLETED").exists() and (tdir / SUMMARY_FILE).exists():
        return read_json(tdir / SUMMARY_FILE)
    resume = (tdir / "checkpoints").is_dir() and any((tdir / "checkpoints").iterdir())
    if tdir.exists() and not resume:
        shutil.rmtree(tdir)  # interrupted before its first checkpoint: start the cell's training over
    return train(_train_config(cc, cell, tdir, resume, progress)).to_dict()


def run_cell(
    cc: CompareConfig, cell: Cell | None, cdir: Path, fp: dict[str, Any], texts: list[str] | None, progress: bool
) -> dict[str, Any]:
    """Train (unless ``cell`` is None: the base model), evaluate and measure forgetting; cached in ``cell.json``."""
    done = cdir / CELL_FILE
    check_or_record(cdir, fp, "a comparison cell", has_results=done.exists())
    if done.exists():
        rec = read_json(done)
        rec["items"] = read_jsonl_tolerant(cdir / "eval" / "items.jsonl")
        return rec
    tres = _train_cell(cc, cell, cdir / "train", progress) if cell is not None else None
    spec = str(cdir / "train") if cell is not None else cc.model
    # One load serves both measurements; a LoRA adapter is merged, which also makes decoding faster.
    model, tok = load_model(spec, merge=True)
    summary = {"items": []}
    if cell is not None or cc.include_base:
        summary = evaluate_model(
            model, tok, cfg=cc.eval_config(), out_dir=cdir / "eval", model_spec=spec, progress=progress
        )
    ppl = None
    if texts:
        fm = cc.forgetting or {}
        ppl = token_loss(
            model,
            tok,
            texts,
            batch_size=int(fm.get("batch_size", 8)),
            max_length=int(fm.get("max_length", 512)),
            progress=progress,
        )
    items = summary.pop("items")
    rec = {
        "label": cell.label if cell else "base",
        "seed": cell.seed if cell else None,
        "tuning": cell.tuning if cell else None,
        "run_dir": str(cdir / "train") if cell else None,
        "band": _trained_blocks(cdir / "train") if cell else None,
        "fingerprint": fp["key"],
        "train": tres,
        "eval": summary if summary.get("scores") else None,
        "ppl": ppl,
    }
    write_json(done, rec)
    rec["items"] = items
    return rec


def _trained_blocks(run_dir: Path) -> list[int] | None:
    from midblock.models.loading import RUN_MANIFEST

    p = run_dir / RUN_MANIFEST
    band = read_json(p).get("band") if p.exists() else None
    return band if isinstance(band, list) else None


def compare(config: CompareConfig | dict[str, Any], out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every cell of the grid and write the comparison table.

    Returns ``{"rows", "out", "config", "cells"}``: the table rows, and every cell's record (label, seed,
    run directory, trained blocks, train summary, evaluation summary with per-item results, perplexity).
    """
    cc = config if isinstance(config, CompareConfig) else CompareConfig.from_dict(dict(config))
    out = fresh_output_dir(out)
    texts = forgetting_texts(cc)  # validated (and loaded) before any training
    inputs = _Inputs(cc, texts)  # reads (and so validates) the training and test data
    t0 = time.perf_counter()
    base = None
    current = set()
    if cc.include_base or texts:
        fp = inputs.cell_fingerprint(cc, None)
        current.add(cell_dir(out, None, fp).name)
        base = run_cell(cc, None, cell_dir(out, None, fp), fp, texts, progress)
    cells = cc.cells()
    results = []
    for k, cell in enumerate(cells):
        fp = inputs.cell_fingerprint(cc, cell)
        cdir = cell_dir(out, cell, fp)
        current.add(cdir.name)
        log.info("cell %d/%d: %s (seed %d) in %s", k + 1, len(cells), cell.label, cell.seed, cdir.name)
        results.append(run_cell(cc, cell, cdir, fp, texts, progress))
    _note_stale_cells(out, current)
    rows = build_rows(results, base, baseline=cc.baseline, metric=cc.metric)
    write_outputs(cc, rows, out, wall_s=time.perf_counter() - t0)
    return {"rows": rows, "out": str(out), "config": asdict(cc), "cells": results, "base": base}


def _note_stale_cells(out: Path, current: set[str]) -> None:
    stale = [p.name for p in (out / "cells").iterdir() if p.is_dir() and p.name not in current]
    stale = [n for n in stale if (out / "cells" / n / FINGERPRINT_FILE).exists()]
    if stale:
        log.info("%d cell directories from other settings left untouched: %s", len(stale), ", ".join(sorted(stale)))
