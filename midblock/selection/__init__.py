"""Layer-selection strategies: one registry, from a spec string to what to train.

A selection spec is what ``MidBlockConfig.band`` (``midblock train --band``) holds. Its first word picks
the strategy; anything that is not a registered name is the band language of :mod:`midblock.layers`:

==================  =====================================================================================
spec                strategy
==================  =====================================================================================
``seg2-4/5``, ...   the band language (segments, depth fractions, index lists, ``first:N``...): the
                    blocks it names (:mod:`midblock.selection.bands`)
``auto``            the band ``midblock analyze`` recommends (``--analysis DIR``)
``cka-select:F``    the fraction F of blocks whose input and output agree least by linear CKA
                    (Ogawa et al., arXiv 2602.05988; :mod:`midblock.selection.cka`)
``spectrum:P``      the top P% of weight matrices by signal-to-noise ratio within each module type
                    (Hartford et al. 2024, arXiv 2406.06623; :mod:`midblock.selection.spectrum`)
``lisa:G/K``        a fresh random set of G blocks every K steps
                    (Pan et al., NeurIPS 2024, arXiv 2403.17919; :mod:`midblock.selection.lisa`)
==================  =====================================================================================

Every strategy has both forms: ``--method midblock`` puts LoRA adapters on what it selects (Spectrum: on
the selected matrices only, among the ``--targets`` module types; LISA: on every block, only the active
blocks' adapters training at each step), ``--method midblock-full`` trains the selected parameters in full.
In the full form Spectrum and LISA train the embeddings and the LM head too, as their reference tools do; a
``:blocks`` suffix (``spectrum:50:blocks``, ``lisa:2/20:blocks``) leaves them frozen, which lets the backward
stop at the lowest trained block. The LoRA forms train adapters only (the embeddings and head stay frozen,
whatever the suffix), so their backward always stops at the lowest adapted (LISA: active) block.

Each strategy is a small unit with a ``parse(arg)`` that validates the spec's argument without a model and
a ``select(arg, ctx)`` that returns a :class:`Selection`: whole blocks, or per-block module names for
per-matrix methods, whether the embeddings and head train, and for LISA a per-step schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from midblock.errors import MidblockError
from midblock.layers import SPEC_HELP

FORMS = ("lora", "full")
BLOCKS_ONLY = "blocks"  # the suffix that keeps embeddings and head frozen


@dataclass
class Selection:
    """What a strategy chose to train on one model."""

    spec: str  # the spec as resolved (``auto`` becomes the recommended band)
    strategy: str  # registry name
    blocks: list[int]  # blocks that train (LISA: every candidate block; the schedule picks per step)
    modules: dict[int, list[str]] = field(default_factory=dict)  # per-matrix: block -> block-relative names
    train_ends: bool = False  # embeddings and LM head train too
    schedule: Any = None  # LISA: a midblock.selection.lisa.LisaSchedule
    details: dict[str, Any] = field(default_factory=dict)  # the evidence (scores, SNRs...) for the record
    deferred: bool = False  # weights or data were not available (a meta skeleton): only validated

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "strategy": self.strategy,
            "blocks": list(self.blocks),
            "modules": {str(b): list(m) for b, m in self.modules.items()},
            "train_ends": self.train_ends,
            "schedule": self.schedule.to_dict() if self.schedule is not None else None,
            "details": self.details,
        }


@dataclass
class Context:
    """What a strategy may look at: the model (or a meta skeleton) and its layout, optional data."""

    layout: Any  # midblock.models.introspect.ModelLayout
    model: Any = None  # the root model (needed to run a forward)
    data: list[list[int]] | None = None  # token id lists (CKA-select)
    analysis: str | None = None  # an analysis directory (auto)
    seed: int = 0  # LISA's active sets
    form: str = "full"  # "lora" (adapters on the selection) or "full" (its parameters), one of FORMS
    targets: list[str] | None = None  # LoRA form: the block-relative module names adapters may go on

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    @property
    def on_meta(self) -> bool:
        w = next(iter(self.layout.blocks[0].parameters()), None)
        return w is not None and w.is_meta


class Strategy(Protocol):
    name: str
    forms: tuple[str, ...]  # which of lora / full the method has
    param_sized: bool  # the full form's size (P, G) can be chosen to fit a parameter budget

    def parse(self, arg: str) -> Any: ...

    def select(self, arg: str, ctx: Context) -> Selection: ...


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    REGISTRY[strategy.name] = strategy
    return strategy


def split_spec(spec: str) -> tuple[Strategy, str]:
    """The strategy a spec names and the argument after its name (band specs: the whole spec)."""
    _load()
    s = str(spec).strip()
    head, _, arg = s.partition(":")
    if head.lower() in REGISTRY and head.lower() != "band":
        return REGISTRY[head.lower()], arg
    return REGISTRY["band"], s


def check_spec(spec: str) -> Strategy:
    """Validate a spec without a model (the band language's indices are checked against the model later)."""
    strategy, arg = split_spec(spec)
    strategy.parse(arg)
    return strategy


def param_sized(spec: str) -> bool:
    """True for strategies whose full form is sized to a parameter budget (Spectrum's P, LISA's G)."""
    return split_spec(spec)[0].param_sized


def select(spec: str, layout: Any, **ctx: Any) -> Selection:
    """Resolve ``spec`` on a model's layout; ``ctx``: ``model``, ``data``, ``analysis``, ``seed``, ``form``
    (``lora`` or ``full``, default full) and ``targets`` (the LoRA form's module names)."""
    strategy, arg = split_spec(spec)
    c = Context(layout, **ctx)
    if c.form not in strategy.forms:
        raise MidblockError(f"'{spec}' has no {c.form} form", hint="its forms: " + ", ".join(strategy.forms))
    return strategy.select(arg, c)


def names() -> list[str]:
    _load()
    return list(REGISTRY)


def split_suffix(arg: str, what: str) -> tuple[str, bool]:
    """``'50:blocks'`` -> ``('50', False)`` (embeddings and head frozen); ``'50'`` -> ``('50', True)``."""
    main, _, suffix = arg.partition(":")
    if suffix and suffix != BLOCKS_ONLY:
        raise MidblockError(f"{what}: unknown suffix ':{suffix}'", hint=f"the only suffix is ':{BLOCKS_ONLY}'")
    return main, not suffix


def bad_spec(spec: str, why: str, example: str) -> MidblockError:
    return MidblockError(f"cannot parse selection '{spec}': {why}", hint=f"e.g. {example}; bands: {SPEC_HELP}")


def _load() -> None:
    # each module registers its strategies on import (importing one alone registers only its own)
    from midblock.selection import bands, cka, lisa, spectrum  # noqa: F401
