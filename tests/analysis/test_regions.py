"""Depth regions of a change profile: the paper's fifths, region means, seeds, rows from metrics.csv."""

from __future__ import annotations

import math

import pytest
import torch

from midblock.analysis.regions import block_profiles, mean_profile, region_blocks, region_means, summarize


def test_regions_are_the_paper_fifths_by_its_floor_rule():
    assert region_blocks(30) == {"bottom": list(range(6)), "middle": list(range(6, 24)), "top": list(range(24, 30))}
    r18 = region_blocks(18)  # Gemma-3-270m: floor(18/5) = 3, floor(72/5) = 14
    assert r18["bottom"] == [0, 1, 2] and r18["middle"] == list(range(3, 14)) and r18["top"] == list(range(14, 18))


def test_region_means_and_the_top_to_middle_ratio():
    p = torch.tensor([1.0] * 6 + [2.0] * 18 + [8.0] * 6, dtype=torch.float64)
    m = region_means(p)
    assert (m["bottom"], m["middle"], m["top"], m["top/middle"]) == (1.0, 2.0, 8.0, 4.0)
    p[0] = math.nan  # a block without a value is skipped, not counted as zero
    assert region_means(p)["bottom"] == 1.0
    flat = region_means(torch.zeros(10, dtype=torch.float64))
    assert math.isnan(flat["top/middle"])  # no change in the middle: no ratio


def test_summary_over_seeds_is_a_t_interval_and_one_run_has_none():
    runs = [{"1-cka": torch.tensor([0.0] * 6 + [1.0] * 18 + [x] * 6, dtype=torch.float64)} for x in (2.0, 4.0, 6.0)]
    s = summarize(runs)["1-cka"]
    assert s["n"] == 3 and s["top"]["mean"] == pytest.approx(4.0)
    half = 4.302652729911275 * 2.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (s["top"]["lo"], s["top"]["hi"]) == pytest.approx((4.0 - half, 4.0 + half))
    assert s["middle"]["lo"] == pytest.approx(1.0)  # no spread over seeds: a zero-width interval
    one = summarize(runs[:1])["1-cka"]["top"]
    assert one["mean"] == 2.0 and math.isnan(one["lo"]) and one["n"] == 1
    assert mean_profile(runs, "1-cka")[-1] == pytest.approx(4.0) and mean_profile(runs, "logit_kl") is None


def _rows(variant="tuned", L=5):
    rows = []
    for layer in range(L + 1):  # layer 0: the embedding output, not a block
        d = layer / L
        rows += [
            {"variant": variant, "dataset": "a", "layer": layer, "depth": d, "metric": "cka", "value": 1 - 0.1 * layer},
            {"variant": variant, "dataset": "b", "layer": layer, "depth": d, "metric": "cka", "value": 1 - 0.3 * layer},
            {"variant": "base", "dataset": "a", "layer": layer, "depth": d, "metric": "l2_norm", "value": 9.0},
        ]
        if layer:
            rows.append(
                {
                    "variant": variant,
                    "dataset": "a",
                    "layer": layer,
                    "depth": d,
                    "metric": "lora_delta_rel",
                    "value": 2.0,
                }
            )
    return rows


def test_block_profiles_read_block_outputs_turn_similarity_into_change_and_average_datasets():
    prof, L = block_profiles(_rows(), "tuned")
    assert L == 5 and set(prof) == {"1-cka", "weight_delta_rel"}  # LoRA's delta is the weight change
    assert prof["1-cka"].tolist() == pytest.approx([0.2 * b for b in range(1, 6)])  # mean of 0.1 l and 0.3 l
    assert prof["weight_delta_rel"].tolist() == [2.0] * 5
    assert block_profiles(_rows(), "other")[0] == {}
