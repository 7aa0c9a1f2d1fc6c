"""Pool the paired per-round time ratios of several `bench/train_step.py` runs.

    python bench/pool_rounds.py bench/results/train_step_runs/run-*.txt

Each run prints (and writes into its report) one ``round N: config 12.34s, ...`` line per timed round. A
round's ratio compares two configurations measured minutes apart in the same process, so slow drift of the
machine cancels within it; pooling the rounds of several runs also averages over what differs between runs
(where the heap and the page cache happen to lie). Prints, for each ratio the issue sets a target on, the
number of rounds, the pooled median, the FLOP prediction (the report's ratio table) and how far apart they are.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

PAIRS = [
    ("midblock", "lora", "<= 0.90"),
    ("midblock-full", "full", "<= 0.80"),
    ("midblock+ckpt", "lora+ckpt", "< 1"),
    ("midblock+ckpt", "peer+ckpt", "< 1"),
    ("midblock+ckpt", "midblock", ""),
]
ROUND = re.compile(r"^round \d+: (.*)$")
CELL = re.compile(r"([\w+-]+) ([\d.]+)s")
# the report's ratio table: "| midblock / lora time | measured | ... | predicted | target | within 10% |"
PRED = re.compile(r"^\| ([\w+-]+) / ([\w+-]+) time \|.*\| ([\d.]+) \|[^|]*\|[^|]*\|$")


def read(path: Path) -> tuple[list[dict[str, float]], dict[tuple[str, str], float]]:
    rounds, pred, seen = [], {}, set()
    for line in path.read_text().splitlines():
        m = ROUND.match(line)
        if m and line not in seen:  # a log holds the printed lines and the report's copy of them
            seen.add(line)
            rounds.append({k: float(v) for k, v in CELL.findall(m.group(1))})
        m = PRED.match(line)
        if m:
            pred[(m.group(1), m.group(2))] = float(m.group(3))
    return rounds, pred


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    pooled: dict[tuple[str, str, str], list[float]] = {p: [] for p in PAIRS}
    pred: dict[tuple[str, str], float] = {}
    for path in paths:
        rounds, pr = read(Path(path))
        pred = pred or pr
        for a, b, t in PAIRS:
            pooled[(a, b, t)] += [r[a] / r[b] for r in rounds if a in r and b in r]
    print("| ratio | rounds | pooled median | predicted (FLOPs) | off | target |")
    print("|---|---:|---:|---:|---:|---|")
    for (a, b, t), r in pooled.items():
        if not r:
            continue
        med = statistics.median(r)
        p = pred.get((a, b), float("nan"))
        print(f"| {a} / {b} | {len(r)} | {med:.3f} | {p:.3f} | {med / p - 1:+.1%} | {t} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
