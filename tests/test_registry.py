"""The named-registry type every by-name choice uses: lookup, the one-line error for an unknown name, the
rule that every entry describes itself, subset views and the help list."""

from __future__ import annotations

import pytest

from midblock.errors import MidblockError
from midblock.registry import Registry, doc_of, summary_of


def _colours() -> Registry:
    r: Registry = Registry("colour")

    @r.register("red")
    def red() -> str:
        """The colour of ``fire``.

        More text that the help list leaves out."""
        return "red"

    def blue() -> str:
        """The colour of the sky."""
        return "blue"

    r.register("blue", blue)
    return r


def test_known_names_resolve_in_registration_order():
    r = _colours()
    assert r.names() == list(r) == ["red", "blue"] and len(r) == 2
    assert r.lookup("blue")() == "blue" and r["red"]() == "red" and "red" in r and "green" not in r
    assert ", ".join(r) == "red, blue"  # code that joined a tuple of names keeps working


@pytest.mark.parametrize("bad", ["green", "", None, ["red"]])
def test_an_unknown_name_is_one_line_listing_the_known_names(bad):
    with pytest.raises(MidblockError) as e:
        _colours().lookup(bad, also=("ppl",))
    line = e.value.one_line()
    assert "\n" not in str(e.value)
    assert line == f"unknown colour '{bad}' (use red, blue, ppl)"


def test_every_entry_must_describe_itself_and_be_registered_once():
    r = _colours()
    with pytest.raises(ValueError, match="no docstring"):
        r.register("green", lambda: "green")
    with pytest.raises(ValueError, match="registered twice"):
        r.register("red", r["blue"])
    assert r.names() == ["red", "blue"]


def test_docs_summaries_and_the_help_list():
    r = _colours()
    assert doc_of(r["red"]).startswith("The colour of ``fire``.\n\nMore text")
    assert summary_of(r["red"]) == "The colour of fire."  # first paragraph, literals unwrapped
    lines = r.describe().splitlines()
    assert lines == ["  red   The colour of fire.", "  blue  The colour of the sky."]
    long = Registry("x")
    long.register("a", type("E", (), {"doc": "word " * 40})())
    wrapped = long.describe(width=40).splitlines()
    assert len(wrapped) > 1 and all(len(x) <= 40 for x in wrapped) and wrapped[1].startswith("     word")


def test_a_subset_is_a_live_view_that_cannot_be_registered_into():
    r = _colours()
    warm = r.subset("warm colour", lambda e: e() == "red")
    assert warm.names() == ["red"]
    with pytest.raises(MidblockError, match="unknown warm colour 'blue' \\(use red\\)"):
        warm.lookup("blue")

    def red2() -> str:
        """Another red."""
        return "red"

    r.register("crimson", red2)
    assert warm.names() == ["red", "crimson"]
    with pytest.raises(ValueError):
        warm.register("scarlet", red2)
