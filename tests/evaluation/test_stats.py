import math
from statistics import NormalDist

import numpy as np
import pytest

from midblock.evaluation.stats import (
    bootstrap_p,
    compare_to_baseline,
    difference_between,
    holm,
    mean_ci,
    paired_bootstrap,
    paired_two_level,
    ppl_change_interval,
    t_quantile,
    t_quantile_975,
    two_level_draws,
    two_level_interval,
    wilson_interval,
)


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


# --------------------------------------------------------------------------- seeds x items


@pytest.mark.parametrize("cache", [True, False])
def test_two_level_draws_are_the_documented_streams_whatever_the_chunking(cache, monkeypatch):
    """Seed counts from default_rng([seed, 0]), item counts from default_rng([seed, 1]), one multinomial
    row per resample: drawn in chunks (forced here by many items), from the cache or not, they equal one
    draw of them all."""
    if not cache:
        monkeypatch.setattr("midblock.evaluation.stats._CACHE_CELLS", 0)
    n_items, n_boot = 250_001, 15  # 2M // n_items = 7 resamples per chunk: 3 chunks
    got = two_level_draws(lambda w, v: np.hstack([w, v[:, :3]]), 3, n_items, n_boot, seed=7)
    w = np.random.default_rng([7, 0]).multinomial(3, [1 / 3] * 3, size=n_boot)
    v = np.random.default_rng([7, 1]).multinomial(n_items, np.full(n_items, 1 / n_items), size=n_boot)
    assert np.array_equal(got, np.hstack([w, v[:, :3]]).astype(float))


def test_two_level_bootstrap_variance_equals_its_closed_form():
    """The variance of the two-level bootstrap mean is var(row means)/S + var(column means)/I +
    sum(residual^2)/(S I)^2 (plug-in variances): the draws match it (Monte Carlo error ~1.4% at 20k)."""
    rng = np.random.default_rng(3)
    y = (rng.random((4, 30)) < rng.random((1, 30))).astype(float)
    S, I = y.shape
    res = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    exact = y.mean(1).var() / S + y.mean(0).var() / I + (res**2).sum() / (S * I) ** 2
    r = two_level_interval(y, n_boot=20_000, seed=1)
    assert r["se"] ** 2 == pytest.approx(exact, rel=0.06)
    assert r["estimate"] == y.mean() and r["per_seed"] == pytest.approx(y.mean(1).tolist())
    assert (r["n_seeds"], r["n_items"], r["covers"], r["approximate"]) == (4, 30, "seeds x items", True)
    assert two_level_interval(y, n_boot=2000, seed=5) == two_level_interval(y, n_boot=2000, seed=5)  # seeded


def test_one_seed_is_the_item_bootstrap_and_five_seeds_are_not_approximate():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, 400).astype(float)
    r = two_level_interval(x, n_boot=4000, seed=2)  # a 1-D input is one seed
    assert (r["n_seeds"], r["covers"], r["approximate"]) == (1, "items", False)
    half = 1.959963984540054 * x.std(ddof=1) / math.sqrt(len(x))
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(half, rel=0.1)
    assert not two_level_interval(rng.random((5, 10)), n_boot=100)["approximate"]
    with pytest.raises(ValueError):
        two_level_interval(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        two_level_interval([[1.0, float("nan")]])


def test_paired_two_level_difference_per_seed_and_degenerate_cases():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 2, (3, 50)).astype(float)
    same = paired_two_level(a, a, n_boot=500)
    assert (same["estimate"], same["lo"], same["hi"], same["p"]) == (0.0, 0.0, 0.0, 1.0)
    ones, zeros = np.ones((3, 50)), np.zeros((3, 50))
    win = paired_two_level(ones, zeros, n_boot=999)
    assert (win["estimate"], win["lo"], win["hi"], win["p"]) == (1.0, 1.0, 1.0, 2 / 1000)
    b = rng.integers(0, 2, (3, 50)).astype(float)
    d = paired_two_level(a, b, n_boot=2000, n_comparisons=4)
    assert d["per_seed"] == pytest.approx((a - b).mean(1).tolist())
    assert d["sim_lo"] <= d["lo"] <= d["estimate"] <= d["hi"] <= d["sim_hi"] and d["sim_level"] == 1 - 0.05 / 4
    with pytest.raises(ValueError, match="same seeds and items"):
        paired_two_level(a, b[:2])


def test_bootstrap_p_and_holm():
    assert bootstrap_p(np.array([1.0, 2.0, 3.0])) == 2 / 4
    assert bootstrap_p(np.array([-1.0, 2.0, 3.0, 4.0])) == 2 * 2 / 5
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01; max(2 x 0.03, 0.04)
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002]) and holm([]) == []
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_compare_to_baseline_adjusts_for_the_number_of_arms():
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2, (3, 80)).astype(float)
    arms = {k: np.where(rng.random((3, 80)) < 0.3, 1 - base, base) for k in ("x", "y", "z")}
    out = compare_to_baseline({k: (v, base) for k, v in arms.items()}, n_boot=2000)
    ps = [out[k]["p"] for k in arms]
    assert [out[k]["p_holm"] for k in arms] == pytest.approx(holm(ps))
    for k, v in arms.items():
        alone = paired_two_level(v, base, n_boot=2000, n_comparisons=3)
        assert {x: alone[x] for x in alone} == {x: out[k][x] for x in alone}  # same draws, same numbers
        assert out[k]["n_comparisons"] == 3 and out[k]["p_holm"] >= out[k]["p"]


def test_ppl_change_over_seeds_and_texts():
    rng = np.random.default_rng(6)
    tok = rng.integers(5, 40, 30).astype(float)
    base = tok * rng.uniform(3, 5, 30)
    arm = base[None, :] * rng.uniform(1.0, 1.3, (3, 30))
    r = ppl_change_interval((arm, tok), (base, tok), n_boot=2000)
    per_seed = [100 * (math.exp(a.sum() / tok.sum()) / math.exp(base.sum() / tok.sum()) - 1) for a in arm]
    assert r["per_seed"] == pytest.approx(per_seed) and r["estimate"] == pytest.approx(np.mean(per_seed))
    assert r["lo"] < r["estimate"] < r["hi"] and r["covers"] == "seeds x texts" and r["n_items"] == 30
    same = ppl_change_interval((arm, tok), (base, tok), (arm, tok), n_boot=500)
    assert (same["estimate"], same["lo"], same["hi"], same["p"]) == (0.0, 0.0, 0.0, 1.0)
    one = ppl_change_interval((arm[:1], tok), (base, tok), n_boot=500)
    assert one["covers"] == "texts" and one["estimate"] == pytest.approx(per_seed[0])
    with pytest.raises(ValueError, match="scored token"):
        ppl_change_interval((arm, tok * 0), (base, tok))
    with pytest.raises(ValueError, match="one row"):
        ppl_change_interval((arm, tok), (base[:5], tok[:5]))


def _probit_arm(rng, mu, item, sd_seed, seeds):
    """0/1 results of one arm: P(correct) = Phi(mu + seed effect + item effect) (one latent normal each)."""
    latent = mu + rng.normal(0, sd_seed, (seeds, 1)) + item
    return (rng.normal(size=latent.shape) < latent).astype(float)


def test_two_level_intervals_cover_the_truth_and_item_only_intervals_do_not():
    """Brute-force coverage: 1,000 simulated studies (8 seeds x 60 items, probit model with a seed random
    effect of sd 0.35 per arm and item random effects of sd 0.8 shared by the arms, the second arm with an
    extra item effect of sd 0.5). The truth is the population accuracy over new seeds and new items,
    Phi(mu / sqrt(1 + sd_seed^2 + sd_item^2)). The two-level 95% intervals cover it 93-97% of the time; the
    item-only paired bootstrap of the seed-averaged scores (the old table's) covers the difference about
    72% of the time (measured 95.1%, 96.2% and 71.9% with this fixed seed)."""
    rng = np.random.default_rng(123)
    seeds, items, reps, n_boot = 8, 60, 1000, 400
    phi = NormalDist().cdf
    truth = phi(0.2 / math.sqrt(1 + 0.35**2 + 0.8**2))
    truth_diff = truth - phi(-0.1 / math.sqrt(1 + 0.35**2 + 0.8**2 + 0.5**2))
    acc = diff = old = 0
    for r in range(reps):
        item = rng.normal(0, 0.8, (1, items))
        a = _probit_arm(rng, 0.2, item, 0.35, seeds)
        b = _probit_arm(rng, -0.1, item + rng.normal(0, 0.5, (1, items)), 0.35, seeds)
        i = two_level_interval(a, n_boot=n_boot, seed=r)
        d = paired_two_level(a, b, n_boot=n_boot, seed=r)
        o = paired_bootstrap(a.mean(0).tolist(), b.mean(0).tolist(), n_boot=n_boot, seed=r)
        acc += i["lo"] <= truth <= i["hi"]
        diff += d["lo"] <= truth_diff <= d["hi"]
        old += o["lo"] <= truth_diff <= o["hi"]
    assert 0.93 <= acc / reps <= 0.97, acc / reps
    assert 0.93 <= diff / reps <= 0.97, diff / reps
    assert old / reps < 0.85, old / reps  # visibly under-covers: the seeds' variation is left out


def _plugin_parts(y: np.ndarray) -> tuple[float, np.ndarray, float]:
    """var(row means)/S, the column means, sum(residual^2)/(S I)^2: the two-level bootstrap's variance parts."""
    S, I = y.shape
    res = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    return y.mean(1).var() / S, y.mean(0), (res**2).sum() / (S * I) ** 2


def test_difference_between_studies_has_the_closed_form_variance_of_its_resampling():
    """Independent items: the variance is each study's two-level variance, summed. Shared items: the seed
    parts of both, var(column means of d1 - column means of d2)/I, and both residual parts: an item that is
    hard for both studies' differences alike counts once, so correlated studies get a narrower interval."""
    rng = np.random.default_rng(8)
    item = rng.normal(size=(1, 40))
    d1 = item + rng.normal(0, 0.5, (3, 40)) + rng.normal(0, 0.3, (3, 1))
    d2 = item + rng.normal(0, 0.5, (4, 40)) + rng.normal(0, 0.3, (4, 1))
    (r1, c1, e1), (r2, c2, e2) = _plugin_parts(d1), _plugin_parts(d2)
    own = difference_between(d1, d2, shared_items=False, n_boot=20_000, seed=2)
    assert own["se"] ** 2 == pytest.approx(r1 + c1.var() / 40 + e1 + r2 + c2.var() / 40 + e2, rel=0.06)
    shared = difference_between(d1, d2, shared_items=True, n_boot=20_000, seed=2)
    assert shared["se"] ** 2 == pytest.approx(r1 + r2 + (c1 - c2).var() / 40 + e1 + e2, rel=0.06)
    assert shared["se"] < 0.8 * own["se"]
    assert own["estimate"] == shared["estimate"] == pytest.approx(d1.mean() - d2.mean())
    assert (shared["n_seeds"], shared["n_items"], shared["approximate"]) == ([3, 4], [40, 40], True)
    assert shared["covers"] == "each study's seeds x items, shared by both"
    assert own["covers"] == "each study's seeds x each study's items"


def test_difference_between_degenerate_cases_and_bad_input():
    rng = np.random.default_rng(1)
    d = rng.integers(-1, 2, (1, 30)).astype(float)
    same = difference_between(d, d, shared_items=True, n_boot=500)  # one seed each, the same items: nothing varies
    assert (same["estimate"], same["lo"], same["hi"], same["p"], same["covers"]) == (
        0,
        0,
        0,
        1,
        "items, shared by both",
    )
    up = difference_between(np.ones((3, 20)), np.zeros((5, 30)), n_boot=999, n_comparisons=3)
    assert (up["lo"], up["hi"], up["p"], up["sim_level"]) == (1.0, 1.0, 2 / 1000, 1 - 0.05 / 3)
    with pytest.raises(ValueError, match="same item count"):
        difference_between(np.ones((3, 20)), np.ones((3, 21)), shared_items=True)
    with pytest.raises(ValueError):
        difference_between(np.ones((3, 20)), [[float("nan")]])


def test_one_seed_replays_follow_the_hypergeometric_law():
    from midblock.evaluation.stats import one_seed_replays

    # one seed, 400 items: the arm is right on the first 120 items, the baseline on none. A 100-item draw's
    # difference is (hits among 100 of 400 with 120 marked) / 100: hypergeometric mean 0.3, variance
    # p(1-p)/n * (N-n)/(N-1)
    a = np.zeros((1, 400))
    a[0, :120] = 1
    d = one_seed_replays(a, np.zeros((1, 400)), 100, draws_per_seed=4000, seed=1)
    var = 0.3 * 0.7 / 100 * (300 / 399)
    assert abs(d.mean() - 0.3) < 4 * np.sqrt(var / 4000)
    assert d.var(ddof=1) == pytest.approx(var, rel=0.1)
    assert np.allclose(d * 100, np.round(d * 100))  # counts out of 100


def test_replay_summary_shares_and_bad_input():
    from midblock.evaluation.stats import one_seed_replays, replay_summary

    s = replay_summary(np.array([[-0.1, 0.0, 0.05], [0.1, 0.12, 0.2]]), win=0.05, reported=0.102)
    assert s["share_win"] == pytest.approx(4 / 6) and s["share_at_least_reported"] == pytest.approx(2 / 6)
    assert s["mean"] == pytest.approx(0.37 / 6) and s["n_replays"] == 6
    with pytest.raises(ValueError):
        one_seed_replays(np.zeros((2, 10)), np.zeros((2, 9)), 5)
    with pytest.raises(ValueError):
        one_seed_replays(np.zeros((2, 10)), np.zeros((2, 10)), 11)
