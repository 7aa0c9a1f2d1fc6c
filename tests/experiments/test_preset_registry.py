"""The comparison presets: one registered function each, with a docstring, looked up by name."""

from __future__ import annotations

import inspect

import pytest

from midblock.errors import MidblockError
from midblock.experiments.grid import PRESETS, PROFILES, CompareConfig, paper_segments, preset

NAMES = ["quick", "full", "smoke", "band-landscape", "paper-segments", "selection-family", "paper-protocol"]


def test_every_preset_is_a_registered_function_with_a_docstring():
    assert PRESETS.names() == NAMES
    assert set(PROFILES) <= set(PRESETS)  # the demo's profiles are presets too
    for name, make in PRESETS.items():
        assert inspect.isfunction(make) and (make.__doc__ or "").strip(), name
        assert PRESETS.doc(name) == inspect.cleandoc(make.__doc__)


@pytest.mark.parametrize("name", NAMES)
def test_each_preset_builds_a_valid_grid_with_its_own_alpha_policy(name):
    own = "fixed" if name == "paper-protocol" else "constant-ratio"
    grid = preset(name)
    assert grid == PRESETS.lookup(name)() == preset(name, own) == preset(name, "")
    assert {m.get("alpha_policy", own) for m in grid["methods"]} == {own}
    other = "rslora"
    assert all(m.get("alpha_policy", other) == other for m in preset(name, other)["methods"])
    CompareConfig.from_dict(grid)  # validates before anything would run


def test_paper_segments_is_its_own_function_with_every_layout():
    grid = paper_segments("fixed")
    assert grid == preset("paper-segments", "fixed")
    assert [m["name"] for m in grid["methods"]][:2] == ["uniform-r64", "mid-seg2-4"] and len(grid["methods"]) == 11
    assert paper_segments(model="random:llama-8l")["model"] == "random:llama-8l"


def test_an_unknown_preset_is_one_line_listing_the_presets():
    with pytest.raises(MidblockError) as e:
        preset("slow")
    assert e.value.one_line() == f"unknown preset 'slow' (use {', '.join(NAMES)})"
