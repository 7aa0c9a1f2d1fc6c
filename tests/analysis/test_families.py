"""The metric families ``--metrics`` names: one registry, each family with its metrics and a description."""

from __future__ import annotations

import pytest

from midblock.analysis.config import DEFAULT_METRICS, FAMILIES, OPT_IN, parse_metrics
from midblock.errors import MidblockError


def test_every_family_is_registered_with_its_metrics_and_a_description():
    assert len(FAMILIES) == 17 and FAMILIES.names()[:3] == [
        "prompt_entropy",
        "prompt_entropy_centered",
        "dataset_entropy",
    ]
    metrics = [m for f in FAMILIES.values() for m in f.metrics]
    assert len(metrics) == len(set(metrics))  # a metric belongs to one family
    for name in FAMILIES:
        assert FAMILIES.doc(name).strip() and FAMILIES[name].metrics, name
    assert FAMILIES["cka"].metrics == ("cka", "cka_unbiased", "cka_consecutive")


def test_the_opt_in_and_pooled_sets_are_unchanged():
    assert OPT_IN == ("prompt_entropy_centered", "cka_token", "logit_lens")
    assert DEFAULT_METRICS == tuple(f for f in FAMILIES if f not in OPT_IN)
    pooled = {f for f, fam in FAMILIES.items() if fam.pooled}
    want = {"dataset_entropy", "effective_rank", "l2_norm", "spectral", "cka", "cosine", "mean_shift"}
    assert pooled == want | {"change_intensity"}


def test_parse_metrics_resolves_names_and_refuses_unknown_ones_in_one_line():
    assert parse_metrics("cka, default")[:1] == ["cka"] and parse_metrics("all") == FAMILIES.names()
    with pytest.raises(MidblockError) as e:
        parse_metrics("bogus")
    line = e.value.one_line()
    assert line.startswith("unknown metric 'bogus' (use prompt_entropy, ") and line.endswith(", default, all)")
    assert all(f in line for f in FAMILIES)
    with pytest.raises(MidblockError, match="'rankme' is written by family 'effective_rank'"):
        parse_metrics("rankme")
