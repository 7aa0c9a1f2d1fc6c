import pytest

from midblock.errors import MidblockError
from midblock.layers import format_indices, index_runs, resolve_layers, segment_bounds


def r(a, b):
    return list(range(a, b + 1))


@pytest.mark.parametrize(
    "spec,L,expected",
    [
        # the paper's Mid-Block maps (segments 2-4 of 5)
        ("seg2-4/5", 16, r(3, 11)),
        ("seg2-4/5", 32, r(6, 24)),
        ("seg2-4/5", 40, r(8, 31)),
        ("seg2-4/5", 64, r(12, 50)),
        ("seg2-4/5", 30, r(6, 23)),
        ("0.2:0.8", 30, r(6, 23)),
        ("0.2:0.8", 16, r(3, 12)),  # midpoints 3.5/16=0.219 .. 12.5/16=0.78
        ("0:1", 7, r(0, 6)),
        ("all", 5, r(0, 4)),
        ("6-23", 30, r(6, 23)),
        ("3,5,7", 10, [3, 5, 7]),
        ("0-2,7", 10, [0, 1, 2, 7]),
        ("7,3,3", 10, [3, 7]),
        ("first:4", 10, r(0, 3)),
        ("last:2", 6, [4, 5]),
        ("seg1/5", 16, r(0, 2)),
        ("seg5/5", 16, r(12, 15)),
        ("seg3/3", 30, r(20, 29)),
        (" SEG2-4/5 ", 32, r(6, 24)),
        ([1, 2], 4, [1, 2]),
        (3, 4, [3]),
    ],
)
def test_resolve_layers_table(spec, L, expected):
    assert resolve_layers(spec, L) == expected


@pytest.mark.parametrize(
    "spec,L",
    [
        ("", 10),
        ("0.9:1.0", 4),  # no midpoint in [0.9, 1): empty
        ("5-12", 10),
        ("first:0", 10),
        ("last:11", 10),
        ("seg2-4/5", 4),  # more segments than blocks
        ("seg4-2/5", 30),
        ("seg0/5", 30),
        ("0.8:0.2", 30),
        ("banana", 30),
        ("3-1", 30),
        ("10", 10),
        ([], 10),
    ],
)
def test_resolve_layers_errors(spec, L):
    with pytest.raises(MidblockError):
        resolve_layers(spec, L)


def test_segments_partition_every_block():
    for L in range(1, 70):
        for K in range(1, min(L, 9) + 1):
            b = segment_bounds(L, K)
            assert b[0][0] == 0 and b[-1][1] == L
            assert all(b[i][1] == b[i + 1][0] for i in range(K - 1))
            assert all(e > s for s, e in b)


def test_index_runs():
    assert index_runs([0, 1, 2, 5, 7, 8]) == [(0, 2), (5, 5), (7, 8)]
    assert index_runs([3]) == [(3, 3)] and index_runs([]) == []
    assert index_runs(list(range(6, 24))) == [(6, 23)]


def test_format_indices_roundtrip():
    for idx in ([0, 1, 2, 5, 7, 8], [3], list(range(6, 24)), [1, 3, 5]):
        assert resolve_layers(format_indices(idx), 30) == idx
    assert format_indices(list(range(6, 24))) == "6-23"


def test_the_papers_band_is_spelled_once():
    """MidBlockConfig's default, the analysis' fallback, the presets and the demo all mean PAPER_BAND."""
    from midblock.analysis.recommend import FALLBACK
    from midblock.experiments.demo import DemoConfig
    from midblock.experiments.grid import band_landscape, preset
    from midblock.layers import PAPER_BAND
    from midblock.tuning.config import MidBlockConfig

    assert PAPER_BAND == "seg2-4/5"
    assert MidBlockConfig().band == FALLBACK == DemoConfig().band == PAPER_BAND
    for grid in (preset("quick"), preset("full")):
        assert [m.get("band") for m in grid["methods"] if m["method"] == "midblock"] == [PAPER_BAND]
    assert next(m for m in band_landscape()["methods"] if m["name"] == "paper")["band"] == PAPER_BAND
    assert resolve_layers(PAPER_BAND, 24) != resolve_layers("0.2:0.8", 24)  # why one spelling matters
