"""Checks of numeric settings, shared by every config dataclass's ``__post_init__``.

Python's ``float()`` (and so argparse's ``type=float`` and YAML) accepts ``inf`` and ``nan``, and every
comparison with ``nan`` is False, so a plain ``if lr <= 0`` lets both through: ``--lr inf`` then fails
at step 2 after the run directory exists. Configs validate on construction, before any model is loaded
or any file written; :func:`check_number` is the one place that says what a finite, in-range number is,
and :func:`check_float_fields` is the net under it: any float field of a config, including one added
later without its own check, must at least be finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from midblock.errors import MidblockError

# Seeds are integers in [0, SEED_LIMIT): the range torch, numpy and random all accept (torch.manual_seed
# overflows at 2**64, numpy at 2**32), so a seed is refused in one line before any library sees it.
SEED_LIMIT = 2**32


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str | None = None,
) -> float:
    """``value`` as a float, or ``MidblockError`` when it is not a finite number in the given range.

    ``low``/``high`` bound the range (inclusive unless ``low_open``/``high_open``). ``name`` is how the
    user knows the setting (``--lr``, ``learning rate``...), so the one-line error names it.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MidblockError(f"{name} must be a number, got {value!r}", hint=hint)
    v = float(value)
    if not math.isfinite(v):
        raise MidblockError(f"{name} must be a finite number, got {value!r}", hint=hint)
    if low is not None and (v <= low if low_open else v < low):
        raise MidblockError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}", hint=hint)
    if high is not None and (v >= high if high_open else v > high):
        raise MidblockError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value!r}", hint=hint)
    return v


def check_float_fields(config: Any, allow_non_finite: tuple[str, ...] = ()) -> None:
    """Every float-valued field of the dataclass ``config`` is finite (except those in ``allow_non_finite``).

    Catches the fields a config's own range checks forget; run it at the end of ``__post_init__``.
    """
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if isinstance(v, float) and f.name not in allow_non_finite and not math.isfinite(v):
            raise MidblockError(f"{f.name.replace('_', ' ')} must be a finite number, got {v!r}")
