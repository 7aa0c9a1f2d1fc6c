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
