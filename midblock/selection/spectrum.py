"""Spectrum (Hartford et al. 2024, "Spectrum: Targeted Training on Signal to Noise Ratio", arXiv 2406.06623).

For every weight matrix W (n x m) of the blocks' linear modules, with singular values S:

- noise scale ``sigma = IQR(S) / 1.349`` (the interquartile range of the singular values, scaled as for a
  normal distribution);
- Marchenko-Pastur edge ``sigma * (1 + sqrt(beta))``, ``beta = min(n, m) / max(n, m)``;
- ``SNR = (sum of S above the edge) / (sum of S at or below it) / max(S)`` (infinite when nothing lies at or
  below the edge).

Within each module type (``self_attn.q_proj``, ..., ``mlp.down_proj``) the top P% of the matrices by SNR
(``floor(count * P / 100)`` of them, as the reference tool counts) are selected; everything else is frozen.

- Full form (``--method midblock-full``, the reference tool's): the selected matrices train in full, over
  every linear module type. The reference tool also always trains the input embeddings and the LM head:
  ``spectrum:P`` does the same; ``spectrum:P:blocks`` leaves them frozen, so the backward stops at the lowest
  selected matrix's block.
- LoRA form (``--method midblock``): LoRA adapters on the selected matrices only, ranked among the module
  types of ``--targets`` (the same module types a uniform LoRA arm adapts: the ranking within a type does not
  depend on which other types are ranked). Adapters only: the embeddings and head stay frozen whatever the
  suffix, and the backward stops at the lowest adapted matrix's block. Every type gets the same number k of
  matrices, so the selection holds the rank units of a band of k blocks (see
  :func:`midblock.tuning.prepare.plan`).

What this estimate does and does not do, measured on synthetic matrices (``tests/selection/test_spectrum.py``):
the IQR of the singular values measures the *width* of the noise bulk, not its position, so the edge is not
the edge of a pure-noise spectrum. A 256 x 256 Gaussian matrix has about a quarter of its singular values
above it (SNR about 0.025: near 0 only through the division by ``max(S)``); a 256 x 64 one has every value
above it (nothing below: SNR infinite). With a planted rank-k signal the k signal values do rise above the
edge, and the undivided ratio (``ratio``) grows with the signal's strength, but the count above the edge is
the noise's count plus k, not k, and the SNR divided by ``max(S)`` *falls* as the signal grows (the largest
value grows as fast as the signal sum). midblock reproduces the reference's ranking, these properties
included, rather than a corrected estimator.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from midblock.selection import Context, Selection, bad_spec, register, split_suffix

if TYPE_CHECKING:
    from midblock.models.introspect import ModelLayout

EXAMPLE = "spectrum:50 or spectrum:50:blocks"


def mp_edge(S: torch.Tensor, n: int, m: int) -> float:
    """The Marchenko-Pastur edge from the singular values' IQR: ``IQR(S)/1.349 * (1 + sqrt(min/max))``."""
    S = S.double()
    sigma = float(torch.quantile(S, 0.75) - torch.quantile(S, 0.25)) / 1.349
    beta = min(n, m) / max(n, m)
    return sigma * (1.0 + math.sqrt(beta))


def snr(W: torch.Tensor) -> dict[str, float]:
    """Spectrum's signal-to-noise ratio of one weight matrix, with the edge and the count above it."""
    W = W.detach().double()
    S = torch.linalg.svdvals(W)
    edge = mp_edge(S, W.shape[0], W.shape[1])
    above, below = S[S > edge], S[S <= edge]
    noise = float(below.sum())
    ratio = float(above.sum()) / noise if noise > 0 else math.inf
    top = float(S.max())
    return {"snr": ratio / top if top > 0 else 0.0, "ratio": ratio, "edge": edge, "above": int(above.numel())}


def matrix_snrs(layout: ModelLayout, progress: bool = False, names: list[str] | None = None) -> dict[str, list[float]]:
    """SNR of every block's linear modules (``names``: only these block-relative modules):
    ``{block-relative module name: [SNR of block 0, 1, ...]}``."""
    names = list(layout.linear_names) if names is None else list(names)
    out: dict[str, list[float]] = {name: [] for name in names}
    jobs = [(b, name) for b in range(layout.num_layers) for name in names]
    for b, name in tqdm(jobs, desc="spectrum SNR", unit="matrix", disable=None if progress else True):
        out[name].append(snr(layout.blocks[b].get_submodule(name).weight)["snr"])
    return out


def top_by_type(snrs: dict[str, list[float]], percent: float) -> dict[int, list[str]]:
    """Within each module type, the ``floor(count * percent / 100)`` blocks of highest SNR (ties: lower block)."""
    chosen: dict[int, list[str]] = {}
    for name, values in snrs.items():
        k = math.floor(len(values) * percent / 100)
        order = sorted(range(len(values)), key=lambda b: (-values[b], b))
        for b in order[:k]:
            chosen.setdefault(b, []).append(name)
    return {b: chosen[b] for b in sorted(chosen)}


class Spectrum:
    """``spectrum:P[:blocks]``: the top P% matrices by SNR per module type, trained in full or with LoRA
    adapters (arXiv 2406.06623)."""

    name = "spectrum"
    forms = ("lora", "full")
    param_sized = True

    def parse(self, arg: str) -> tuple[float, bool]:
        main, ends = split_suffix(arg, f"spectrum:{arg}")
        try:
            p = float(main)
        except ValueError:
            raise bad_spec(f"spectrum:{arg}", "P must be a percentage", EXAMPLE) from None
        if not (0 < p <= 100) or not math.isfinite(p):
            raise bad_spec(f"spectrum:{arg}", f"P must lie in (0, 100], got {main}", EXAMPLE)
        return p, ends

    def select(self, arg: str, ctx: Context) -> Selection:
        p, ends = self.parse(arg)
        ends = ends and ctx.form == "full"  # the LoRA form trains adapters only
        spec = f"spectrum:{arg}"
        if ctx.on_meta:  # validation on a skeleton: the weights decide, later
            return Selection(spec, self.name, list(range(ctx.num_layers)), train_ends=ends, deferred=True)
        names = ctx.targets if ctx.form == "lora" and ctx.targets else list(ctx.layout.linear_names)
        snrs = matrix_snrs(ctx.layout, progress=ctx.num_layers * len(names) > 64, names=names)
        modules = top_by_type(snrs, p)
        if not modules and not ends:
            raise bad_spec(spec, f"{p:g}% of {ctx.num_layers} matrices per type selects none", "a larger P")
        details = {"percent": p, "form": ctx.form, "snr": {k: [round(v, 6) for v in vals] for k, vals in snrs.items()}}
        return Selection(spec, self.name, sorted(modules), modules=modules, train_ends=ends, details=details)


register(Spectrum())
