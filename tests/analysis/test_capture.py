"""Streaming capture on tiny random models: padding, pairing, the pre-norm last layer, sharding, NaN."""

from __future__ import annotations

import pytest
import torch

from midblock.analysis import metrics as M
from midblock.analysis.capture import (
    Batch,
    CaptureSpec,
    ModelStats,
    Tap,
    _curvature_batch,
    _masked,
    _prompt_entropy_batch,
    collect,
    forward,
    make_batches,
)
from midblock.errors import MidblockError

SEQS = [[(7 * i + 3 * j) % 250 + 1 for j in range(n)] for i, n in enumerate([5, 17, 9, 2, 13, 11])]


def _collect(model, seqs, bs, side="right", **kw):
    spec = CaptureSpec(layers=list(range(7)), **kw)
    return collect({"base": model}, make_batches(seqs, bs, 256, side), spec)["base"]


def _direct_states(model, ids):
    """Every layer of one unpadded sample via output_hidden_states, the last one taken before the final norm."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        hs = [h[0].double() for h in out.hidden_states]
        norm = model.model.norm
        model.model.norm = torch.nn.Identity()
        try:
            pre = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double()
        finally:
            model.model.norm = norm
    return hs[:-1] + [pre], hs[-1]


def test_streaming_matches_direct_computation(tiny):
    model, _ = tiny("llama-tiny")
    st = _collect(model, SEQS, 4)
    for layer in range(7):
        direct = [_direct_states(model, s)[0][layer] for s in SEQS]
        idx, Z = st.Z(layer)
        assert idx.tolist() == list(range(len(SEQS)))
        Zd = torch.stack([h.mean(0) for h in direct])
        torch.testing.assert_close(Z.double(), Zd, rtol=1e-4, atol=1e-5)
        pe = [M.prompt_entropy(h) for h in direct if h.shape[0] > 1]
        assert st.mean(f"prompt_entropy@{layer}") == pytest.approx(sum(pe) / len(pe), abs=1e-5)
        cu = [M.curvature(h) for h in direct if h.shape[0] >= 3]
        assert st.counts[f"curvature@{layer}"] == len(cu) == 5  # the 2-token sample is skipped
        assert st.mean(f"curvature@{layer}") == pytest.approx(sum(cu) / len(cu), abs=1e-5)
        sp = [M.sparsity(h) for h in direct]
        assert st.mean(f"sparsity@{layer}") == pytest.approx(sum(sp) / len(sp), abs=1e-6)
        tn = [M.token_norm(h) for h in direct]
        assert st.mean(f"token_norm@{layer}") == pytest.approx(sum(tn) / len(tn), rel=1e-5)


def test_last_layer_is_block_output_before_final_norm(tiny):
    model, _ = tiny("llama-tiny")
    st = _collect(model, SEQS[:2], 2)
    pre, post = _direct_states(model, SEQS[0])
    z = st.Z(6)[1][0].double()
    torch.testing.assert_close(z, pre[6].mean(0), rtol=1e-4, atol=1e-5)
    assert (z - post.mean(0)).norm() > 0.1 * z.norm()  # the normed state is a different vector


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(tiny, side):
    model, _ = tiny("llama-tiny")
    alone = ModelStats()
    for s in SEQS:  # each sample scored alone, no padding at all
        alone = alone.merge(_collect(model, [s], 1))
    batched = _collect(model, SEQS, len(SEQS), side)
    for key in alone.sums:
        assert batched.sums[key] == pytest.approx(alone.sums[key], rel=1e-4, abs=1e-5), key
        assert batched.counts[key] == alone.counts[key]
    for layer in range(7):
        torch.testing.assert_close(batched.Z(layer)[1], alone.Z(layer)[1], rtol=1e-4, atol=1e-5)


def test_batched_token_stats_per_sample_equal_unpadded():
    g = torch.Generator().manual_seed(0)
    lens = [3, 8, 1, 6]
    h = torch.randn(4, 8, 5, generator=g, dtype=torch.float64)
    for side in ("left", "right"):
        m = torch.zeros(4, 8, dtype=torch.bool)
        for i, n in enumerate(lens):
            m[i, 8 - n :] = True if side == "left" else False
            if side == "right":
                m[i, :n] = True
        hz = _masked(h, m)
        pe, ok = _prompt_entropy_batch(hz, m, m.sum(1), 1.0, False)
        pc, _ = _prompt_entropy_batch(hz, m, m.sum(1), 1.0, True)
        cu, okc = _curvature_batch(hz, m)
        for i, n in enumerate(lens):
            real = h[i][m[i]]
            assert bool(ok[i]) == (n > 1)
            if n > 1:  # the batched eigensolve is float32
                assert float(pe[i]) == pytest.approx(M.prompt_entropy(real), abs=1e-6)
                assert float(pc[i]) == pytest.approx(M.prompt_entropy(real, center=True), abs=1e-6)
            assert bool(okc[i]) == (n >= 3)
            if n >= 3:
                assert float(cu[i]) == pytest.approx(M.curvature(real), abs=1e-10)


def test_shards_merge_to_the_whole(tiny):
    model, _ = tiny("llama-tiny")
    spec = CaptureSpec(layers=[0, 3, 6])
    whole = collect({"base": model}, list(make_batches(SEQS, 2, 256)), spec)["base"]
    batches = list(make_batches(SEQS, 2, 256))
    a = collect({"base": model}, batches[::2], spec)["base"]
    b = collect({"base": model}, batches[1::2], spec)["base"]
    merged = ModelStats.from_state(b.merge(a).state())
    for k in whole.sums:
        assert merged.sums[k] == pytest.approx(whole.sums[k], rel=1e-9)
    for layer in (0, 3, 6):
        torch.testing.assert_close(merged.Z(layer)[1], whole.Z(layer)[1])


def test_token_cka_and_logit_lens_pairing(tiny):
    base, _ = tiny("llama-tiny", seed=0)
    same, _ = tiny("llama-tiny", seed=0)
    spec = CaptureSpec(layers=list(range(7)), token_cka=True, logit_lens=True)
    st = collect({"base": base, "v": same}, make_batches(SEQS, 3, 256), spec)
    for layer in range(7):
        m = st["v"].moments[layer]
        assert M.cka_from_moments(m["sxy"], m["sxx"], m["syy"], m["sx"], m["sy"], int(m["n"])) == pytest.approx(1.0)
        assert int(m["n"]) == sum(len(s) for s in SEQS)
        assert M.cka_unbiased_from_moments(m) == pytest.approx(1.0, abs=1e-9)
        assert st["v"].mean(f"logit_kl@{layer}") == pytest.approx(0.0, abs=1e-6)
        assert st["v"].mean(f"logit_top1_agreement@{layer}") == 1.0
    # the last layer read through the final norm once is the model's own next-token loss
    batch = next(make_batches(SEQS[:1], 1, 256))
    with torch.no_grad():
        loss = base(input_ids=batch.input_ids, labels=batch.input_ids).loss
    one = collect({"base": base}, [batch], CaptureSpec(layers=[6], logit_lens=True))["base"]
    assert one.mean("logit_ce@6") == pytest.approx(float(loss), rel=1e-5)


def test_token_cka_streamed_equals_direct_on_token_rows(tiny):
    """Both token-CKA estimators from the hooks' moment sums equal the Gram-form CKA of the stacked real-token
    rows (every sample unpadded, computed directly)."""
    base, _ = tiny("llama-tiny", seed=0)
    var, _ = tiny("llama-tiny", seed=1)
    layers = [0, 3, 6]
    st = collect({"base": base, "v": var}, make_batches(SEQS, 4, 256, "left"), CaptureSpec(layers, token_cka=True))
    for layer in layers:
        # the capture's row order is by batch; CKA does not depend on the order of paired rows
        X = torch.cat([_direct_states(base, s)[0][layer] for s in SEQS])
        Y = torch.cat([_direct_states(var, s)[0][layer] for s in SEQS])
        m = st["v"].moments[layer]
        assert M.cka_unbiased_from_moments(m) == pytest.approx(M.cka(X, Y, unbiased=True), abs=1e-5)
        biased = M.cka_from_moments(m["sxy"], m["sxx"], m["syy"], m["sx"], m["sy"], int(m["n"]))
        assert biased == pytest.approx(M.cka(X, Y), abs=1e-5)
        assert abs(M.cka(X, Y, unbiased=True) - M.cka(X, Y)) > 1e-3


def test_stops_after_last_needed_block(tiny):
    model, _ = tiny("llama-tiny")
    calls = []
    h = model.model.layers[4].register_forward_hook(lambda *a: calls.append(1))
    seen = []
    tap = Tap(model, [0, 2], lambda layer, x: seen.append((layer, tuple(x.shape))))
    try:
        forward(model, next(make_batches(SEQS[:2], 2, 256)))
    finally:
        tap.remove()
        h.remove()
    assert [s[0] for s in seen] == [0, 2] and not calls


def test_nan_names_layer_and_sample(tiny):
    model, _ = tiny("llama-tiny")
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    batch = Batch(torch.tensor([40, 41]), torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(MidblockError, match=r"layer 3 for sample 40"):
        collect({"base": model}, [batch], CaptureSpec(layers=[1, 3]))


def test_nan_in_padding_is_ignored():
    h = torch.randn(2, 4, 3, dtype=torch.float64)
    h[0, 3] = float("nan")
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.isfinite(_masked(h, m)).all()


@pytest.mark.parametrize("preset", ["gpt2-tiny", "gemma3-tiny", "qwen2-tiny", "phi3-tiny"])
def test_other_architectures_pooled_rows_pad_invariant_and_pre_norm(tiny, preset):
    from midblock.models.introspect import get_layout

    model, _ = tiny(preset)
    lay = get_layout(model)
    L = lay.num_layers
    spec = CaptureSpec(layers=[0, L], token_stats=("sparsity",))
    batched = collect({"base": model}, make_batches(SEQS[:3], 3, 256, "left"), spec)["base"]
    parent_path, attr = lay.final_norm_path.rsplit(".", 1)
    parent = model.get_submodule(parent_path)
    norm = getattr(parent, attr)
    setattr(parent, attr, torch.nn.Identity())  # the model's own last hidden state, without its final norm
    try:
        for i, s in enumerate(SEQS[:3]):
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states
            torch.testing.assert_close(batched.Z(L)[1][i].double(), hs[-1][0].double().mean(0), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(batched.Z(0)[1][i].double(), hs[0][0].double().mean(0), rtol=1e-4, atol=1e-4)
    finally:
        setattr(parent, attr, norm)
