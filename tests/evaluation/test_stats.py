import math

import numpy as np
import pytest

from midblock.evaluation.stats import mean_ci, paired_bootstrap, t_quantile, t_quantile_975, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (8, 10), (10, 10), (37, 100), (1, 1319), (660, 1319)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    lo, hi = wilson_interval(k, n)
    p, z = k / n, 1.959963984540054
    # the Wilson bounds are the p solving (phat - p)^2 = z^2 p (1 - p) / n
    for b in (lo, hi):
        if 0 < b < 1:
            assert (p - b) ** 2 == pytest.approx(z * z * b * (1 - b) / n, abs=1e-12)
    assert lo <= p <= hi


def test_wilson_reference_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_paired_bootstrap_degenerate_and_normal_approximation():
    a = [1, 0, 1, 1, 0] * 20
    same = paired_bootstrap(a, a)
    assert (same["diff"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    allwin = paired_bootstrap([1] * 50, [0] * 50)
    assert (allwin["diff"], allwin["lo"], allwin["hi"]) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, 400)
    y = np.where(rng.random(400) < 0.8, x, 1 - x)  # the systems disagree on ~20% of items
    r = paired_bootstrap(x.tolist(), y.tolist(), n_boot=4000, seed=1)
    d = x - y
    half = 1.959963984540054 * d.std(ddof=1) / math.sqrt(len(d))
    assert r["diff"] == pytest.approx(d.mean())
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(half, rel=0.1)
    assert r["lo"] < d.mean() < r["hi"]
    assert paired_bootstrap(x.tolist(), y.tolist(), n_boot=4000, seed=1) == r  # seeded
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])


def test_mean_ci_over_seeds():
    r = mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["std"] == pytest.approx(1.0)
    assert r["hi"] - r["mean"] == pytest.approx(4.302652730 / math.sqrt(3))
    one = mean_ci([0.5])
    assert one["lo"] == one["hi"] == 0.5 and math.isnan(one["std"])
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(1000) == pytest.approx(1.96, abs=1e-2)


# Student t 0.975 quantiles (R's qt(0.975, df), 10 significant digits)
T975 = {
    1: 12.70620474,
    2: 4.302652730,
    5: 2.570581836,
    30: 2.042272456,
    31: 2.039513446,
    100: 1.983971519,
    1000: 1.962339081,
}


@pytest.mark.parametrize("df, want", sorted(T975.items()))
def test_t_quantile_975_exact_past_30_degrees_of_freedom(df, want):
    """Exact at every df: at 31 the old table fell back to the normal 1.960 (the right value is 2.0395)."""
    assert t_quantile_975(df) == pytest.approx(want, rel=1e-9)


def test_t_quantile_against_scipy_and_bad_input():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 120), 250, 1000, 9_999, 10_001, 10**6]:
        for q in (0.6, 0.9, 0.975, 0.995, 0.9999):
            assert t_quantile(q, df) == pytest.approx(float(stats.t.ppf(q, df)), rel=1e-10), (q, df)
    for bad in ((0.975, 0), (0.975, 2.5), (0.5, 3), (1.0, 3)):
        with pytest.raises(ValueError):
            t_quantile(*bad)
