import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from midblock.evaluation import prefix_attention as pa


class _Attn(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _case(B=3, H=6, Hkv=2, P=7, S=5, q=1, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, H, q, D, generator=g, dtype=torch.float64)
    key = torch.randn(B, Hkv, P + S, D, generator=g, dtype=torch.float64)
    value = torch.randn(B, Hkv, P + S, D, generator=g, dtype=torch.float64)
    key[:, :, :P], value[:, :, :P] = key[:1, :, :P], value[:1, :, :P]  # the prefix is the same in every row
    pad = torch.tensor([0, 2, 1][:B])  # left padding inside each row's own part
    own = torch.arange(S)[None, :] >= pad[:, None]  # (B, S) real own tokens
    keys_ok = torch.cat([torch.ones(B, P, dtype=torch.bool), own], 1)  # (B, P+S)
    qpos = torch.arange(P + S - q, P + S)
    causal = torch.arange(P + S)[None, :] <= qpos[:, None]  # (q, P+S)
    mask = (keys_ok[:, None, :] & causal[None])[:, None]  # (B, 1, q, P+S)
    return query, key, value, mask, P


@pytest.mark.parametrize("q", [1, 4])
@pytest.mark.parametrize("groups", [1, 3])
def test_shared_prefix_attention_equals_sdpa(q, groups):
    query, key, value, mask, P = _case(H=2 * groups, Hkv=2, q=q)
    module = _Attn(groups)
    ref, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    token = pa._PREFIX.set(P)
    try:
        got, _ = pa.shared_prefix_sdpa(module, query, key, value, mask, scaling=0.3)
    finally:
        pa._PREFIX.reset(token)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_rows_that_do_not_all_see_the_prefix_fall_back_to_sdpa():
    query, key, value, mask, P = _case()
    mask[1, ..., 0] = False  # row 1 does not see prefix position 0: not a shared prefix
    module = _Attn(3)
    ref, _ = sdpa_attention_forward(module, query, key, value, mask)
    token = pa._PREFIX.set(P)
    try:
        got, _ = pa.shared_prefix_sdpa(module, query, key, value, mask)
    finally:
        pa._PREFIX.reset(token)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_switch_is_scoped_and_only_for_plain_sdpa(tiny):
    model, _ = tiny("llama-tiny")
    model.config._attn_implementation = "sdpa"
    with pa.shared_prefix_attention(model, 5) as on:
        assert on and model.config._attn_implementation == pa.NAME
    assert model.config._attn_implementation == "sdpa"
    gemma, _ = tiny("gemma3-tiny")  # sliding windows: left alone
    before = gemma.config._attn_implementation
    with pa.shared_prefix_attention(gemma, 5) as on:
        assert not on and gemma.config._attn_implementation == before


def test_batched_decoding_with_a_prefix_goes_through_it_and_matches_plain_decoding(tiny, monkeypatch):
    from midblock.evaluation.generate import DecodeConfig, generate_completions

    model, tok = tiny("llama-tiny", seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    model.config._attn_implementation = "sdpa"
    calls = []
    real = pa.shared_prefix_sdpa
    monkeypatch.setattr(pa, "shared_prefix_sdpa", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    pre = "Question: a shared exemplar, long enough to be cached.\nAnswer: 42\n\n"
    prompts = [pre + f"Question: what is {i} plus {3 * i}?{' Think.' * (i % 4)}\nAnswer:" for i in range(6)]
    cached = generate_completions(model, tok, prompts, DecodeConfig(max_new_tokens=16, batch_size=3, progress=False))
    assert calls and max(calls) == 3  # the shared-prefix attention ran, on batches of 3
    plain = generate_completions(
        model, tok, prompts, DecodeConfig(max_new_tokens=16, batch_size=1, progress=False, prefix_cache=False)
    )
    assert cached == plain and len(set(plain)) > 3
