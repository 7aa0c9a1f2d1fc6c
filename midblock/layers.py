"""The layer-selection language shared by every command.

Specs (L = number of decoder blocks, indices 0-based):

- ``all``                      every block
- ``0.2:0.8``                  depth fractions: block i belongs when (i + 0.5) / L lies in [a, b)
- ``6-23``                     an inclusive index range
- ``3,5,7``                    a list (items may themselves be ranges: ``0-2,7``)
- ``first:N`` / ``last:N``     the first or last N blocks
- ``seg2-4/5``                 the paper's segments: K segments, segment i (1-based) holds blocks
                               floor((i-1)L/K) .. floor(iL/K)-1; ``seg3/5`` is one segment
"""

from __future__ import annotations

import re

from midblock.errors import MidblockError

_SEG = re.compile(r"^seg(\d+)(?:-(\d+))?/(\d+)$")
_FRAC = re.compile(r"^(\d*\.?\d+):(\d*\.?\d+)$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")
_FIRST_LAST = re.compile(r"^(first|last):(\d+)$")

# The paper's Mid-Block band: the middle three of five segments (20%-80% of depth by the paper's floor rule).
# The one spelling used wherever "the paper's band" is meant (MidBlockConfig's default, presets, the demo,
# the analysis' fallback). ``0.2:0.8`` is close but not equal: it picks other blocks at 16 or 24 blocks.
PAPER_BAND = "seg2-4/5"

SPEC_HELP = "use e.g. 'all', '0.2:0.8', '6-23', '3,5,7', 'first:4', 'last:2' or 'seg2-4/5'"


def segment_bounds(num_layers: int, num_segments: int) -> list[tuple[int, int]]:
    """[start, end) block indices of each of K segments (the paper's floor rule)."""
    if num_segments < 1:
        raise MidblockError(f"segment count must be >= 1, got {num_segments}")
    if num_segments > num_layers:
        raise MidblockError(
            f"cannot cut {num_layers} blocks into {num_segments} segments",
            hint=f"use at most {num_layers} segments",
        )
    return [((i * num_layers) // num_segments, ((i + 1) * num_layers) // num_segments) for i in range(num_segments)]


def _parse(spec: str, L: int) -> list[int]:
    s = spec.strip().lower().replace(" ", "")
    if s == "all":
        return list(range(L))
    if m := _SEG.match(s):
        a, b, k = int(m[1]), int(m[2] or m[1]), int(m[3])
        if not (1 <= a <= b <= k):
            raise MidblockError(f"band '{spec}': segments must satisfy 1 <= first <= last <= K")
        bounds = segment_bounds(L, k)
        return list(range(bounds[a - 1][0], bounds[b - 1][1]))
    if m := _FRAC.match(s):
        a, b = float(m[1]), float(m[2])
        if not (0.0 <= a < b <= 1.0):
            raise MidblockError(f"band '{spec}': fractions must satisfy 0 <= a < b <= 1")
        return [i for i in range(L) if a <= (i + 0.5) / L < b]
    if m := _FIRST_LAST.match(s):
        n = int(m[2])
        if n < 1 or n > L:
            raise MidblockError(f"band '{spec}': the model has {L} blocks", hint=f"use {m[1]}:1 .. {m[1]}:{L}")
        return list(range(n)) if m[1] == "first" else list(range(L - n, L))
    out: list[int] = []
    for part in s.split(","):
        if m := _RANGE.match(part):
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise MidblockError(f"band '{spec}': range {part} is reversed", hint=f"write {hi}-{lo}")
            out.extend(range(lo, hi + 1))
        elif part.isdecimal():  # not isdigit(): "¹" is a digit that int() refuses
            out.append(int(part))
        else:
            raise MidblockError(f"cannot parse band '{spec}'", hint=SPEC_HELP)
    return out


def resolve_layers(spec: str | int | list[int] | tuple[int, ...], num_layers: int) -> list[int]:
    """Resolve a band spec to a sorted list of block indices; an empty or out-of-range result is an error."""
    if num_layers < 1:
        raise MidblockError(f"a model needs at least one block, got {num_layers}")
    if isinstance(spec, bool):
        raise MidblockError(f"band must be a spec string or a list of indices, got {spec!r}")
    if isinstance(spec, int):
        idx = [spec]
    elif isinstance(spec, (list, tuple)):
        idx = [int(i) for i in spec]
    elif isinstance(spec, str):
        if not spec.strip():
            raise MidblockError("band spec is empty", hint=SPEC_HELP)
        idx = _parse(spec, num_layers)
    else:
        raise MidblockError(f"band must be a spec string or a list of indices, got {type(spec).__name__}")
    bad = [i for i in idx if i < 0 or i >= num_layers]
    if bad:
        raise MidblockError(
            f"band '{spec}' selects block {bad[0]}, but the model has {num_layers} blocks (0..{num_layers - 1})"
        )
    out = sorted(set(idx))
    if not out:
        raise MidblockError(f"band '{spec}' selects no block of a {num_layers}-block model", hint=SPEC_HELP)
    return out


def index_runs(idx: list[int]) -> list[tuple[int, int]]:
    """The maximal runs of consecutive indices, first and last of each: [0,1,2,5,7,8] -> [(0,2),(5,5),(7,8)]."""
    runs: list[tuple[int, int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def format_indices(idx: list[int]) -> str:
    """Compact form of an index list: [0,1,2,5,7,8] -> '0-2,5,7-8' (itself a valid spec)."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in index_runs(idx))
