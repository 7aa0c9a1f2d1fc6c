"""Interval maths: Wilson score interval, paired bootstrap of a difference, mean and t-interval over seeds,
and the two-level (seeds x items) bootstrap that the comparison table uses for pooled rows, with Holm and
Bonferroni corrections for several arms against one baseline and perplexity changes over seeds x texts.

Pure functions on numbers and arrays; no I/O. The method and what each interval covers: docs/evaluation.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the standard normal 0.975 quantile


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


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with an integer ``df`` >= 1, t >= 0: the closed form of Abramowitz and
    Stegun 26.7.3-4 (a finite sum of powers of cos(atan(t / sqrt(df))), df / 2 terms), exact up to rounding."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + c2/2 + c2^2 (1*3)/(2*4) + ... up to c2^((df-2)/2))
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    # odd: (2/pi) (theta + sin(theta) cos(theta) (1 + c2 * 2/3 + c2^2 (2*4)/(3*5) + ... up to c2^((df-3)/2)))
    total = 0.0
    if df > 1:
        term = total = 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        total *= s * math.sqrt(c2)
    return 2 / math.pi * (theta + total)


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with an integer ``df`` >= 1 (0.5 < q < 1): relative error below
    1e-11 up to q = 0.9999 (checked against ``scipy.stats.t.ppf`` in the tests; scipy is not a dependency).

    Newton's method on the closed-form distribution function, from the normal quantile (below the root:
    the central probability is concave in t, so the iterates rise monotonically to it). Past 10,000 degrees
    of freedom, the asymptotic expansion of Abramowitz and Stegun 26.7.5, whose next term is below 1e-18.
    """
    from statistics import NormalDist

    if int(df) != df or df < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df}")
    if not 0.5 < q < 1:
        raise ValueError(f"quantile level must lie in (0.5, 1), got {q}")
    df = int(df)
    z = NormalDist().inv_cdf(q)
    if df > 10_000:
        g1 = (z**3 + z) / 4
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
        g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
        g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
        return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
    target = 2 * q - 1  # P(|T| < t)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    t = z
    for _ in range(200):
        dens = math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))
        step = (target - _t_central(t, df)) / (2 * dens)
        t += step
        if abs(step) <= 1e-14 * max(t, 1.0):
            break
    return t


def t_quantile_975(df: int) -> float:
    """The Student t 0.975 quantile (two-sided 95%) for ``df`` degrees of freedom: 12.706 at 1, 2.042 at 30,
    2.040 at 31, tending to 1.960."""
    return t_quantile(0.975, df)


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


# --------------------------------------------------------------------------- seeds x items
#
# A study tests every training seed on the same test items, so its per-item results form a (seeds x items)
# matrix. The two-level bootstrap resamples both: the seeds with replacement, then the items with
# replacement, the same items for every seed (the design is crossed: items are shared, not nested in seeds).
# Each resample is a pair of count vectors, W over the seeds and V over the items, and a statistic is a
# weighted mean (sum_s sum_i W_s V_i y_si / (S I)). The draws are fixed by ``seed``: seed counts come from
# the stream ``default_rng([seed, 0])``, item counts from ``default_rng([seed, 1])``, each
# ``multinomial(n, [1/n] * n)`` per resample in order, so another implementation can reproduce them.

APPROXIMATE_BELOW_SEEDS = 5  # with fewer seeds the seed part of an interval rests on too few values


def _matrix(y: Any, name: str = "y") -> np.ndarray:
    """A (seeds x items) float matrix, refusing empty, ragged or non-finite input."""
    arr = np.asarray(y, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty (seeds x items) matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite values")
    return arr


_CACHE_CELLS = 20_000_000  # count tables up to this many cells are kept (int32), so the arms of a table share them


@functools.lru_cache(maxsize=4)
def _cached_counts(n: int, n_boot: int, seed: int, stream: int) -> np.ndarray:
    counts = np.random.default_rng([seed, stream]).multinomial(n, np.full(n, 1 / n), size=n_boot).astype(np.int32)
    counts.flags.writeable = False
    return counts


def _count_chunks(n: int, n_boot: int, seed: int, stream: int, step: int):
    """Resample counts of ``n`` units (multinomial(n, [1/n] * n) per resample), ``step`` resamples at a time."""
    if n * n_boot <= _CACHE_CELLS:
        full = _cached_counts(n, n_boot, seed, stream)
        for start in range(0, n_boot, step):
            yield full[start : start + step].astype(float)
        return
    rng = np.random.default_rng([seed, stream])
    for start in range(0, n_boot, step):
        yield rng.multinomial(n, np.full(n, 1 / n), size=min(step, n_boot - start)).astype(float)


def two_level_draws(
    stat: Callable[[np.ndarray, np.ndarray], np.ndarray], n_seeds: int, n_items: int, n_boot: int, seed: int
) -> np.ndarray:
    """``stat(W, V)`` over ``n_boot`` two-level resamples (seed counts ``W``: chunk x seeds, item counts
    ``V``: chunk x items), concatenated along the first axis. Drawn in chunks to bound memory; the draws
    are those of one call drawing all resamples at once (and small count tables are cached, so the arms of
    one table reuse them)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    step = max(1, 2_000_000 // max(n_items, n_seeds))
    seeds = _count_chunks(n_seeds, n_boot, seed, 0, step)
    items = _count_chunks(n_items, n_boot, seed, 1, step)
    return np.concatenate([np.asarray(stat(w, v), dtype=float) for w, v in zip(seeds, items)])


def _order_stat_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval: the floor((1 - level)/2 B)-th and ceil((1 + level)/2 B)-th order statistics."""
    b = len(draws)
    s = np.sort(draws)
    lo_i = int(math.floor((1 - level) / 2 * b))
    hi_i = min(b - 1, int(math.ceil((1 + level) / 2 * b)) - 1)
    return float(s[lo_i]), float(s[hi_i])


def bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'no difference': twice the smaller share of resamples on either side
    of 0 (counting 0 on both sides, plus one), capped at 1. Below ``1 - level`` exactly when 0 lies outside
    the percentile interval at that level (up to the order-statistic rounding)."""
    b = len(draws)
    below, above = int((draws <= 0).sum()), int((draws >= 0).sum())
    return min(1.0, 2 * (1 + min(below, above)) / (b + 1))


def _covers(n_seeds: int, what: str = "items") -> str:
    return f"seeds x {what}" if n_seeds > 1 else what


def _summary(est: float, draws: np.ndarray, per_seed: list[float], n_items: int, level: float, what: str) -> dict:
    lo, hi = _order_stat_interval(draws, level)
    s = len(per_seed)
    return {
        "estimate": float(est),
        "lo": lo,
        "hi": hi,
        "se": float(draws.std(ddof=1)) if len(draws) > 1 else float("nan"),
        "level": level,
        "n_seeds": s,
        "n_items": n_items,
        "covers": _covers(s, what),
        "approximate": 1 < s < APPROXIMATE_BELOW_SEEDS,
        "per_seed": [float(x) for x in per_seed],
        "n_boot": len(draws),
    }


def _mean_stat(y: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    s, i = y.shape
    return lambda w, v: ((w @ y) * v).sum(axis=1) / (s * i)


def two_level_interval(y: Any, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Mean of a (seeds x items) matrix (accuracy from 0/1 entries) with a two-level percentile bootstrap
    interval over seeds and items. ``covers`` names the variation the interval includes (``items`` alone
    with one seed); ``approximate`` is true with 2-4 seeds. ``per_seed`` holds each seed's mean."""
    y = _matrix(y)
    draws = two_level_draws(_mean_stat(y), y.shape[0], y.shape[1], n_boot, seed)
    return _summary(y.mean(), draws, list(y.mean(axis=1)), y.shape[1], level, "items")


def paired_two_level(
    a: Any, b: Any, n_boot: int = 10_000, seed: int = 0, level: float = 0.95, n_comparisons: int = 1
) -> dict[str, Any]:
    """``mean(a) - mean(b)`` for two aligned (seeds x items) matrices (same seeds, same items, same order),
    with the two-level bootstrap of the per-(seed, item) differences: ``per_seed`` holds each seed's
    difference, ``p`` the two-sided bootstrap p-value, and ``sim_lo``/``sim_hi`` the Bonferroni interval
    at level ``1 - (1 - level) / n_comparisons`` (from the same draws)."""
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired matrices need the same seeds and items, got shapes {a.shape} and {b.shape}")
    d = a - b
    draws = two_level_draws(_mean_stat(d), d.shape[0], d.shape[1], n_boot, seed)
    out = _summary(d.mean(), draws, list(d.mean(axis=1)), d.shape[1], level, "items")
    return out | _multiplicity(draws, level, n_comparisons)


def _multiplicity(draws: np.ndarray, level: float, m: int) -> dict[str, Any]:
    if m < 1:
        raise ValueError(f"n_comparisons must be >= 1, got {m}")
    sim_level = 1 - (1 - level) / m
    sim_lo, sim_hi = _order_stat_interval(draws, sim_level)
    return {"p": bootstrap_p(draws), "sim_lo": sim_lo, "sim_hi": sim_hi, "sim_level": sim_level, "n_comparisons": m}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over the given tests), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda k: p_values[k])
    out = [0.0] * m
    running = 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[k]))
        out[k] = running
    return out


def compare_to_baseline(
    pairs: dict[str, tuple[Any, Any]], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Several arms against one baseline: ``pairs`` maps an arm to its (arm, baseline) aligned matrices.
    Each result is :func:`paired_two_level` with ``n_comparisons`` = the number of arms (Bonferroni
    simultaneous intervals) plus ``p_holm``, the Holm-adjusted p-value over the arms."""
    m = len(pairs)
    out = {k: paired_two_level(a, b, n_boot, seed, level, n_comparisons=max(m, 1)) for k, (a, b) in pairs.items()}
    for k, p in zip(out, holm([r["p"] for r in out.values()])):
        out[k]["p_holm"] = p
    return out


def difference_between(
    d1: Any,
    d2: Any,
    shared_items: bool = False,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    n_comparisons: int = 1,
) -> dict[str, Any]:
    """``mean(d1) - mean(d2)`` for two studies' (seeds x items) per-(seed, item) differences (e.g. an arm
    minus its baseline on two models): whether an effect differs between the studies. Each study's training
    seeds are resampled on their own (its runs are its own, whatever their seed numbers); test items are
    resampled jointly when both studies scored the same items in the same order (``shared_items``: an item
    then moves both differences in the same resample) and on their own otherwise. Returns the estimate, the percentile
    interval, ``se``, ``covers`` (which variation the interval includes), ``approximate`` (a study with 2-4
    seeds), ``n_seeds`` and ``n_items`` (both studies'), the two-sided bootstrap ``p`` and the Bonferroni
    interval over ``n_comparisons`` (``sim_lo``/``sim_hi``, from the same draws)."""
    d1, d2 = _matrix(d1, "d1"), _matrix(d2, "d2")
    (s1, n1), (s2, n2) = d1.shape, d2.shape
    if shared_items and n1 != n2:
        raise ValueError(f"shared items need the same item count in both studies, got {n1} and {n2}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    step = max(1, 2_000_000 // max(n1, n2, s1, s2))
    w1, v1 = _count_chunks(s1, n_boot, seed, 0, step), _count_chunks(n1, n_boot, seed, 1, step)
    w2 = _count_chunks(s2, n_boot, seed, 2, step)
    parts = []
    if shared_items:
        for a, v, b in zip(w1, v1, w2):
            parts.append(((a @ d1 / s1 - b @ d2 / s2) * v).sum(axis=1) / n1)
    else:
        v2 = _count_chunks(n2, n_boot, seed, 3, step)
        for a, v, b, u in zip(w1, v1, w2, v2):
            parts.append(((a @ d1) * v).sum(axis=1) / (s1 * n1) - ((b @ d2) * u).sum(axis=1) / (s2 * n2))
    draws = np.concatenate(parts)
    lo, hi = _order_stat_interval(draws, level)
    seeds = "each study's seeds" if max(s1, s2) > 1 else ""
    items = "items, shared by both" if shared_items else "each study's items"
    return {
        "estimate": float(d1.mean() - d2.mean()),
        "lo": lo,
        "hi": hi,
        "se": float(draws.std(ddof=1)) if len(draws) > 1 else float("nan"),
        "level": level,
        "covers": f"{seeds} x {items}" if seeds else items,
        "shared_items": shared_items,
        "approximate": any(1 < s < APPROXIMATE_BELOW_SEEDS for s in (s1, s2)),
        "n_seeds": [s1, s2],
        "n_items": [n1, n2],
        "n_boot": len(draws),
    } | _multiplicity(draws, level, n_comparisons)


# --------------------------------------------------------------------------- forgetting: seeds x texts


def _texts(nll: Any, tokens: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    n, t = _matrix(nll, f"{name} nll"), _matrix(tokens, f"{name} tokens")
    if t.shape[0] == 1 and n.shape[0] > 1:
        t = np.repeat(t, n.shape[0], axis=0)
    if n.shape != t.shape:
        raise ValueError(f"{name}: nll and token counts differ in shape ({n.shape} vs {t.shape})")
    return n, t


def _ppl_change(nll: np.ndarray, tok: np.ndarray, bnll: np.ndarray, btok: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per resample and seed, 100 (ppl / base ppl - 1) on the texts weighted by ``v`` (chunk x texts)."""
    ppl = np.exp((v @ nll.T) / (v @ tok.T))  # chunk x seeds
    base = np.exp((v @ bnll.T) / (v @ btok.T))  # chunk x 1
    return 100 * (ppl / base - 1)


def ppl_change_interval(
    arm: tuple[Any, Any],
    base: tuple[Any, Any],
    baseline: tuple[Any, Any] | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    n_comparisons: int = 1,
) -> dict[str, Any]:
    """Perplexity change (%) of an arm against the base model, from per-text summed NLL and token counts
    (``arm``: (seeds x texts, seeds x texts or texts); ``base``: (texts, texts)); perplexity is
    exp(sum nll / sum tokens) over the texts, the change is averaged over the seeds. The two-level bootstrap
    resamples seeds and texts (each text with its token count; the same texts for the base, so the change is
    paired over texts). With ``baseline`` (another arm, same seeds and texts): the difference of the two
    arms' changes, in percentage points, paired over seeds and texts, with ``p`` and Bonferroni
    ``sim_lo``/``sim_hi`` as :func:`paired_two_level`."""
    nll, tok = _texts(*arm, "arm")
    bnll, btok = _texts(*base, "base")
    if bnll.shape[0] != 1 or bnll.shape[1] != nll.shape[1]:
        raise ValueError(f"the base needs one row over the arm's {nll.shape[1]} texts, got {bnll.shape}")
    if (tok <= 0).any() or (btok <= 0).any():
        raise ValueError("every text needs at least one scored token")
    s, t = nll.shape
    ones = np.ones((1, t))
    per_seed = _ppl_change(nll, tok, bnll, btok, ones)[0]
    if baseline is None:

        def stat(w: np.ndarray, v: np.ndarray) -> np.ndarray:
            return (_ppl_change(nll, tok, bnll, btok, v) * w).sum(axis=1) / s

        draws = two_level_draws(stat, s, t, n_boot, seed)
        return _summary(per_seed.mean(), draws, list(per_seed), t, level, "texts")
    onll, otok = _texts(*baseline, "baseline")
    if onll.shape != nll.shape:
        raise ValueError(f"paired arms need the same seeds and texts, got {nll.shape} and {onll.shape}")
    diff = per_seed - _ppl_change(onll, otok, bnll, btok, ones)[0]

    def stat_diff(w: np.ndarray, v: np.ndarray) -> np.ndarray:
        d = _ppl_change(nll, tok, bnll, btok, v) - _ppl_change(onll, otok, bnll, btok, v)
        return (d * w).sum(axis=1) / s

    draws = two_level_draws(stat_diff, s, t, n_boot, seed)
    return _summary(diff.mean(), draws, list(diff), t, level, "texts") | _multiplicity(draws, level, n_comparisons)


# --------------------------------------------------------------------------- one-seed replays of a small test


def one_seed_replays(a: Any, b: Any, n_items: int, draws_per_seed: int = 200, seed: int = 0) -> np.ndarray:
    """Differences ``mean(a) - mean(b)`` as a one-seed, ``n_items``-item study would report them: for each
    training seed (row of the aligned (seeds x items) 0/1 matrices), ``draws_per_seed`` random subsets of
    ``n_items`` test items drawn without replacement (as a study that shuffles the test set and scores its
    first ``n_items`` would). Returns a (seeds x draws_per_seed) array of differences; every row uses its
    own subsets, the same subset for both arms."""
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired matrices need the same seeds and items, got shapes {a.shape} and {b.shape}")
    if not 1 <= n_items <= a.shape[1]:
        raise ValueError(f"n_items must be in [1, {a.shape[1]}], got {n_items}")
    rng = np.random.default_rng(seed)
    d = a - b
    out = np.empty((d.shape[0], draws_per_seed))
    for s in range(d.shape[0]):
        for k in range(draws_per_seed):
            out[s, k] = d[s, rng.choice(d.shape[1], n_items, replace=False)].mean()
    return out


def replay_summary(diffs: Any, win: float = 0.05, reported: float | None = None) -> dict[str, Any]:
    """What one replay would show, over all replays in ``diffs`` (any shape, pooled): mean, standard
    deviation, 2.5/50/97.5 percentiles, the share of replays in which the difference is at least ``win``
    (the band "wins") and the share at least ``reported`` (how often a one-seed study would report that much
    or more)."""
    x = np.asarray(diffs, dtype=float)
    flat = x.ravel()
    out: dict[str, Any] = {
        "n_replays": int(flat.size),
        "mean": float(flat.mean()),
        "sd": float(flat.std(ddof=1)) if flat.size > 1 else float("nan"),
        "q025": float(np.quantile(flat, 0.025)),
        "median": float(np.median(flat)),
        "q975": float(np.quantile(flat, 0.975)),
        "share_win": float((flat >= win - 1e-12).mean()),
        "win": win,
    }
    if reported is not None:
        out |= {"reported": reported, "share_at_least_reported": float((flat >= reported - 1e-12).mean())}
    return out
