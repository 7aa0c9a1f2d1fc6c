import pytest
import torch
import torch.nn.functional as F

from midblock.tuning.loss import chunked_head_ce


def _case(dtype, bias=True, n=700, d=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, dtype=dtype, generator=g).requires_grad_()
    w = torch.randn(v, d, dtype=dtype, generator=g).requires_grad_()
    b = torch.randn(v, dtype=dtype, generator=g).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    return h, w, b, y


def _grads(loss, *ts):
    return torch.autograd.grad(3.0 * loss, [t for t in ts if t is not None])


@pytest.mark.parametrize("bias", [True, False])
def test_fused_chunked_head_equals_logits_then_cross_entropy_in_float64(bias):
    """Same loss and same gradients for h, the head weight and its bias, to float64 rounding; chunk sizes
    that do and do not divide N."""
    h, w, b, y = _case(torch.float64, bias)
    ref = F.cross_entropy(F.linear(h, w, b), y)
    g_ref = _grads(ref, h, w, b)
    for chunk in (1, 64, 700, 4096):
        got = chunked_head_ce(h, w, b, y, chunk=chunk)
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)
        for a, r in zip(_grads(got, h, w, b), g_ref):
            torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-15)


def test_only_wanted_gradients_are_made_and_no_grad_gives_the_loss():
    h, w, b, y = _case(torch.float32)
    w.requires_grad_(False)  # a frozen head, as under LoRA or mid-block tuning
    b.requires_grad_(False)
    loss = chunked_head_ce(h, w, b, y, chunk=100)
    (gh,) = torch.autograd.grad(loss, [h])
    ref = F.cross_entropy(F.linear(h, w, b), y)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(gh, torch.autograd.grad(ref, [h])[0], rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(chunked_head_ce(h, w, b, y, chunk=100), ref.detach(), rtol=1e-6, atol=0)


def test_tied_head_gradient_reaches_the_shared_parameter():
    """A head tied to the embedding (SmolLM2) receives both gradients in one .grad."""
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.Embedding(30, 8, _weight=torch.randn(30, 8, generator=g))
    ids = torch.randint(0, 30, (40,), generator=g)
    y = torch.randint(0, 30, (40,), generator=g)

    def run(fused):
        emb.zero_grad()
        h = torch.tanh(emb(ids))
        loss = chunked_head_ce(h, emb.weight, None, y, chunk=7) if fused else F.cross_entropy(h @ emb.weight.t(), y)
        loss.backward()
        return emb.weight.grad.clone()

    # float32 gradients of O(0.1) summed over 40 tokens: ~3e-8 of rounding; a missing path would be O(1e-2)
    torch.testing.assert_close(run(True), run(False), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_stays_close_to_float32():
    h, w, b, y = _case(torch.float32, n=300)
    ref = F.cross_entropy(F.linear(h, w, b), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_head_ce(h, w, b, y, chunk=64)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 0.05 * ref.item()
    gh = torch.autograd.grad(got, [h])[0]
    assert gh.dtype == h.dtype and torch.isfinite(gh).all()


def test_no_labelled_token_gives_zero():
    h, w, b, y = _case(torch.float32, n=0)
    loss = chunked_head_ce(h, w, b, y)
    assert loss.item() == 0.0


def test_default_chunk_follows_vocabulary_and_bad_chunk_is_refused(monkeypatch):
    """The default chunk holds CHUNK_BYTES of float32 logits; the result does not depend on it."""
    import midblock.tuning.loss as L

    h, w, b, y = _case(torch.float64)
    ref = chunked_head_ce(h, w, b, y, chunk=h.shape[0])
    rows = []
    real = F.linear

    def counting(x, *a, **k):
        rows.append(x.shape[0])
        return real(x, *a, **k)

    monkeypatch.setattr(L.F, "linear", counting)
    monkeypatch.setattr(L, "CHUNK_BYTES", 4 * w.shape[0] * 3)  # 3 rows per chunk, but at least 32
    torch.testing.assert_close(chunked_head_ce(h, w, b, y), ref, rtol=1e-12, atol=0)
    assert rows == [32] * 21 + [700 - 21 * 32]
    rows.clear()
    monkeypatch.setattr(L, "CHUNK_BYTES", 4 * w.shape[0] * 300)
    torch.testing.assert_close(chunked_head_ce(h, w, b, y), ref, rtol=1e-12, atol=0)
    assert rows == [300, 300, 100]
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_head_ce(h, w, b, y, chunk=0)


@pytest.mark.parametrize("bias", [True, False])
def test_sum_reduction_equals_the_unfused_sum_with_its_gradients(bias):
    """``reduction="sum"`` (the training loop divides by the label tokens of the whole optimizer step):
    same value and gradients as the unfused summed cross-entropy, with and without gradients wanted."""
    h, w, b, y = _case(torch.float64, bias)
    ref = F.cross_entropy(F.linear(h, w, b), y, reduction="sum")
    g_ref = _grads(ref, h, w, b)
    got = chunked_head_ce(h, w, b, y, chunk=64, reduction="sum")
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)
    for a, r in zip(_grads(got, h, w, b), g_ref):
        torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-13)
    with torch.no_grad():  # this path computes in float32
        nograd = chunked_head_ce(h, w, b, y, chunk=64, reduction="sum")
        torch.testing.assert_close(nograd.double(), ref, rtol=1e-6, atol=0)
    assert chunked_head_ce(*_case(torch.float32, n=0), reduction="sum").item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        chunked_head_ce(h, w, b, y, reduction="none")


def test_causal_lm_loss_sum_is_mean_times_label_tokens():
    """Every path of ``causal_lm_loss`` (fused head at the labels, and the full-logits path) sums alike."""
    from midblock.models import load_model
    from midblock.tuning.loss import causal_lm_loss

    model, _ = load_model("random:llama-tiny")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :5] = labels[1, :9] = -100  # prompts of different lengths: 7 and 3 labelled next tokens
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        for head in (True, False):
            mean, n = causal_lm_loss(model, batch, head)
            total, n2 = causal_lm_loss(model, batch, head, reduction="sum")
            assert n == n2 == 10
            torch.testing.assert_close(total, mean * n, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="reduction"):
        causal_lm_loss(model, batch, reduction="none")
