"""Reading an export's ``items.csv`` with the ``csv`` module alone: what the replay and across tests check the
engine's numbers against."""

from __future__ import annotations

import csv
from pathlib import Path


def seed_differences(dest: Path, arm: str, baseline: str) -> dict[int, float]:
    """Each training seed's difference ``arm - baseline`` (accuracy, as a fraction) over every test item."""
    rows: dict[tuple[str, int], dict[int, int]] = {}
    with open(dest / "items.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["phase"] == "main" and r["arm"] in (arm, baseline):
                rows.setdefault((r["arm"], int(r["seed"])), {})[int(r["index"])] = int(r["correct"])
    seeds = sorted({s for (_, s) in rows})
    return {
        s: sum(rows[(arm, s)][i] - rows[(baseline, s)][i] for i in rows[(arm, s)]) / len(rows[(arm, s)]) for s in seeds
    }
