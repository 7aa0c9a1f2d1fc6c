"""Interpolation end points and saving; early exit equals the model at the last layer; the gold probe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from midblock.errors import MidblockError
from midblock.models import load_model
from midblock.models.presets import TINY_PRESETS
from midblock.surgery.config import parse_weights
from midblock.surgery.earlyexit import (
    decode,
    early_exit,
    gold_probe,
    layer_states,
    layer_token_stats,
    probe_inputs,
    top1_agreement,
)
from midblock.surgery.interpolate import block_weights, interpolation_configuration, save_interpolation
from midblock.surgery.sources import SafetensorsSource
from midblock.surgery.swap import Patch, block_param_names
from tests.surgery.conftest import logits, perturb_blocks


def test_interpolation_end_points_and_midpoint(pair, ids):
    base, var, _, tmp = pair
    src = SafetensorsSource(tmp / "variant")
    ref = logits(base, ids)
    with Patch(base, src, interpolation_configuration(base, [0, 0, 0]).weights):
        assert torch.equal(logits(base, ids), ref)
    # a = 1 everywhere on blocks = the variant's blocks with the base's head: compare with a direct swap.
    with Patch(base, src, dict.fromkeys(block_param_names(base, range(6)), 1.0)):
        swapped = logits(base, ids)
    with Patch(base, src, interpolation_configuration(base, [1, 1, 1]).weights):
        assert torch.equal(logits(base, ids), swapped)
    # a = 0.5 on segment 2 of 3 (blocks 2-3) is the average of the two tensors.
    cfg = interpolation_configuration(base, [0, 0.5, 0])
    assert cfg.info["segment_blocks"] == "0-1;2-3;4-5"
    name = "model.layers.2.mlp.up_proj.weight"
    want = 0.5 * base.get_parameter(name).detach() + 0.5 * var.get_parameter(name).detach()
    with Patch(base, src, cfg.weights):
        assert torch.allclose(base.get_parameter(name), want, atol=1e-7)
        assert (
            torch.equal(
                base.get_parameter("model.layers.0.mlp.up_proj.weight"),
                var.get_parameter("model.layers.0.mlp.up_proj.weight"),
            )
            is False
        )
    assert torch.equal(logits(base, ids), ref)


def test_midblock_merge_reproduces_variant_when_only_mid_blocks_differ(tmp_path, ids):
    base, _ = load_model("random:llama-tiny", seed=0)
    var, _ = load_model("random:llama-tiny", seed=0)
    perturb_blocks(var, range(1, 4), head=False)  # 6 blocks, 5 segments: segments 2-4 = blocks 1..3
    var.save_pretrained(tmp_path / "v")
    with Patch(
        base, SafetensorsSource(tmp_path / "v"), interpolation_configuration(base, parse_weights("0,1,1,1,0")).weights
    ):
        assert torch.equal(logits(base, ids), logits(var, ids))
    assert block_weights(base, [0, 1, 1, 1, 0]) == [0, 1, 1, 1, 0, 0]


def test_save_interpolation_is_a_loadable_model(pair, ids, tmp_path):
    base, var, tok, tmp = pair
    src = SafetensorsSource(tmp / "variant")
    before = logits(base, ids)
    out = save_interpolation(base, tok, src, [1, 1, 1], tmp_path / "merged")
    merged, _ = load_model(str(out))
    with Patch(base, src, dict.fromkeys(block_param_names(base, range(6)), 1.0)):
        assert torch.equal(logits(merged, ids), logits(base, ids))
    assert torch.equal(logits(base, ids), before)
    assert not list(tmp_path.glob(".merged.tmp-*"))


@pytest.mark.parametrize("text,msg", [("0,1,x", "cannot parse"), ("0,1.5,0", "leave"), ("0,nan", "finite")])
def test_bad_weights(text, msg):
    with pytest.raises(MidblockError, match=msg):
        parse_weights(text)


def test_bad_weight_count_and_extrapolation():
    base, _ = load_model("random:llama-tiny")
    with pytest.raises(MidblockError, match="segments"):
        interpolation_configuration(base, [1.0] * 7)
    assert parse_weights("-0.5,1.5", extrapolate=True) == [-0.5, 1.5]


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_last_layer_exit_equals_model_logits(preset):
    m, _ = load_model(f"random:{preset}")
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    states = layer_states(m, ids, mask)
    assert len(states) == 7
    with torch.no_grad():
        assert torch.equal(decode(m, states[-1]), m(input_ids=ids, attention_mask=mask).logits)
        # hidden_states[-1] is already normed: the hooks' last state is not it (the norm is applied once).
        hs = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.equal(states[0], hs[0]) and not torch.equal(states[-1], hs[-1])


def test_layer_token_stats_closed_form():
    # Uniform logits over V: loss log V at every real position; padding excluded.
    V = 8
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    lg = torch.zeros(2, 4, V)
    lg[0, 0, 2] = 100.0  # position 0 predicts token 2 exactly
    nll, n, hits, _ = layer_token_stats(lg, ids, mask)
    assert n == 4 and hits == 1
    assert nll == pytest.approx(3 * torch.log(torch.tensor(float(V))).item(), abs=1e-5)


def test_early_exit_padding_invariant_and_agreement(tokenizer):
    m, _ = load_model("random:llama-tiny")
    texts = ["Question: 2+2?\nAnswer: 4", "a much longer text that forces padding on the first one", "xy"]
    alone = [early_exit(m, tokenizer, [t], batch_size=1, progress=False) for t in texts]
    batched = early_exit(m, tokenizer, texts, batch_size=3, progress=False)
    assert batched.n_tokens == sum(a.n_tokens for a in alone)
    for l in range(7):
        assert batched.nll[l] == pytest.approx(sum(a.nll[l] for a in alone), rel=1e-4)
        assert batched.hits[l] == sum(a.hits[l] for a in alone)
    assert top1_agreement(batched, batched) == [1.0] * 7
    rows = batched.rows("base")
    assert rows[-1]["depth"] == 1.0 and rows[0]["layer"] == 0
    # The last row is the model's own next-token loss.
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    with torch.no_grad():
        own = sum(
            F.cross_entropy(m(input_ids=torch.tensor([e])).logits[0, :-1], torch.tensor(e[1:]), reduction="sum").item()
            for e in enc
        )
    assert rows[-1]["loss"] == pytest.approx(own / batched.n_tokens, rel=1e-4)


def test_gold_probe_never_sees_the_answer(tokenizer):
    m, _ = load_model("random:llama-tiny")
    prompts = ["Question: what is 7*6?\nAnswer:", "Question: 1+1?\nAnswer:"]
    p1, g1 = probe_inputs(tokenizer, prompts[0], "42")
    p2, g2 = probe_inputs(tokenizer, prompts[0], "99")
    assert p1 == p2 == tokenizer(prompts[0] + " ", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([g1]) == "4" and tokenizer.decode([g2]) == "9"
    assert g1 != g2
    # The probability changes only through the gold id: the distributions are the same.
    a = gold_probe(m, tokenizer, prompts, ["42", "2"])
    b = gold_probe(m, tokenizer, prompts, ["99", "2"])
    assert a.shape == (2, 7)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0])
    from midblock.surgery.earlyexit import answer_position_logprobs

    ids = torch.tensor([p1])
    lp = answer_position_logprobs(m, ids, torch.ones_like(ids))
    assert torch.allclose(a[0], lp[0, :, g1].exp()) and torch.allclose(b[0], lp[0, :, g2].exp())
    # Batched with padding equals alone.
    alone = gold_probe(m, tokenizer, prompts[1:], ["2"])
    assert torch.allclose(alone[0], a[1], atol=1e-6)
