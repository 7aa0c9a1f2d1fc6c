"""Raw results of a comparison in a small, committable form, and the table re-derived from them.

``export(out, dest)`` writes, from a finished ``compare`` directory:

- ``cells.jsonl``: one line per evaluated cell (phase ``main``, ``search`` or ``base``): arm, seed,
  learning rate, trained blocks, tuning settings, training summary, scores, perplexity and fingerprints;
- ``items.csv``: one line per (cell, test item): whether each extractor scored it correct;
- ``compute.md``: where the cells ran (CPU, native bf16, threads, precision) and for how long
  (:func:`compute_ledger`; a study that spans sessions on different machines records each);
- copies of ``compare.md``, ``compare.json``, ``lr_search.md`` and the figure;
- ``analyses/NAME.metrics.csv`` and ``NAME.results.json`` of every finished layer-wise analysis in the
  comparison (``analysis-*``: the base analysis of band ``auto``, and the analyses of tuned runs that
  ``studies/analyze-arms.sh`` adds), and ``profiles.md``, ``profiles.json``, ``profiles.png`` from
  ``profiles/`` (``midblock profiles`` over those analyses), where they exist.

``save_state(out, dest)`` copies what a partly finished comparison needs to resume elsewhere without
redoing its finished cells (their fingerprints, records and per-item results, and the base analysis of
band ``auto``), small enough to commit; copy it back into an output directory and rerun the same grid.

``derive(dest)`` rebuilds the comparison rows from those two files alone with the engine's own statistics
(:func:`midblock.experiments.table.build_rows`: seed-aware intervals, multiplicity-adjusted differences,
forgetting intervals where the cells carry per-text log-likelihoods), so anyone can check the published
table, or take the paired differences against another arm::

    python -m midblock.experiments.export derive docs/results/band-landscape
    python -m midblock.experiments.export derive docs/results/band-landscape paper
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from midblock.errors import MidblockError
from midblock.experiments.table import build_rows, pooled_rows
from midblock.io import RunDir, fresh_output_dir, read_json, read_jsonl_tolerant, write_bytes, write_text

_KEEP_TRAIN = (
    "steps",
    "final_loss",
    "median_step_s",
    "peak_mem_bytes",
    "peak_mem_kind",
    "trainable_params",
    "rank_units",
    "scaling",
    "backward_depth",
    "wall_s",
    "precision",  # fp32 or bf16, as the run computed
    "selection",  # what a selection strategy trained (the table's blocks column names it, as compare's does)
)


# The files ``export`` writes into DEST; anything else there (a README, notes) is never touched.
_COPIED = ("compare.md", "compare.json", "lr_search.md", "compare.png", "landscape.png", "pareto.png")  # from compare
_PROFILES = ("profiles.md", "profiles.json", "profiles.png")  # from the comparison's profiles/
_ANALYSES = "analyses"  # a folder: NAME.metrics.csv and NAME.results.json of each finished analysis-NAME
_EXPORT_FILES = ("cells.jsonl", "items.csv", *_COPIED, "compute.md", *_PROFILES, _ANALYSES)
_ITEM_COLUMNS = ["phase", "arm", "seed", "lr", "index", "correct"]
_PHASES = ("main", "search", "base")


def _records(out: Path, meta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(phase, record) of each cell the comparison's table was made from, as ``compare.json`` lists them.

    Only those: a directory under ``cells/`` from an earlier grid on the same ``--out`` (other steps, a
    removed arm) stays on disk for reuse but never enters an export."""
    listed = meta.get("table_cells")
    if not isinstance(listed, list):
        raise MidblockError(
            f"{out / 'compare.json'} does not list the cells of its table (written by an older midblock)",
            hint="rerun the same compare command on this --out (finished cells are reused), then export",
        )
    root = (out / "cells").resolve()
    recs = []
    for c in listed:
        if not (isinstance(c, dict) and c.get("phase") in _PHASES and isinstance(c.get("dir"), str)):
            raise MidblockError(f"{out / 'compare.json'} lists a cell as {c!r}", hint="rerun compare")
        edir = out / c["dir"]
        if not edir.resolve().is_relative_to(root):
            raise MidblockError(f"{out / 'compare.json'} lists a cell outside {out / 'cells'}: {c['dir']}")
        if not (edir / "cell.json").is_file():
            raise MidblockError(f"{edir / 'cell.json'} is missing", hint="rerun the same compare command")
        rec = read_json(edir / "cell.json", dict)
        rec["items"] = read_jsonl_tolerant(edir / "eval" / "items.jsonl")
        rec["logged_step_s"] = _logged_step_s(edir.parent / "train")
        recs.append((c["phase"], rec))
    return recs


def _logged_step_s(run: Path) -> float | None:
    """The summed step seconds of a training run's log (every segment of a resumed run), or None without one
    (a cell reused from a saved state has no training run here)."""
    log = run / "train_log.jsonl"
    if not log.is_file():
        return None
    return float(sum(r["step_s"] for r in read_jsonl_tolerant(log) if isinstance(r.get("step_s"), (int, float))))


def _items_digest(pairs: list[tuple[int, int]]) -> str:
    """A cell's (item index, correct) pairs, hashed: derive checks ``items.csv`` against it."""
    return hashlib.sha256(json.dumps(sorted(pairs)).encode()).hexdigest()[:16]


def _check_dest(out: Path, dest: Path) -> None:
    """DEST is a directory that is empty, new, or a previous export: files export did not write are never
    replaced (other files there, such as a README, are left alone)."""
    fresh_output_dir(dest, flag="export destination")
    if dest.exists() and dest.resolve() == out.resolve():
        raise MidblockError(f"export destination {dest} is the comparison itself", hint="choose another DEST")
    clash = [n for n in _EXPORT_FILES if (dest / n).exists()]
    if clash and not _is_export(dest):
        raise MidblockError(
            f"export destination {dest} holds {clash[0]}, which export did not write",
            hint="choose an empty or new DEST",
        )


def _is_export(dest: Path) -> bool:
    """Whether ``dest`` holds an earlier export: its two raw files, in their format."""
    try:
        with open(dest / "items.csv", newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        first = (dest / "cells.jsonl").read_text(encoding="utf-8").split("\n", 1)[0]
        return header == _ITEM_COLUMNS and isinstance(json.loads(first), dict) and "phase" in json.loads(first)
    except (OSError, ValueError):
        return False


def export(out: str | Path, dest: str | Path) -> Path:
    """Write ``cells.jsonl`` and ``items.csv`` (plus the tables and figure) of ``out`` into ``dest``."""
    out, dest = Path(out), Path(dest)
    if not (out / "compare.json").is_file():
        raise MidblockError(f"{out} holds no finished comparison (no compare.json)", hint="run compare first")
    meta = read_json(out / "compare.json", dict)
    metric = (meta.get("config") or {}).get("metric")
    if not isinstance(metric, str):
        raise MidblockError(f"{out / 'compare.json'} names no metric", hint="rerun compare")
    _check_dest(out, dest)
    cells: list[dict[str, Any]] = []
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_ITEM_COLUMNS)
    for phase, rec in _records(out, meta):
        slim = {k: rec.get(k) for k in ("label", "seed", "lr", "band", "tuning", "fingerprint", "ppl")}
        slim["train"] = {k: (rec.get("train") or {}).get(k) for k in _KEEP_TRAIN} if rec.get("train") else None
        if slim["train"] is not None and rec.get("logged_step_s") is not None:
            slim["train"]["logged_step_s"] = rec["logged_step_s"]
        slim["scores"] = (rec.get("eval") or {}).get("scores")
        slim["computed"] = computed_on(rec)
        try:
            pairs = [(int(it["index"]), int(bool(it["scores"][metric]["correct"]))) for it in rec["items"]]
        except (KeyError, TypeError, ValueError) as e:
            raise MidblockError(
                f"a per-item result of cell {rec.get('label')!r} lacks {e}", hint="rerun compare"
            ) from e
        n = ((slim["scores"] or {}).get(metric) or {}).get("n")
        if n is not None and n != len(pairs):
            raise MidblockError(
                f"cell {rec.get('label')!r} (seed {rec.get('seed')}) has {len(pairs)} per-item results, its scores {n}",
                hint="rerun the same compare command to finish it",
            )
        slim["items_digest"] = _items_digest(pairs)
        cells.append({"phase": phase, **slim})
        for index, correct in pairs:
            w.writerow([phase, rec["label"], rec.get("seed"), rec.get("lr"), index, correct])
    dest.mkdir(parents=True, exist_ok=True)
    with RunDir(dest):  # one writer at a time
        write_text(dest / "cells.jsonl", "".join(json.dumps(c) + "\n" for c in cells))
        write_text(dest / "items.csv", buf.getvalue())
        write_text(dest / "compute.md", render_ledger(compute_ledger(cells)))
        for name in _COPIED:
            if (out / name).exists():
                write_bytes(dest / name, (out / name).read_bytes())
        _export_analyses(out, dest)
    return dest


def _finished_analyses(out: Path) -> list[Path]:
    """The comparison's finished layer-wise analyses: the base analysis of band ``auto`` and the analyses of
    tuned runs that ``studies/analyze-arms.sh`` adds (``analysis-*`` holding ``COMPLETED``)."""
    return sorted(a for a in out.glob("analysis-*") if (a / "COMPLETED").is_file())


def _export_analyses(out: Path, dest: Path) -> None:
    """The finished layer-wise analyses' tables (not their caches or figures) and the profiles over them."""
    for a in _finished_analyses(out):
        (dest / _ANALYSES).mkdir(exist_ok=True)
        for name in ("metrics.csv", "results.json"):
            if (a / name).is_file():
                write_bytes(dest / _ANALYSES / f"{a.name}.{name}", (a / name).read_bytes())
    for name in _PROFILES:
        if (out / "profiles" / name).is_file():
            write_bytes(dest / name, (out / "profiles" / name).read_bytes())


def computed_on(rec: dict[str, Any]) -> dict[str, Any] | None:
    """Where and when a cell was evaluated (its evaluation's provenance: CPU model, native bf16, GPUs, torch
    threads), the training precision, and the evaluation's wall time; None for a record without provenance."""
    ev = rec.get("eval") or {}
    prov = ev.get("provenance") or {}
    hw = prov.get("hardware") or {}
    if not hw:
        return None
    cpu = hw.get("cpu") or {}
    return {
        "cpu": cpu.get("model") or hw.get("machine"),
        "native_bf16": cpu.get("native_bf16"),
        "gpus": hw.get("cuda_devices"),
        "torch_threads": hw.get("torch_threads"),
        "precision": (rec.get("train") or {}).get("precision"),
        "time_utc": prov.get("time_utc"),
        "eval_wall_s": ev.get("wall_s"),
    }


LEDGER_FIELDS = ("cpu", "native_bf16", "gpus", "torch_threads", "precision")


def compute_ledger(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exported cells grouped by where they ran (:data:`LEDGER_FIELDS` of their ``computed`` record; cells
    exported without one form a group of ``None``): the number of cells, training hours (a training that
    two evaluations share, such as the rate search's run at the chosen rate, counted once; one trained again
    under the same key, its record differing because the first run's weights were lost, counted again; its wall
    time, or its logged step seconds where they are more: a run resumed by an earlier midblock kept only its
    last segment's wall time), evaluation hours
    (decoding; forgetting texts are not timed), and the first and last evaluation time."""
    groups: dict[tuple, dict[str, Any]] = {}
    trained: set[tuple[str, str]] = set()  # (training fingerprint, its record): one training, however shared
    for c in cells:
        comp = c.get("computed") or {}
        key = tuple(tuple(v) if isinstance(v, list) else v for v in (comp.get(f) for f in LEDGER_FIELDS))
        g = groups.setdefault(key, {"cells": 0, "train_h": 0.0, "eval_h": 0.0, "times": []})
        g["cells"] += 1
        run = ((c.get("fingerprint") or {}).get("training"), json.dumps(c.get("train"), sort_keys=True))
        if c.get("train") and run not in trained:
            trained.add(run)
            g["train_h"] += train_seconds(c["train"]) / 3600
        g["eval_h"] += float(comp.get("eval_wall_s") or 0.0) / 3600
        if comp.get("time_utc"):
            g["times"].append(comp["time_utc"])
    out = []
    for key, g in groups.items():
        times = sorted(g.pop("times"))
        out.append(
            dict(zip(LEDGER_FIELDS, key))
            | g
            | {"first": times[0] if times else None, "last": times[-1] if times else None}
        )
    return out


def train_seconds(train: dict[str, Any]) -> float:
    """An exported training's hours for the ledger, in seconds: its wall time, or the sum of its logged step
    times where that is larger (a resumed run whose summary kept only its last segment)."""
    return max(float(train.get("wall_s") or 0.0), float(train.get("logged_step_s") or 0.0))


def render_ledger(ledger: list[dict[str, Any]]) -> str:
    """``compute.md``: one row per machine and setting, and the total."""
    lines = [
        "# Where the cells ran",
        "",
        "From each cell's evaluation record; a cell's training ran on the same machine unless it was reused from "
        "an earlier run. Training hours count a training that several cells share once, and one trained again under "
        "the same key (its first weights lost) each time it ran (its wall time, or its logged step times "
        "where more: a run resumed by an earlier midblock kept only its last segment's wall time); evaluation "
        "hours are decoding time "
        "(forgetting texts are not timed).",
        "",
        "| CPU | native bf16 | GPUs | torch threads | precision | cells | training h | evaluation h | first | last |",
        "|---|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for r in ledger:
        gpus = ", ".join(r["gpus"]) if r["gpus"] else "-"
        shown = ["not recorded" if r["cpu"] is None else r["cpu"], _yes_no(r["native_bf16"]), gpus]
        shown += [_dash(r["torch_threads"]), _dash(r["precision"]), str(r["cells"])]
        shown += [f"{r['train_h']:.2f}", f"{r['eval_h']:.2f}", _dash(r["first"]), _dash(r["last"])]
        lines.append("| " + " | ".join(shown) + " |")
    total = [sum(r[k] for r in ledger) for k in ("cells", "train_h", "eval_h")]
    lines.append(f"| total | | | | | {total[0]} | {total[1]:.2f} | {total[2]:.2f} | | |")
    return "\n".join(lines) + "\n"


def _yes_no(v: Any) -> str:
    return "-" if v is None else "yes" if v else "no"


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


_STATE_FILES = (
    "fingerprint.json",
    "cell.json",
    "items.jsonl",
    "summary.json",
    "results.json",
    "metrics.csv",
    "COMPLETED",
)


# what loads a finished LoRA training run as a model (``load_model(RUN)``): its manifest and its adapter
_RUN_FILES = (
    "midblock_run.json",
    "COMPLETED",
    "adapter_config.json",
    "adapter_model.safetensors",
    "midblock_adapter.json",
)


def save_state(out: str | Path, dest: str | Path, adapters: bool = False) -> int:
    """Copy the finished cells' small files (and the finished analyses) of ``out`` into ``dest``; returns the
    number of finished cells. Training runs are not copied (a finished cell never trains again), except with
    ``adapters``: the LoRA adapter of each finished cell evaluated on a split other than dev (the cells a table
    reports), which a study's analyses load after the grid is done, perhaps in another session on another disk.
    Checkpoints and full-parameter runs are never copied."""
    out, dest = Path(out), Path(dest)
    if not (out / "cells").is_dir():
        raise MidblockError(f"{out} holds no comparison cells (no cells/)", hint="pass a compare --out directory")
    fresh_output_dir(dest, flag="state destination")
    if dest.exists() and dest.resolve() == out.resolve():
        raise MidblockError(f"state destination {dest} is the comparison itself", hint="choose another DEST")
    finished = [f.parent for f in (out / "cells").glob("*/eval-*/cell.json")]
    keep = [d / n for d in finished for n in ("cell.json", "fingerprint.json", "eval/items.jsonl", "eval/summary.json")]
    keep += [d.parent / "fingerprint.json" for d in finished]
    # the finished analyses: their tables, not their caches (an unfinished one starts again)
    tables = ("results.json", "metrics.csv", "COMPLETED", "fingerprint.json")
    keep += [a / n for a in _finished_analyses(out) for n in tables]
    names = _STATE_FILES + (_RUN_FILES if adapters else ())
    if adapters:
        keep += [f for d in finished if _reported(d) for f in _adapter_files(d.parent / "train")]
    # every destination is worked out before the first write: a path that does not fit fails with nothing copied
    copies = {f: dest / f.relative_to(out) for f in keep if f.exists() and f.name in names}
    for f, target in copies.items():
        write_bytes(target, f.read_bytes())  # only these names, each replaced atomically
    return len(finished)


def _reported(evaluation: Path) -> bool:
    """Whether a finished cell's evaluation is one a table reports: on a split other than the rate search's dev."""
    fp = read_json(evaluation / "fingerprint.json", dict)
    return (fp.get("evaluation") or {}).get("split") not in (None, "dev")


def _adapter_files(run: Path) -> list[Path]:
    """A finished LoRA training run's manifest and adapter files (none for an unfinished or full-parameter run)."""
    manifest = run / "midblock_run.json"
    if not (run / "COMPLETED").exists() or not manifest.exists():
        return []
    from midblock.models.loading import run_file

    m = read_json(manifest, dict)
    if not m.get("adapter") or m.get("delta"):
        return []
    found = run_file(run, m["adapter"], "adapter")  # confined to the run: a manifest is data
    # spelled under ``run`` as given (run_file resolves it): the caller places each file relative to its --from
    found = run / found.relative_to(run.resolve())
    return [manifest, run / "COMPLETED", *(found / n for n in _RUN_FILES if (found / n).is_file())]


def _read_cells(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MidblockError(f"{path} does not exist", hint="export a comparison there first")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MidblockError(f"{path} is not UTF-8 text") from None
    cells = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            c = json.loads(line)
        except json.JSONDecodeError as e:
            raise MidblockError(f"{path}:{n}: invalid JSON ({e.msg})", hint="export it again") from None
        if not isinstance(c, dict) or c.get("phase") not in _PHASES or not isinstance(c.get("label"), str):
            raise MidblockError(f"{path}:{n}: not an exported cell (needs phase and label)", hint="export it again")
        cells.append(c)
    if not cells:
        raise MidblockError(f"{path} holds no cell", hint="export a finished comparison")
    return cells


def _key(phase: Any, arm: Any, seed: Any, lr: Any) -> tuple[str, str, str, str]:
    """A cell's identity in ``items.csv``: as the CSV writer wrote it (None is the empty string)."""
    return tuple("" if v is None else str(v) for v in (phase, arm, seed, lr))  # type: ignore[return-value]


def _read_items(path: Path) -> dict[tuple, list[tuple[int, int]]]:
    if not path.is_file():
        raise MidblockError(f"{path} does not exist", hint="export a comparison there first")
    items: dict[tuple, list[tuple[int, int]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != _ITEM_COLUMNS:
                raise MidblockError(
                    f"{path} has columns {reader.fieldnames}, not {','.join(_ITEM_COLUMNS)}", hint="export it again"
                )
            for n, r in enumerate(reader, start=2):
                if r["correct"] not in ("0", "1") or not (r["index"] or "").isdigit():
                    raise MidblockError(f"{path}:{n}: index {r['index']!r}, correct {r['correct']!r}")
                key = _key(r["phase"], r["arm"], r["seed"], r["lr"])
                items.setdefault(key, []).append((int(r["index"]), int(r["correct"])))
    except UnicodeDecodeError:
        raise MidblockError(f"{path} is not UTF-8 text") from None
    except csv.Error as e:
        raise MidblockError(f"{path}: {e}", hint="export it again") from None
    return items


def _cell_items(c: dict[str, Any], pairs: list[tuple[int, int]], metric: str, where: Path) -> None:
    """``items.csv``'s rows of one cell agree with ``cells.jsonl``: its digest, else its counts."""
    what = f"{c['label']} (phase {c['phase']}, seed {c.get('seed')}, lr {c.get('lr')})"
    if c.get("items_digest") is not None:
        agree = c["items_digest"] == _items_digest(pairs)
    elif not c.get("scores"):  # not evaluated (the base measured for forgetting only): no item rows
        agree = not pairs
    else:  # an export made before the digest was recorded: the counts must agree
        sc = c["scores"].get(metric) or {}
        agree = sc.get("n") == len(pairs) and sc.get("correct") == sum(x for _, x in pairs)
    if not agree:
        raise MidblockError(
            f"{where / 'items.csv'} and cells.jsonl disagree about {what}", hint="one of them was edited; export again"
        )


def derive(dest: str | Path, baseline: str | None = None) -> list[dict[str, Any]]:
    """The comparison rows rebuilt from ``cells.jsonl`` and ``items.csv`` (main phase and base); the paired
    differences are taken against ``baseline`` (default: the comparison's own baseline arm).

    The two files are checked against each other first (each cell's per-item rows against its recorded
    digest or scores; no row without its cell, no cell listed twice) and the arms against the comparison's
    own table: a tampered row, a stray cell or an unknown arm is one line, never a table."""
    config, recs, base, order = read_export(dest)
    baseline = baseline or config.get("baseline")
    if baseline not in {r["label"] for r in recs}:
        raise MidblockError(f"unknown arm '{baseline}'", hint="choose one of " + ", ".join(order))
    return build_rows(recs, base, baseline=baseline, metric=config["metric"])


def read_export(dest: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """``(config, records, base, arms)`` of an export, checked as :func:`derive` describes: the main phase's
    records (per-item correctness under the comparison's metric) in table order, then seed order."""
    dest = Path(dest)
    if not (dest / "compare.json").is_file():
        raise MidblockError(f"{dest} holds no export (no compare.json)", hint="export a comparison there first")
    meta = read_json(dest / "compare.json", dict)
    config, rows = meta.get("config"), meta.get("rows")
    if not isinstance(config, dict) or not isinstance(config.get("metric"), str) or not isinstance(rows, list):
        raise MidblockError(f"{dest / 'compare.json'} is not a comparison's compare.json", hint="export it again")
    metric = config["metric"]
    cells = _read_cells(dest / "cells.jsonl")
    items = _read_items(dest / "items.csv")
    seen: set[tuple] = set()
    arms_seeds: set[tuple] = set()
    for c in cells:
        key = _key(c["phase"], c["label"], c.get("seed"), c.get("lr"))
        # one cell per key, and, outside the rate search, one per (arm, seed): two would be pooled as one arm
        if key in seen or (c["phase"] != "search" and key[:3] in arms_seeds):
            raise MidblockError(f"{dest / 'cells.jsonl'} lists cell {key[:3]} twice", hint="export it again")
        seen.add(key)
        arms_seeds.add(key[:3])
        _cell_items(c, items.get(key, []), metric, dest)
    stray = next((k for k in items if k not in seen), None)
    if stray is not None:
        raise MidblockError(f"{dest / 'items.csv'} holds rows of a cell cells.jsonl does not list: {stray}")
    order = list(dict.fromkeys(r.get("arm") for r in rows if isinstance(r, dict) and r.get("arm") != "base"))
    recs, base = [], None
    for c in cells:
        if c["phase"] == "search":
            continue
        pairs = items.get(_key(c["phase"], c["label"], c.get("seed"), c.get("lr")), [])
        rec = c | {"items": [{"index": i, "scores": {metric: {"correct": bool(x)}}} for i, x in pairs]}
        rec["eval"] = {"scores": c["scores"], "wall_s": None} if c.get("scores") else None
        if c["phase"] == "base":
            base = rec
        elif c["label"] not in order:
            raise MidblockError(f"cells.jsonl holds arm '{c['label']}', which is not in the comparison's table")
        else:
            recs.append(rec)
    recs.sort(key=lambda r: (order.index(r["label"]), r["seed"]))
    return config, recs, base, order


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except MidblockError as e:  # bad input: one line, exit 2, as the midblock command does
        print(f"midblock: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    """The older spelling of ``midblock export`` (``export|state COMPARE_DIR DEST``, ``derive DEST [ARM]``)."""
    from midblock.cli.export import print_derived

    if len(argv) == 3 and argv[0] == "export":
        print(export(argv[1], argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "state":
        print(f"{save_state(argv[1], argv[2])} finished cells saved to {argv[2]}")
        return 0
    if len(argv) in (2, 3) and argv[0] == "derive":
        print_derived(pooled_rows(derive(argv[1], *argv[2:])))  # checked and computed before anything is printed
        return 0
    print(
        "usage: python -m midblock.experiments.export export COMPARE_DIR DEST | derive DEST [BASELINE_ARM] | "
        "state COMPARE_DIR DEST (or: midblock export --help)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
