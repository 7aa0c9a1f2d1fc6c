"""The band rule on synthetic change profiles."""

from __future__ import annotations

import pytest

from midblock.analysis.recommend import RecommendConfig, recommend_band
from midblock.errors import MidblockError
from midblock.layers import resolve_layers


def test_tail_and_head_excluded():
    L = 20
    cka_change = [0.01] * 15 + [0.2, 0.4, 0.6, 0.8, 1.0]  # grows through the last quarter
    wd = [0.1] * 14 + [1.0] * 6
    r = recommend_band({"1-cka": cka_change, "weight_delta_rel": wd}, L)
    assert r["evidence"]["tail"] == list(range(14, 20))
    assert r["indices"] == list(range(4, 14))  # head = first 20% = 4 blocks
    assert resolve_layers(r["spec"], L) == r["indices"]
    assert r["evidence"]["signals_used"] == ["1-cka", "weight_delta_rel"]


def test_leading_sensitive_run_extends_head():
    prof = [1.0, 0.9, 0.8, 0.7, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 1.0]
    r = recommend_band({"grad_norm_rel": prof}, 12, mode="base-only")
    assert r["evidence"]["head"] == [0, 1, 2, 3, 4]
    assert r["indices"] == [5, 6, 7, 8, 9]


def test_flat_or_empty_profile_falls_back_to_paper_band():
    r = recommend_band({"1-cka": [0.0] * 10, "logit_kl": [1e-12] * 10}, 10)
    assert r["evidence"]["fallback"]
    assert r["indices"] == resolve_layers("seg2-4/5", 10)
    # uniform change everywhere: every block is 'sensitive', nothing is left between head and tail
    r2 = recommend_band({"1-cka": [0.5] * 10}, 10)
    assert r2["indices"] == resolve_layers("seg2-4/5", 10) and "fallback" in r2["evidence"]


def test_tau_moves_the_tail_boundary():
    prof = [0.0] * 6 + [0.3, 0.6, 1.0, 1.0]
    assert recommend_band({"s": prof}, 10, RecommendConfig(tau=0.5))["evidence"]["tail"] == [7, 8, 9]
    assert recommend_band({"s": prof}, 10, RecommendConfig(tau=0.25))["evidence"]["tail"] == [6, 7, 8, 9]


def test_nan_entries_and_bad_config():
    prof = [float("nan")] + [0.0] * 7 + [1.0, 1.0]
    r = recommend_band({"s": prof}, 10)
    assert r["indices"] == list(range(2, 8))
    with pytest.raises(MidblockError):
        RecommendConfig(tau=0)
    with pytest.raises(ValueError):
        recommend_band({"s": [1.0]}, 3)


# the per-block score of the band-landscape pilot (base against the uniform arm's seed-0 run), rounded
PILOT = [0.3789, 0.3274, 0.6221, 0.5118, 0.4565, 0.5015, 0.5213, 0.4604, 0.3848, 0.3304, 0.3246, 0.259]
PILOT += [0.3343, 0.3094, 0.2952, 0.3018, 0.333, 0.3492, 0.363, 0.3391, 0.3559, 0.4491, 0.4226, 0.4073]
PILOT += [0.5451, 0.5613, 0.5076, 0.6525, 0.7518, 1.0]


def test_the_rule_reports_the_band_at_every_threshold_and_how_stable_it_is():
    r = recommend_band({"s": PILOT}, 30)
    ev = r["evidence"]
    assert r["spec"] == "6-23"
    by_tau = {x["tau"]: x["spec"] for x in ev["sensitivity"]}
    assert list(by_tau) == [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]
    assert by_tau == {
        0.3: "11-14",  # blocks 0-10 all score >= 0.3: the leading sensitive run swallows the head
        0.35: "6-19",
        0.4: "6-20",
        0.45: "6-23",
        0.5: "6-23",
        0.55: "6-26",
        0.6: "6-26",
        0.65: "6-26",
        0.7: "6-27",
    }
    for x in ev["sensitivity"]:  # each entry is the rule itself run at that threshold
        assert recommend_band({"s": PILOT}, 30, RecommendConfig(tau=x["tau"]))["spec"] == x["spec"]
    # knife-edge: block 26 scores 0.5076, block 23 0.4073; between them the band is 6-23
    assert ev["stable_tau"] == [0.4073, 0.5076]
    for tau, same in ((0.4074, True), (0.5076, True), (0.4073, False), (0.5077, False)):
        assert (recommend_band({"s": PILOT}, 30, RecommendConfig(tau=tau))["spec"] == "6-23") is same, tau


def test_a_flat_tail_is_stable_up_to_tau_one():
    prof = [0.0] * 6 + [0.3, 0.6, 1.0, 1.0]
    assert recommend_band({"s": prof}, 10, RecommendConfig(tau=0.5))["evidence"]["stable_tau"] == [0.3, 0.6]
    peak = [0.1, 0.2, 1.0, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]  # a middle peak never reaches head or tail
    r = recommend_band({"s": peak}, 10)
    assert r["spec"] == "2-9" and r["evidence"]["stable_tau"] == [0.1, 1.0]  # at 0.1 every block is sensitive
