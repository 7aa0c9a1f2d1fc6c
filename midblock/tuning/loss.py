"""Completion-only causal-LM loss that applies the LM head only where there are labels.

A 49k-vocabulary head costs about as much as 8 of SmolLM2's blocks per token; on short completions most
positions carry no label. We run the model with ``logits_to_keep=1`` (the head on one position only),
catch the final hidden states with a hook on the final norm, and apply the head to the labelled positions
only. The loss equals the model's own mean cross-entropy over labelled tokens (see the tests).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from midblock.data.tasks import IGNORE_INDEX


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP wrapper


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    from midblock.models.introspect import _strip_peft

    fwd = _strip_peft(_inner(model)).forward
    return "logits_to_keep" in inspect.signature(fwd).parameters


def causal_lm_loss(model: nn.Module, batch: dict[str, Any], head_at_labels: bool = True) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled tokens, and the number of those tokens."""
    labels = batch["labels"]
    shift = labels[:, 1:]
    n_tok = int((shift != IGNORE_INDEX).sum())
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if not head_at_labels or not _accepts_logits_to_keep(model):
        logits = model(**kw).logits
        return _ce(logits[:, :-1], shift), n_tok
    from midblock.models.introspect import get_layout

    lay = get_layout(_inner(model))
    if lay.final_norm is None:
        logits = model(**kw).logits
        return _ce(logits[:, :-1], shift), n_tok
    caught: dict[str, torch.Tensor] = {}

    def grab(_m, _i, out):
        caught["h"] = out[0] if isinstance(out, tuple) else out

    handle = lay.final_norm.register_forward_hook(grab)
    try:
        model(**kw, logits_to_keep=1)
    finally:
        handle.remove()
    h = caught["h"][:, :-1]
    keep = shift != IGNORE_INDEX
    logits = lay.lm_head(h[keep])
    cap = getattr(getattr(_inner(model), "config", None), "final_logit_softcapping", None)
    if cap:  # Gemma's soft-capping happens after the head
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), shift[keep]), n_tok


def _ce(logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift.reshape(-1), ignore_index=IGNORE_INDEX)
