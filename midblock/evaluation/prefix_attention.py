"""Attention that reads a prefix shared by every row once per step instead of once per row.

In a few-shot evaluation every prompt starts with the same exemplars (about 1,000 tokens for GSM8K's
5-shot prompt) and each row's own question and answer add only a few hundred. Plain attention reads the
prefix's keys and values for every row at every decoding step; here the rows' queries are stacked and
meet the prefix in one matrix product per key/value head, the rows' own parts are attended as usual, and
the two are combined in one softmax over both (a shared max, exponentials, one normaliser). Same maths as
attention over the concatenated keys, so greedy decoding gives the same tokens (tests compare with
``generate``); the sums run in a different order, as they already do between batch sizes.

Used through ``shared_prefix_attention(model, P)``, which switches a model whose attention is ``sdpa`` to
this function for the duration of a ``with`` block. Rows must hold the same ``P`` prefix keys at the same
positions (the decoding loop's cache does); anything unusual falls back to transformers' SDPA.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

NAME = "midblock_shared_prefix_sdpa"
_PREFIX = contextvars.ContextVar("midblock_shared_prefix", default=0)
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, lambda *a, **k: shared_prefix_sdpa(*a, **k))  # late-bound name
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as sdpa
    _registered = True


def supports(model: torch.nn.Module) -> bool:
    """Plain SDPA attention with nothing the split would have to reproduce (soft-capping, sliding windows)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "_attn_implementation", None) != "sdpa":
        return False
    text = getattr(cfg, "text_config", None) or cfg
    if text is not cfg:
        return False  # multimodal wrappers keep their own attention set-up
    return not any(getattr(cfg, k, None) for k in ("attn_logit_softcapping", "sliding_window", "alibi"))


@contextlib.contextmanager
def shared_prefix_attention(model: torch.nn.Module, prefix_len: int) -> Iterator[bool]:
    """Within the block, ``model``'s attention treats the first ``prefix_len`` cached positions as shared by
    all rows. Yields whether it is active (False: the model is left as it was)."""
    if prefix_len <= 0 or not supports(model):
        yield False
        return
    _register()
    cfg = model.config
    token = _PREFIX.set(prefix_len)
    cfg._attn_implementation = NAME
    try:
        yield True
    finally:
        cfg._attn_implementation = "sdpa"
        _PREFIX.reset(token)


def shared_prefix_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query (B, H, q, D), key/value (B, Hkv, P + S, D); returns (B, q, H, D) like transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    P = _PREFIX.get()
    B, H, q, D = query.shape
    Hkv, T = key.shape[1], key.shape[2]
    unusual = dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
    unusual = unusual or kwargs.get("s_aux") is not None or T <= P or H % Hkv or value.shape[-1] != D
    unusual = unusual or B == 1  # one row: nothing to share, SDPA's fused kernel is faster
    own_mask = None
    if not unusual and attention_mask is not None:
        m = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        unusual = not bool(m[..., :P].all())  # every row must see the whole prefix
        own_mask = m[..., P:]
    if unusual:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    S, rep = T - P, H // Hkv
    scale = scaling if scaling is not None else D**-0.5
    if own_mask is None and q > 1:  # no mask given: causal within the own part
        i = torch.arange(q, device=query.device)[:, None] + (S - q)
        own_mask = (torch.arange(S, device=query.device)[None, :] <= i)[None, None]

    # prefix: all rows' queries of a key/value head against that head's prefix keys, read once
    n = B * rep * q
    qg = query.reshape(B, Hkv, rep * q, D).transpose(0, 1).reshape(Hkv, n, D)
    s_pre = torch.bmm(qg, key[0, :, :P].transpose(1, 2)).mul_(scale)  # (Hkv, n, P)
    # own part: each row against its own keys
    qo = query.reshape(B, Hkv, rep * q, D)
    s_own = torch.matmul(qo, key[:, :, P:].transpose(-1, -2)).mul_(scale)  # (B, Hkv, rep*q, S)
    if own_mask is not None:  # (B or 1, 1, q, S) -> per (rep, q) row
        mk = own_mask.expand(own_mask.shape[0], 1, q, S).unsqueeze(2).expand(-1, -1, rep, -1, -1)
        s_own = s_own.masked_fill_(~mk.reshape(mk.shape[0], 1, rep * q, S), float("-inf"))

    # one softmax over [prefix, own]: shared max, exponentials, one normaliser
    m_pre = s_pre.amax(-1).reshape(Hkv, B, rep * q).transpose(0, 1)  # (B, Hkv, rep*q)
    mx = torch.maximum(m_pre, s_own.amax(-1))
    e_pre = s_pre.sub_(mx.transpose(0, 1).reshape(Hkv, n)[..., None]).exp_()
    e_own = s_own.sub_(mx[..., None]).exp_()
    denom = e_pre.sum(-1).reshape(Hkv, B, rep * q).transpose(0, 1) + e_own.sum(-1)
    out = torch.bmm(e_pre, value[0, :, :P]).reshape(Hkv, B, rep * q, D).transpose(0, 1)
    out = out + torch.matmul(e_own, value[:, :, P:])
    out = out / denom[..., None]  # (B, Hkv, rep*q, D) == (B, H, q, D) in head order kv * rep + r
    return out.reshape(B, H, q, D).transpose(1, 2).contiguous(), None
