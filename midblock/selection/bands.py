"""The band language and ``auto`` as registry entries.

- ``band``: the spec language of :mod:`midblock.layers`, unchanged (``seg2-4/5``, ``0.2:0.8``, ``6-23``,
  ``3,5,7``, ``first:N``, ``last:N``, ``all``). The paper's band ``seg2-4/5`` is the middle three of five
  segments of depth (the Mid-Block Efficient Tuning paper's layout).
- ``auto``: the band a ``midblock analyze`` run recommends from the base model's layer-wise change
  (``results.json: recommended_band.spec``), read from the analysis directory.

Both have the LoRA and the full-parameter form.
"""

from __future__ import annotations

from pathlib import Path

from midblock.errors import MidblockError
from midblock.io import read_json
from midblock.layers import SPEC_HELP, resolve_layers
from midblock.selection import Context, Selection, register


class Band:
    """The band language of :mod:`midblock.layers`: the blocks a spec names."""

    name = "band"
    forms = ("lora", "full")
    param_sized = False

    def parse(self, arg: str) -> str:
        if not arg.strip():
            raise MidblockError("band spec is empty", hint=SPEC_HELP)
        return arg

    def select(self, arg: str, ctx: Context) -> Selection:
        return Selection(arg, self.name, resolve_layers(self.parse(arg), ctx.num_layers))


def recommended_spec(analysis: str | None) -> str:
    """The band an analysis directory recommends (``results.json: recommended_band.spec``)."""
    if not analysis:
        raise MidblockError("band 'auto' needs an analysis", hint="pass --analysis DIR (a `midblock analyze` output)")
    path = Path(str(analysis)) / "results.json"
    if not path.exists():
        raise MidblockError(f"band 'auto': {path} does not exist", hint="run `midblock analyze --out DIR` first")
    rec = read_json(path, dict).get("recommended_band")
    spec = rec.get("spec") if isinstance(rec, dict) else None
    if not spec:
        raise MidblockError(f"band 'auto': {path} has no recommended_band.spec", hint="pass an explicit --band")
    return str(spec)


class Auto:
    """``auto``: the band ``midblock analyze`` recommends for the base model (see ``docs/metrics.md``)."""

    name = "auto"
    forms = ("lora", "full")
    param_sized = False

    def parse(self, arg: str) -> None:
        if arg:
            raise MidblockError(f"'auto:{arg}': auto takes no argument", hint="write auto and pass --analysis DIR")

    def select(self, arg: str, ctx: Context) -> Selection:
        self.parse(arg)
        spec = recommended_spec(ctx.analysis)
        sel = Selection(spec, self.name, resolve_layers(spec, ctx.num_layers))
        sel.details = {"analysis": str(ctx.analysis)}
        return sel


register(Band())
register(Auto())
