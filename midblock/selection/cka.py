"""CKA-select (Ogawa et al., arXiv 2602.05988): LoRA on the blocks that change their input the most.

``cka-select:F``: on the base model, run up to 128 samples, keep each sample's last-token hidden state at
every layer boundary (the input of block 0, the output of every block), and score block ``i`` by the linear
CKA between its input and its output states (:func:`midblock.analysis.metrics.cka`, biased estimator,
centred). The ``round(F * L)`` blocks (at least one) with the lowest CKA, the blocks whose representation
changes most between neighbours, are trained; ties go to the lower block. The paper trains LoRA on them
(``--method midblock``); ``--method midblock-full`` trains the same blocks' full parameters.

Data: ``midblock train`` passes the first 128 training examples (prompt and answer as tokenised for
training, without the end-of-sequence token every example ends with: with it, every sample's last token
would be the same and block 0's input states would not vary); ``prepare_model(..., data=...)`` takes token
id lists. A block whose input states do not vary at all has no CKA (recorded as None) and ranks last.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from midblock.errors import MidblockError
from midblock.selection import Context, Selection, bad_spec, register

if TYPE_CHECKING:
    from midblock.models.introspect import ModelLayout

SAMPLES = 128
EXAMPLE = "cka-select:0.5 (LoRA on the half of the blocks with the lowest CKA)"


@torch.no_grad()
def last_token_states(
    model: torch.nn.Module, layout: ModelLayout, data: list[list[int]], batch_size: int = 16
) -> list[torch.Tensor]:
    """Last-token states at layers 0..L of the samples in ``data`` (rows in input order): L+1 tensors N x D."""
    from midblock.analysis.capture import Tap, forward, make_batches

    L = layout.num_layers
    rows: dict[int, list[torch.Tensor]] = {i: [] for i in range(L + 1)}
    last: dict[str, torch.Tensor] = {}

    def grab(layer: int, h: torch.Tensor) -> None:
        rows[layer].append(h[torch.arange(h.shape[0], device=h.device), last["pos"].to(h.device)].float().cpu())

    was_training = model.training
    model.eval()
    tap = Tap(model, list(range(L + 1)), grab, stop_early=True)
    try:
        for batch in make_batches(data, batch_size, pad_id=0, padding_side="right", sort_by_length=False):
            last["pos"] = batch.attention_mask.sum(1) - 1
            forward(model, batch)
    finally:
        tap.remove()
        model.train(was_training)
    return [torch.cat(rows[i]) for i in range(L + 1)]


def block_cka(states: list[torch.Tensor]) -> list[float]:
    """Linear CKA between consecutive layer states: entry ``i`` compares block i's input and output."""
    from midblock.analysis.metrics import cka

    return [cka(states[i], states[i + 1]) for i in range(len(states) - 1)]


def lowest(scores: list[float | None], fraction: float) -> list[int]:
    """The ``max(1, round(fraction * L))`` blocks of lowest score (NaN or None counts as highest; ties: lower
    block)."""
    k = max(1, min(len(scores), round(fraction * len(scores))))
    key = [math.inf if s is None or math.isnan(s) else s for s in scores]
    return sorted(sorted(range(len(scores)), key=lambda b: (key[b], b))[:k])


class CkaSelect:
    """``cka-select:F``: the fraction F of blocks with the lowest input/output CKA (arXiv 2602.05988)."""

    name = "cka-select"
    forms = ("lora", "full")
    param_sized = False

    def parse(self, arg: str) -> float:
        try:
            f = float(arg)
        except ValueError:
            raise bad_spec(f"cka-select:{arg}", "F must be a fraction of the blocks", EXAMPLE) from None
        if not (0 < f <= 1):
            raise bad_spec(f"cka-select:{arg}", f"F must lie in (0, 1], got {arg}", EXAMPLE)
        return f

    def select(self, arg: str, ctx: Context) -> Selection:
        f = self.parse(arg)
        spec = f"cka-select:{arg}"
        if ctx.on_meta:
            return Selection(spec, self.name, list(range(ctx.num_layers)), deferred=True)
        if not ctx.data or ctx.model is None:
            raise MidblockError(
                f"{spec} needs data to rank the blocks",
                hint="pass data= (token id lists) to prepare_model / band_lora_config; midblock train uses "
                f"the first {SAMPLES} training examples",
            )
        data = [list(x) for x in ctx.data[:SAMPLES] if len(x) > 0]
        scores = block_cka(last_token_states(ctx.model, ctx.layout, data))
        blocks = lowest(scores, f)
        cka = [None if math.isnan(s) else round(s, 6) for s in scores]  # None: undefined (JSON has no NaN)
        details = {"fraction": f, "samples": len(data), "cka": cka}
        return Selection(spec, self.name, blocks, details=details)


register(CkaSelect())
