"""Interval maths: Wilson score interval, paired bootstrap of a difference, mean and t-interval over seeds.

Pure functions on numbers and sequences; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the standard normal 0.975 quantile

# Student t 0.975 quantiles for 1..30 degrees of freedom (beyond 30 the normal value is within 4%).
_T975 = (
    12.706204736,
    4.302652730,
    3.182446305,
    2.776445105,
    2.570581836,
    2.446911851,
    2.364624252,
    2.306004135,
    2.262157163,
    2.228138852,
    2.200985160,
    2.178812830,
    2.160368656,
    2.144786688,
    2.131449546,
    2.119905299,
    2.109815578,
    2.100922040,
    2.093024054,
    2.085963447,
    2.079613845,
    2.073873068,
    2.068657610,
    2.063898562,
    2.059538553,
    2.055529439,
    2.051830516,
    2.048407142,
    2.045229642,
    2.042272456,
)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; ``(0, 1)`` when ``n == 0``."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no rounding past p
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Difference ``mean(a) - mean(b)`` over the same items, with a percentile bootstrap interval.

    Items are resampled jointly (pairs kept together), so the interval reflects only the disagreement
    between the two systems, not the spread of item difficulty.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("paired bootstrap needs at least one item")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    diff = sum(d) / n
    import numpy as np

    rng = np.random.default_rng(seed)
    darr = np.asarray(d)
    chunks = []
    step = max(1, 2_000_000 // n)  # bound memory: resample in chunks of ~2M indices
    for start in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
        chunks.append(darr[idx].mean(axis=1))
    means = np.sort(np.concatenate(chunks))
    lo_i = int(math.floor((1 - level) / 2 * n_boot))
    hi_i = min(n_boot - 1, int(math.ceil((1 + level) / 2 * n_boot)) - 1)
    return {"diff": diff, "lo": float(means[lo_i]), "hi": float(means[hi_i]), "n": n, "n_boot": n_boot}


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    return _T975[df - 1] if df <= len(_T975) else Z95


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean over seeds with a 95% t-interval (half-width 0 and ``nan`` std with a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    m = sum(values) / n
    if n == 1:
        return {"mean": m, "lo": m, "hi": m, "std": float("nan"), "n": 1}
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": m, "lo": m - half, "hi": m + half, "std": sd, "n": n}
