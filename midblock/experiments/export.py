"""Raw results of a comparison in a small, committable form, and the table re-derived from them.

``export(out, dest)`` writes, from a finished ``compare`` directory:

- ``cells.jsonl``: one line per evaluated cell (phase ``main``, ``search`` or ``base``): arm, seed,
  learning rate, trained blocks, tuning settings, training summary, scores, perplexity and fingerprints;
- ``items.csv``: one line per (cell, test item): whether each extractor scored it correct;
- copies of ``compare.md``, ``compare.json``, ``lr_search.md`` and the figure.

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
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from midblock.errors import MidblockError
from midblock.experiments.table import build_rows, pooled_rows
from midblock.io import read_json, read_jsonl_tolerant, write_text

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
)


def _records(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    recs = []
    for f in sorted((out / "cells").glob("*/eval-*/cell.json")):
        rec = read_json(f)
        rec["items"] = read_jsonl_tolerant(f.parent / "eval" / "items.jsonl")
        recs.append((f.parent, rec))
    return recs


def _phase(rec: dict[str, Any], edir: Path) -> str:
    if rec["label"] == "base":
        return "base"
    split = read_json(edir / "fingerprint.json").get("evaluation", {}) or {}
    return "search" if split.get("split") == "dev" else "main"


def export(out: str | Path, dest: str | Path) -> Path:
    """Write ``cells.jsonl`` and ``items.csv`` (plus the tables and figure) of ``out`` into ``dest``."""
    out, dest = Path(out), Path(dest)
    if not (out / "compare.json").exists():
        raise MidblockError(f"{out} holds no finished comparison (no compare.json)", hint="run compare first")
    meta = read_json(out / "compare.json")
    metric = meta["config"]["metric"]
    lines, buf = [], io.StringIO()
    w = csv.writer(buf)
    w.writerow(["phase", "arm", "seed", "lr", "index", "correct"])
    for edir, rec in _records(out):
        phase = _phase(rec, edir)
        slim = {k: rec.get(k) for k in ("label", "seed", "lr", "band", "tuning", "fingerprint", "ppl")}
        slim["train"] = {k: (rec.get("train") or {}).get(k) for k in _KEEP_TRAIN} if rec.get("train") else None
        slim["scores"] = (rec.get("eval") or {}).get("scores")
        lines.append(json.dumps({"phase": phase, **slim}))
        for it in rec["items"]:
            w.writerow(
                [phase, rec["label"], rec.get("seed"), rec.get("lr"), it["index"], int(it["scores"][metric]["correct"])]
            )
    dest.mkdir(parents=True, exist_ok=True)
    write_text(dest / "cells.jsonl", "\n".join(lines) + "\n")
    write_text(dest / "items.csv", buf.getvalue())
    for name in ("compare.md", "compare.json", "lr_search.md", "compare.png", "landscape.png"):
        if (out / name).exists():
            shutil.copyfile(out / name, dest / name)
    return dest


_STATE_FILES = ("fingerprint.json", "cell.json", "items.jsonl", "summary.json", "results.json", "COMPLETED")


def save_state(out: str | Path, dest: str | Path) -> int:
    """Copy the finished cells' small files (and the base analysis) of ``out`` into ``dest``; returns the
    number of finished cells. Training runs (adapters, checkpoints) are not copied: a finished cell never
    needs its training run again."""
    out, dest = Path(out), Path(dest)
    finished = [f.parent for f in (out / "cells").glob("*/eval-*/cell.json")]
    keep = [d / n for d in finished for n in ("cell.json", "fingerprint.json", "eval/items.jsonl", "eval/summary.json")]
    keep += [d.parent / "fingerprint.json" for d in finished]
    keep += [a / n for a in out.glob("analysis-base-*") for n in ("results.json", "COMPLETED", "fingerprint.json")]
    for f in keep:
        if f.exists() and f.name in _STATE_FILES:
            target = dest / f.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    return len(finished)


def derive(dest: str | Path, baseline: str | None = None) -> list[dict[str, Any]]:
    """The comparison rows rebuilt from ``cells.jsonl`` and ``items.csv`` (main phase and base); the paired
    differences are taken against ``baseline`` (default: the comparison's own baseline arm)."""
    dest = Path(dest)
    meta = read_json(dest / "compare.json")
    metric, baseline = meta["config"]["metric"], baseline or meta["config"]["baseline"]
    cells = [json.loads(line) for line in (dest / "cells.jsonl").read_text().splitlines() if line.strip()]
    items: dict[tuple, list[dict[str, Any]]] = {}
    with open(dest / "items.csv", newline="") as f:
        for r in csv.DictReader(f):
            key = (r["phase"], r["arm"], r["seed"])
            items.setdefault(key, []).append(
                {"index": int(r["index"]), "scores": {metric: {"correct": r["correct"] == "1"}}}
            )
    recs, base = [], None
    for c in cells:
        if c["phase"] == "search":
            continue
        rec = c | {"items": items[(c["phase"], c["label"], str(c["seed"]) if c["seed"] is not None else "")]}
        rec["eval"] = {"scores": c["scores"], "wall_s": None} if c["scores"] else None
        if c["phase"] == "base":
            base = rec
        else:
            recs.append(rec)
    order = list(dict.fromkeys(r["arm"] for r in meta["rows"]))  # the grid's order, as compare wrote it
    recs.sort(key=lambda r: (order.index(r["label"]), r["seed"]))
    return build_rows(recs, base, baseline=baseline, metric=metric)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "export":
        print(export(argv[1], argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "state":
        print(f"{save_state(argv[1], argv[2])} finished cells saved to {argv[2]}")
        return 0
    if len(argv) in (2, 3) and argv[0] == "derive":
        cols = ("arm", "band", "lr", "n", "accuracy", "ci_low", "ci_high", "ci_covers", "diff_vs_baseline", "diff_low")
        cols += ("diff_high", "diff_covers", "diff_p_holm", "diff_sim_low", "diff_sim_high")
        print("\t".join(cols))
        for r in pooled_rows(derive(argv[1], *argv[2:])):
            print(
                "\t".join(
                    "" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols
                )
            )
        return 0
    print(
        "usage: python -m midblock.experiments.export export COMPARE_DIR DEST | derive DEST [BASELINE_ARM] | "
        "state COMPARE_DIR DEST",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
