"""Property-based tests (hypothesis) of the band parser and the JSONL loader."""

import json

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from midblock.data import read_jsonl
from midblock.errors import MidblockError
from midblock.layers import format_indices, resolve_layers, segment_bounds

layers = st.integers(min_value=1, max_value=96)


@given(L=layers, data=st.data())
def test_fraction_band_is_contiguous_and_matches_midpoint_rule(L, data):
    a = data.draw(st.floats(0.0, 0.95))
    b = data.draw(st.floats(a + 0.01, 1.0))
    spec = f"{a:.4f}:{b:.4f}"
    a4, b4 = float(f"{a:.4f}"), float(f"{b:.4f}")
    expected = [i for i in range(L) if a4 <= (i + 0.5) / L < b4]
    if not expected or a4 >= b4:
        try:
            resolve_layers(spec, L)
        except MidblockError:
            return
        raise AssertionError("an empty band must be an error")
    got = resolve_layers(spec, L)
    assert got == expected
    assert got == list(range(got[0], got[-1] + 1))


@given(L=layers, data=st.data())
def test_segments_cover_disjointly(L, data):
    K = data.draw(st.integers(1, L))
    seen = []
    for i in range(1, K + 1):
        seen += resolve_layers(f"seg{i}/{K}", L)
    assert seen == list(range(L))
    assert resolve_layers(f"seg1-{K}/{K}", L) == list(range(L))
    bounds = segment_bounds(L, K)
    sizes = [e - s for s, e in bounds]
    assert max(sizes) - min(sizes) <= 1


@given(L=layers, idx=st.lists(st.integers(0, 95), min_size=1, max_size=20))
def test_index_lists_roundtrip_through_format(L, idx):
    spec = ",".join(map(str, idx))
    if max(idx) >= L:
        try:
            resolve_layers(spec, L)
        except MidblockError:
            return
        raise AssertionError("out of range must be an error")
    got = resolve_layers(spec, L)
    assert got == sorted(set(idx))
    assert resolve_layers(format_indices(got), L) == got


@given(spec=st.text(max_size=12), L=layers)
@example(spec="¹", L=1)  # found by hypothesis: a Unicode digit that int() refuses
def test_any_string_resolves_or_raises_midblock_error(spec, L):
    try:
        out = resolve_layers(spec, L)
    except MidblockError:
        return
    assert out and all(0 <= i < L for i in out) and out == sorted(set(out))


rows = st.lists(
    st.fixed_dictionaries({"question": st.text(max_size=30), "answer": st.text(max_size=30)}), min_size=1, max_size=8
)


@settings(max_examples=50)
@given(rows=rows, blank=st.booleans())
def test_jsonl_roundtrip(tmp_path_factory, rows, blank):
    p = tmp_path_factory.mktemp("j") / "d.jsonl"
    sep = "\n\n" if blank else "\n"
    p.write_text(sep.join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert read_jsonl(p, required=("question", "answer")) == rows


@settings(max_examples=50)
@given(rows=rows, garbage=st.text(min_size=1, max_size=10), pos=st.integers(0, 8))
def test_jsonl_bad_line_is_named(tmp_path_factory, rows, garbage, pos):
    assume(not _is_json(garbage))  # valid JSON is not a corruption
    # a blank or line-breaking string is not one bad line (assume: hypothesis counts these as skipped, not passed)
    assume(garbage.strip() and not any(c in garbage for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"))
    lines = [json.dumps(r) for r in rows]
    pos = min(pos, len(lines))
    lines.insert(pos, garbage)
    p = tmp_path_factory.mktemp("j") / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        read_jsonl(p)
    except MidblockError as e:
        assert f"bad.jsonl:{pos + 1}:" in str(e)
        return
    raise AssertionError("corrupt line accepted")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
