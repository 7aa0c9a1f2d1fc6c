"""Metric-metric correlation across the layers (and variants, datasets, runs) of analysis outputs.

Reads ``metrics.csv`` (columns ``variant,dataset,layer,depth,metric,value``) of one or more analysis
runs, pivots to one row per (run, variant, dataset, layer) and one column per metric, and computes
Pearson and Spearman correlation matrices over pairwise-complete rows. Metrics are ordered for the
heat map by average-linkage agglomerative clustering on the distance ``1 - |r|`` (implemented here
with numpy: scipy is not a dependency), so metrics that move together, with either sign, sit together.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from midblock.errors import MidblockError

REQUIRED = ("variant", "dataset", "layer", "depth", "metric", "value")


def read_metrics(run_dirs: list[str | Path]) -> list[dict[str, str]]:
    """All rows of the runs' ``metrics.csv`` files, each tagged with its run's directory name."""
    if not run_dirs:
        raise MidblockError("give at least one analysis run directory")
    rows: list[dict[str, str]] = []
    for rd in run_dirs:
        rd = Path(rd)
        path = rd / "metrics.csv" if rd.is_dir() else rd
        if not path.exists():
            raise MidblockError(f"{path} does not exist", hint="pass the directory of a `midblock analyze` run")
        if not path.is_file():
            raise MidblockError(f"{path} is not a regular file", hint="pass the directory of a `midblock analyze` run")
        try:
            rows += _read_one(path, rd.name if rd.is_dir() else rd.parent.name)
        except UnicodeDecodeError:
            raise MidblockError(f"{path} is not UTF-8 text", hint="is it an analysis metrics.csv?") from None
        except csv.Error as e:
            raise MidblockError(
                f"{path} is not a readable CSV file: {e}", hint="is it an analysis metrics.csv?"
            ) from None
    if not rows:
        raise MidblockError("the metrics files hold no rows")
    return rows


def _read_one(path: Path, run: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise MidblockError(f"{path} lacks column(s) {', '.join(missing)}", hint="is it an analysis metrics.csv?")
        return [{**r, "run": run} for r in reader]


def pivot(rows: list[dict[str, str]]) -> tuple[list[tuple[str, ...]], list[str], np.ndarray]:
    """(row keys (run, variant, dataset, layer), metric names, matrix with NaN where a metric is absent)."""
    keys: dict[tuple[str, ...], int] = {}
    metrics: dict[str, int] = {}
    cells: list[tuple[int, int, float]] = []
    for r in rows:
        try:
            v = float(r["value"])
        except (TypeError, ValueError):
            continue
        k = (r.get("run", ""), r["variant"], r["dataset"], r["layer"])
        i = keys.setdefault(k, len(keys))
        j = metrics.setdefault(r["metric"], len(metrics))
        cells.append((i, j, v))
    X = np.full((len(keys), len(metrics)), np.nan)
    for i, j, v in cells:
        X[i, j] = v
    return list(keys), list(metrics), X


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (1-based), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def correlation_matrix(X: np.ndarray, method: str = "pearson", min_rows: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(r, n): correlation of every pair of columns over rows where both are present, and that count.

    Fewer than ``min_rows`` common rows or a constant column gives NaN.
    """
    if method not in ("pearson", "spearman"):
        raise MidblockError(f"unknown correlation '{method}'", hint="use pearson or spearman")
    m = X.shape[1]
    R = np.full((m, m), np.nan)
    N = np.zeros((m, m), dtype=int)
    for i in range(m):
        for j in range(i, m):
            ok = ~np.isnan(X[:, i]) & ~np.isnan(X[:, j])
            n = int(ok.sum())
            N[i, j] = N[j, i] = n
            if n < min_rows:
                continue
            a, b = X[ok, i], X[ok, j]
            if method == "spearman":
                a, b = _rank(a), _rank(b)
            R[i, j] = R[j, i] = _pearson(a, b)
    return R, N


def cluster_order(R: np.ndarray) -> list[int]:
    """Leaf order of average-linkage clustering on ``1 - |r|`` (NaN treated as distance 1)."""
    m = R.shape[0]
    if m <= 2:
        return list(range(m))
    D = 1.0 - np.abs(np.nan_to_num(R, nan=0.0))
    np.fill_diagonal(D, 0.0)
    clusters: dict[int, list[int]] = {i: [i] for i in range(m)}
    while len(clusters) > 1:
        ids = sorted(clusters)
        best = None
        for x in range(len(ids)):
            for y in range(x + 1, len(ids)):
                a, b = clusters[ids[x]], clusters[ids[y]]
                d = float(D[np.ix_(a, b)].mean())
                if best is None or d < best[0] - 1e-12:
                    best = (d, ids[x], ids[y])
        _, a, b = best  # type: ignore[misc]
        clusters[a] = clusters[a] + clusters.pop(b)  # merged leaves keep their order: a dendrogram's leaves
    return next(iter(clusters.values()))


def matrix_rows(names: list[str], R: np.ndarray, order: list[int] | None = None) -> list[dict[str, object]]:
    """A correlation matrix as CSV rows (first column 'metric'), in ``order``."""
    order = order if order is not None else list(range(len(names)))
    out = []
    for i in order:
        row: dict[str, object] = {"metric": names[i]}
        for j in order:
            row[names[j]] = None if math.isnan(R[i, j]) else round(float(R[i, j]), 6)
        out.append(row)
    return out
