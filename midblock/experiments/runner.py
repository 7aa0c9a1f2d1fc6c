"""``compare``: run every cell of a grid (train, evaluate, measure forgetting) and write one table.

A cell is one arm at one seed. Its training run lives in ``cells/<label>__s<seed>-<train key>/train``,
where the key hashes the training fingerprint: the arm's label, the seed, the base model's files, the
training rows, the tuning settings, every training setting and the package version. Each evaluation of
that run lives beside it in ``eval-<eval key>/`` (per-item results in its ``eval/``), keyed on the
evaluation fingerprint: the test (or dev) rows, the few-shot rows, every evaluation setting and the
forgetting corpus. ``cell.json`` in that directory is written last. So:

- a rerun with the same settings skips finished cells and resumes interrupted ones (training from its
  checkpoint, evaluation from its per-item file);
- a rerun with any setting changed gets new directories and recomputes: a result made otherwise is never
  reused, and two arms never share a directory (the label is part of the key);
- a training run that two phases need (the learning-rate search's run at the chosen rate is the first
  seed's run of the main grid) is trained once and evaluated twice.

Optional phases before the grid: ``auto_analysis`` analyses the base and resolves arms with band ``auto``
to the band it recommends; ``lr_search`` trains every arm at each rate of a grid (the arm's own ``lrs`` or
the shared one) on the first seed, scores it on the dev split and keeps the best rate per arm. Outputs:
``compare.csv``, ``compare.md``, ``compare.png`` and ``compare.json`` (with provenance), from
:mod:`midblock.reporting.compare_report`.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.aliases import stored
from midblock.analysis.analyze import AnalyzeConfig, analyze
from midblock.data import load_rows
from midblock.data.general import corpus_name, general_texts, is_bundled
from midblock.data.tasks import builtin_tasks, check_dev_disjoint, data_version
from midblock.errors import MidblockError
from midblock.evaluation.evaluate import EvalConfig, evaluate_model
from midblock.evaluation.ppl import load_texts, token_loss
from midblock.experiments import cost
from midblock.experiments.grid import Cell, CompareConfig
from midblock.experiments.table import build_rows, correctness
from midblock.fingerprint import check_or_record, file_digest, make, rows_digest, spec_identity
from midblock.io import RunDir, fresh_output_dir, read_json, read_jsonl_tolerant, write_json
from midblock.models import load_model
from midblock.models.introspect import get_layout
from midblock.models.loading import RUN_MANIFEST
from midblock.models.skeleton import load_skeleton
from midblock.reporting.compare_report import write_lr_search, write_outputs
from midblock.reporting.pareto import pareto_point, plot_pareto
from midblock.tuning.precision import default_device_type, resolve_precision, warn_if_emulated
from midblock.tuning.train import SUMMARY_FILE, remove_checkpoints, train

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CELL_FILE = "cell.json"


def general_corpus(name: str = "general") -> list[str]:
    """A bundled general-text corpus that measures forgetting (see :mod:`midblock.data.general`)."""
    return general_texts(name)


def forgetting_texts(cc: CompareConfig) -> list[str] | None:
    """The texts whose perplexity measures forgetting; loaded (and so validated) before any training."""
    if not cc.forgetting:
        return None
    src, limit = cc.forgetting["data"], cc.forgetting.get("limit")
    if is_bundled(src):
        return general_texts(src, limit)
    if src in builtin_tasks():  # a task's test rows as text (arith ignores eval_data: its rows are built in)
        rows = load_rows(src, "test", cc.eval_data, limit=limit)
        return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    return load_texts(src, limit)


class Keys:
    """The fingerprints of a grid's runs, from inputs read once per ``compare`` call."""

    def __init__(self, cc: CompareConfig, texts: list[str] | None) -> None:
        self.cc = cc
        self.model = spec_identity(cc.model)
        self.train_data = rows_digest(self._train_rows(cc.train.get("train_rows")))
        if cc.lr_search:  # the search's dev items never trained on (checked, whatever data each side names)
            dev = load_rows(cc.eval_task, "dev", cc.eval_data, dev_size=cc.eval_dev_size)
            check_dev_disjoint(self._train_rows(None), dev, f"{cc.eval_task} dev")
        self.forgetting = None
        if texts:  # the corpus's version (a bundled one's versioned name, a task's data version) and contents
            src = cc.forgetting["data"]
            corpus = corpus_name(src) if is_bundled(src) else data_version(src) if src in builtin_tasks() else "file"
            self.forgetting = {"settings": cc.forgetting, "corpus": corpus, "texts": rows_digest(texts)}
        self._rows: dict[tuple[str, int | None, int], str] = {}

    def _train_rows(self, limit: int | None) -> list[dict[str, Any]]:
        return load_rows(self.cc.task, "train", self.cc.data, limit=limit, dev_size=self.cc.train_dev_size)

    def training(self, cell: Cell) -> dict[str, Any]:
        tc = self.cc.train_config(cell, "cell")
        settings = {k: v for k, v in tc.fingerprint().items() if k != "model"}
        # keyed on what the run computes in: `auto` means bf16 on one machine and fp32 on another
        settings["precision"] = resolve_precision(tc.precision)
        data = self.train_data
        if "train_rows" in cell.train:  # an arm with its own training subset
            data = rows_digest(self._train_rows(cell.train["train_rows"]))
        arm = {"label": cell.label, "seed": cell.seed}
        version = data_version(self.cc.task)
        return make(arm=arm, model=self.model, data=data, data_version=version, training=settings)

    def evaluation(self, ecfg: EvalConfig | None) -> dict[str, Any]:
        evaluation = None
        if ecfg is not None:
            # the settings in the spelling cells were first keyed under (see midblock.aliases)
            evaluation = stored({k: v for k, v in asdict(ecfg).items() if k != "data"}, EvalConfig)
            evaluation["metric"] = self.cc.metric
            evaluation["rows"] = self._digest(ecfg.split, ecfg.eval_items, ecfg.dev_size)
            evaluation["shot_rows"] = self._digest("train", None, ecfg.train_dev_size) if ecfg.shots else None
            evaluation["data_version"] = data_version(self.cc.eval_task)
        return make(evaluation=evaluation, forgetting=self.forgetting)

    def _digest(self, split: str, limit: int | None, dev_size: int = 0) -> str:
        if (split, limit, dev_size) not in self._rows:
            rows = load_rows(self.cc.eval_task, split, self.cc.eval_data, limit=limit, dev_size=dev_size)
            self._rows[(split, limit, dev_size)] = rows_digest(rows)
        return self._rows[(split, limit, dev_size)]


@dataclass(frozen=True)
class RunControl:
    """How a comparison runs, never what it computes (in no key)."""

    progress: bool = True  # progress bars
    reuse_only: bool = False  # read finished cells only: a cell that would train or evaluate is an error


def _unfinished(what: str) -> MidblockError:
    return MidblockError(
        f"--reuse-only: {what} is not finished", hint="run the same compare without --reuse-only to finish it"
    )


def _train_cell(cc: CompareConfig, cell: Cell, tdir: Path, progress: bool) -> dict[str, Any]:
    """The cell's training run, finished or resumed. Nothing is deleted: an interrupted run resumes in place
    (``train --resume`` starts from step 0 when it stopped before its first checkpoint, and refuses a
    directory of other settings), and ``train`` takes the directory's lock before it writes, so a run that
    another process is training is refused ("in use by process N"), never removed."""
    if (tdir / "COMPLETED").exists() and (tdir / SUMMARY_FILE).exists():
        return read_json(tdir / SUMMARY_FILE)
    if not tdir.exists() and any(tdir.parent.glob(f"eval-*/{CELL_FILE}")):
        log.warning(
            "cell %s: its training run is not here (a saved state keeps results, not weights); training it again "
            "under the same key, so its evaluations come from two runs of the same settings",
            tdir.parent.name,
        )
    res = train(cc.train_config(cell, tdir, tdir.exists(), progress)).to_dict()
    if not res.get("stopped"):  # finished: its checkpoints (up to two, a full-parameter arm's ~GB) resume nothing
        remove_checkpoints(tdir)
    return res


def run_cell(
    cc: CompareConfig,
    keys: Keys,
    cell: Cell | None,
    root: Path,
    ecfg: EvalConfig | None,
    texts: list[str] | None,
    ctl: RunControl,
) -> dict[str, Any]:
    """Train (unless ``cell`` is None: the base model), evaluate with ``ecfg`` (None: skip) and measure
    forgetting on ``texts``; returns the cell's record, cached in its evaluation directory."""
    if cell is None:
        tfp = make(arm={"label": "base"}, model=keys.model)
        run_dir = root / "cells" / f"base-{tfp['key'][:10]}"
    else:
        tfp = keys.training(cell)
        run_dir = root / "cells" / f"{cell.slug}__s{cell.seed}-{tfp['key'][:10]}"
    efp = keys.evaluation(ecfg)
    if ctl.reuse_only and not (run_dir / f"eval-{efp['key'][:10]}" / CELL_FILE).exists():
        raise _unfinished(f"cell {run_dir.name}")  # before its directory is created or locked
    # One process per cell: the cell's lock is held while its fingerprint is checked, it trains and it is
    # evaluated, so a second compare on the same --out is refused here before it touches the cell.
    with RunDir(run_dir):
        return _run_locked_cell(cc, cell, run_dir, tfp, efp, ecfg, texts, ctl)


def _run_locked_cell(cc, cell, run_dir, tfp, efp, ecfg, texts, ctl: RunControl) -> dict[str, Any]:
    check_or_record(run_dir, tfp, "a comparison cell", has_results=(run_dir / "train").exists())
    edir = run_dir / f"eval-{efp['key'][:10]}"
    done = edir / CELL_FILE
    check_or_record(edir, efp, "a comparison cell's evaluation", has_results=done.exists())
    if done.exists():
        rec = read_json(done)
        rec["items"] = read_jsonl_tolerant(edir / "eval" / "items.jsonl")
        return rec | {"label": cell.label if cell else "base", "eval_dir": str(edir)}
    tres = _train_cell(cc, cell, run_dir / "train", ctl.progress) if cell is not None else None
    if tres and tres.get("stopped"):  # SIGINT/SIGTERM: the run checkpointed; the same command resumes it
        log.warning("stopped in cell %s; rerun the same command to resume", run_dir.name)
        raise KeyboardInterrupt
    spec = str(run_dir / "train") if cell is not None else cc.model
    # One load serves both measurements; a LoRA adapter is merged, which also makes decoding faster.
    model, tok = load_model(spec, merge=True)
    summary = {"items": []}
    if ecfg is not None:
        summary = evaluate_model(model, tok, ecfg, out=edir / "eval", model_spec=spec, progress=ctl.progress)
    ppl = forgetting_loss(cc, model, tok, texts, ctl.progress) if texts else None
    items = summary.pop("items")
    rec = {
        "label": cell.label if cell else "base",
        "seed": cell.seed if cell else None,
        "tuning": cell.tuning if cell else None,
        "train_overrides": cell.train if cell else None,
        "run_dir": str(run_dir / "train") if cell else None,
        "lr": cc.train_config(cell, run_dir).peak_lr if cell else None,
        "band": _trained_blocks(run_dir / "train") if cell else None,
        "fingerprint": {"training": tfp["key"], "evaluation": efp["key"]},
        "train": tres,
        "eval": summary if summary.get("scores") else None,
        "ppl": ppl,
    }
    write_json(done, rec)
    rec["items"] = items
    rec["eval_dir"] = str(edir)  # where the record lives (not stored in it: a directory can be moved)
    return rec


def forgetting_loss(
    cc: CompareConfig, model: nn.Module, tok: PreTrainedTokenizerBase, texts: list[str], progress: bool
) -> dict[str, Any]:
    """The loss of ``model`` on the forgetting ``texts`` with the grid's forgetting settings."""
    fm = cc.forgetting or {}
    bs, length = int(fm.get("batch_size", 8)), int(fm.get("max_length", 512))
    return token_loss(model, tok, texts, batch_size=bs, max_length=length, progress=progress)


def _trained_blocks(run_dir: Path) -> list[int] | None:

    p = run_dir / RUN_MANIFEST
    band = read_json(p).get("band") if p.exists() else None
    return band if isinstance(band, list) else None


def auto_analysis_config(cc: CompareConfig) -> AnalyzeConfig:
    """The base-model analysis behind band ``auto``: on the tuning data's train split (or dev), never test."""
    aa = cc.auto_analysis or {}
    return AnalyzeConfig(
        base=cc.model,
        datasets=[aa.get("data", cc.task)],
        split=aa.get("split", "train"),
        samples=aa.get("samples", 64),
        max_length=aa.get("max_length", 256),
    )


def resolve_auto_bands(
    cc: CompareConfig, out: Path, ctl: RunControl = RunControl()
) -> tuple[CompareConfig, dict[str, Any] | None]:
    """Arms with band ``auto`` and no analysis of their own: analyse the base (once, resumable) and train
    the band it recommends. The analysis directory is keyed on its settings, the model's files and the
    data, so a changed input analyses anew and a finished analysis is read back, not measured again."""
    auto = [m for m in cc.methods if m.get("band") == "auto" and not m.get("analysis")]
    if not auto or not cc.auto_analysis:
        return cc, None
    acfg = auto_analysis_config(cc)
    data = [file_digest(d) if Path(d).is_file() else d for d in acfg.datasets]
    adir = out / f"analysis-base-{make(model=spec_identity(cc.model), data=data, analysis=asdict(acfg))['key'][:10]}"
    done = RunDir(adir).completed and (adir / "results.json").exists()
    if not done and ctl.reuse_only:
        raise _unfinished(f"the base analysis behind band 'auto' ({adir.name})")
    res = read_json(adir / "results.json") if done else analyze(acfg, adir, resume=True)
    rec = res["recommended_band"]
    methods = [m | {"band": rec["spec"]} if m in auto else m for m in cc.methods]
    return replace(cc, methods=methods), rec


def search_learning_rates(
    cc: CompareConfig, keys: Keys, out: Path, ctl: RunControl, texts: list[str] | None = None
) -> tuple[CompareConfig, list]:
    """Train each arm at every rate of its grid (its own ``lrs``, else ``lr_search.lrs``) on the first seed,
    score on the dev split (and forgetting on ``texts``), and return the grid with each arm's best rate (ties:
    the smaller rate) and the search's records. A best rate at the lowest or highest rate of a grid of several
    goes one rate further out (the grid's own step at that end, marked ``extended``), up to
    ``lr_search.extend`` times per arm; a best rate still at an end is marked (``edge``) and logged: it may
    then lie outside the grid."""
    seed = cc.seeds[0]
    ecfg = cc.search_config()
    extend = int((cc.lr_search or {}).get("extend", 0))
    records, methods = [], []
    planned = sum(len(cc.arm_lrs(m)) for m in cc.methods)  # runs an extension adds are counted past it
    number = itertools.count(1)
    for m in cc.methods:
        (arm,) = cc.expand(m, seed)  # an arm with several bands would need a rate per band

        def at(lr: float, extended: bool, arm: Cell = arm) -> dict[str, Any]:
            k = f"{next(number)}/{planned}" + ("+" if extended else "")
            log.info("learning-rate search %s: %s at lr %g (seed %d, %s split)", k, arm.label, lr, seed, ecfg.split)
            # forgetting too, so accuracy against forgetting can be traced across rates
            rec = run_cell(cc, keys, replace(arm, train=arm.train | {"lr": lr}), out, ecfg, texts, ctl)
            c = correctness(rec, cc.metric)
            return rec | {"lr": lr, "dev_accuracy": sum(c.values()) / len(c), "extended": extended}

        mine = [at(lr, False) for lr in cc.arm_lrs(m)]
        for _ in range(extend):  # the best rate at an end of the grid: one rate further out, then look again
            nxt = beyond_edge(best_rate(mine), [r["lr"] for r in mine])
            if nxt is None:
                break
            log.info("learning-rate search: %s is best at an end of its grid; trying %g", arm.label, nxt)
            mine.append(at(nxt, True))
        best = best_rate(mine)
        edge = grid_edge(best, [r["lr"] for r in mine])
        if edge:
            log.warning("learning-rate search: %s chose %g, the %s rate of its grid", arm.label, best, edge)
        for r in mine:
            r["chosen"] = r["lr"] == best
            r["edge"] = edge if r["chosen"] else None
        records += mine
        methods.append(m | {"train": dict(m.get("train") or {}) | {"lr": best}})
    return replace(cc, methods=methods), records


def best_rate(searched: list[dict[str, Any]]) -> float:
    """The rate with the highest dev accuracy among search records; a tie goes to the smaller rate."""
    scores = {r["lr"]: r["dev_accuracy"] for r in searched}
    return max(sorted(scores), key=lambda lr: scores[lr])


def beyond_edge(lr: float, grid: list[float]) -> float | None:
    """The next rate past the end of ``grid`` that ``lr`` sits at, one step of the grid's own ratio at that
    end (factor-2 grids go on in factor 2), to 6 significant digits; None when ``lr`` is inside the grid."""
    edge = grid_edge(lr, grid)
    if edge is None:
        return None
    g = sorted(set(grid))
    nxt = g[0] * g[0] / g[1] if edge == "lowest" else g[-1] * g[-1] / g[-2]
    return float(f"{nxt:.6g}")


def grid_edge(lr: float, grid: list[float]) -> str | None:
    """``"lowest"`` or ``"highest"`` when ``lr`` is that end of a grid of several rates, else None."""
    if len(set(grid)) < 2:
        return None
    return "lowest" if lr == min(grid) else "highest" if lr == max(grid) else None


def compare(
    config: CompareConfig | dict[str, Any], out: str | Path, progress: bool = True, reuse_only: bool = False
) -> dict[str, Any]:
    """Run (or resume) every cell of the grid and write the comparison table. ``reuse_only``: compute
    nothing; rewrite the table from finished cells, and raise naming the first cell that is not finished.

    Returns ``{"rows", "out", "config", "cells", "base", "lr_search", "auto_band"}``: the table rows, every
    cell's record (label, seed, run directory, trained blocks, train summary, evaluation summary with
    per-item results, perplexity), the base model's record, the learning-rate search and the auto band.
    """
    cc = config if isinstance(config, CompareConfig) else CompareConfig.from_dict(dict(config))
    out = fresh_output_dir(out)
    cc.check_depth(get_layout(load_skeleton(cc.model)))  # every band and rate, before anything is created
    texts = forgetting_texts(cc)  # validated (and loaded) before any training
    keys = Keys(cc, texts)  # reads (and so validates) the training data
    ecfg = cc.eval_config()
    keys.evaluation(ecfg)  # ... and the test data
    warn_fixed_bf16(cc)  # before any work starts
    with RunDir(out):  # one compare per --out at a time ("in use by process N"); each cell has its own lock too
        announce_cost(cc, texts, out)
        return _run_grid(cc, keys, texts, ecfg, out, RunControl(progress, reuse_only))


def announce_cost(cc: CompareConfig, texts: list[str] | None, out: Path) -> dict[str, Any]:
    """Log the grid's work (and hours, where ``compare --estimate`` measured this grid's rates here) before
    the first cell, and return it."""
    work = cost.plan(cc, texts)
    est = out / cost.ESTIMATE_FILE
    saved = read_json(est) if est.is_file() else None
    same = bool(saved) and saved.get("grid") == cost.grid_key(cc)
    log.info("%s", cost.describe(cc, work, saved["hours"] if same else None, other_grid=bool(saved) and not same))
    return work


def estimate(config: CompareConfig | dict[str, Any], out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Count the grid's work, time each kind of work on this machine, and write ``cost_estimate.json`` in
    ``out`` (nothing else: no cell runs). Returns ``{"grid", "machine", "work", "rates", "hours"}``."""
    cc = config if isinstance(config, CompareConfig) else CompareConfig.from_dict(dict(config))
    out = fresh_output_dir(out)
    cc.check_depth(get_layout(load_skeleton(cc.model)))
    texts = forgetting_texts(cc)
    with RunDir(out):
        work = cost.plan(cc, texts)
        rates = cost.measure(cc, texts, progress)
        hours = cost.project(work, rates)
        rec = {"grid": cost.grid_key(cc), "machine": cost.machine(), "work": work, "rates": rates, "hours": hours}
        write_json(out / cost.ESTIMATE_FILE, rec)
    return rec


def _run_grid(cc: CompareConfig, keys: Keys, texts, ecfg, out: Path, ctl: RunControl) -> dict[str, Any]:
    """The phases of :func:`compare` (auto band, learning-rate search, base, cells, table), under its lock."""
    t0 = time.perf_counter()
    cc, auto_band = resolve_auto_bands(cc, out, ctl)
    search = []
    if cc.lr_search:
        cc, search = search_learning_rates(cc, keys, out, ctl, texts)
        write_lr_search([_search_row(r) for r in search], out, cc.metric)
    base = None
    if cc.include_base or texts:
        base = run_cell(cc, keys, None, out, ecfg if cc.include_base else None, texts, ctl)
    cells = cc.cells()
    results = []
    for k, cell in enumerate(cells):
        log.info("cell %d/%d: %s (seed %d)", k + 1, len(cells), cell.label, cell.seed)
        results.append(run_cell(cc, keys, cell, out, ecfg, texts, ctl))
    rows = build_rows(results, base, baseline=cc.baseline, metric=cc.metric)
    extra = {"lr_search": [_search_row(r) for r in search], "auto_band": auto_band, "num_layers": _num_layers(cc)}
    # the cells this table was made from: export reads these, never whatever else lies under cells/
    extra["table_cells"] = _cell_list(out, search, base, results)
    extra["pareto"] = pareto_points(cc, search, results, base)
    write_outputs(cc, rows, out, wall_s=time.perf_counter() - t0, extra=extra)
    plot_pareto(extra["pareto"], out / "pareto.png", f"{cc.model} on {cc.eval_task}: accuracy against forgetting")
    return {"rows": rows, "out": str(out), "config": asdict(cc), "cells": results, "base": base} | extra


def warn_fixed_bf16(cc: CompareConfig) -> bool:
    """A grid that fixes bf16 (a reproduction preset keeps the published run's precision) on a CPU that
    emulates it: say so, with the expected slowdown, before anything runs. True when it warned."""
    asked = {(cc.train | c.train).get("precision", "auto") for c in cc.cells()}
    source = "the grid's precision bf16 (a reproduction preset such as band-landscape keeps the published run's)"
    return "bf16" in asked and warn_if_emulated("bf16", default_device_type(), source=source)


def _num_layers(cc: CompareConfig) -> int:

    return get_layout(load_skeleton(cc.model)).num_layers


def _cell_list(out: Path, search: list, base: dict[str, Any] | None, results: list) -> list[dict[str, str]]:
    """``{"phase", "dir"}`` of every evaluated cell this comparison used (``dir``: relative to ``out``)."""
    phased = [("search", r) for r in search] + ([("base", base)] if base else []) + [("main", r) for r in results]
    return [{"phase": ph, "dir": str(Path(r["eval_dir"]).relative_to(out))} for ph, r in phased]


def _search_row(rec: dict[str, Any]) -> dict[str, Any]:
    keep = ("lr", "dev_accuracy", "chosen", "edge", "extended")
    ppl = (rec.get("ppl") or {}).get("ppl")
    return {
        "arm": rec["label"],
        "n": len(rec["items"]),
        **{k: rec[k] for k in keep},
        "ppl": ppl,
        "run_dir": rec["run_dir"],
    }


def pareto_points(
    cc: CompareConfig, search: list[dict[str, Any]], cells: list[dict[str, Any]], base: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """One point per trained cell with a forgetting measurement: the search's (dev accuracy) and the grid's
    (test accuracy), forgetting relative to the base's perplexity where the base was measured."""
    base_ppl = ((base or {}).get("ppl") or {}).get("ppl")
    points = []
    for split, recs in (("dev", search), ("test", cells)):
        for rec in recs:
            c = correctness(rec, cc.metric)
            point = pareto_point(rec, sum(c.values()) / len(c) if c else 0.0, split, base_ppl)
            if point is not None:
                points.append(point)
    return points
