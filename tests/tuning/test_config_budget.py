"""MidBlockConfig validation, alpha policies, budget matching and the FLOP model."""

from __future__ import annotations

import math

import pytest

from midblock.errors import MidblockError
from midblock.layers import resolve_layers
from midblock.tuning.budget import (
    Layout,
    ModelShape,
    match_budget,
    model_shape,
    parameter_row,
    predicted_ratios,
    rank_units,
    step_flops,
    trainable_params,
)
from midblock.tuning.config import MidBlockConfig, parse_segments


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"method": "dora"}, "unknown method"),
        ({"rank": 0}, "rank must be a positive"),
        ({"rank": -3}, "rank must be a positive"),
        ({"alpha": -1.0}, "alpha must be"),
        ({"alpha_policy": "sqrt"}, "alpha policy"),
        ({"band": ""}, "band spec is empty"),
        ({"band": "auto"}, "needs an analysis"),
        ({"method": "segments"}, "needs a pattern"),
        ({"method": "segments", "segments": "-1,0,4"}, "holds rank 0"),
        ({"method": "segments", "segments": "-1,-1"}, "freezes every segment"),
        ({"method": "lora", "segments": "4,4"}, "only applies"),
        ({"method": "freeze"}, "needs --freeze-first"),
        ({"target_modules": ""}, "no target modules"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(MidblockError, match=msg):
        MidBlockConfig(**kw)


def test_segments_parse():
    assert parse_segments("-1,113,113,113,-1") == [-1, 113, 113, 113, -1]
    with pytest.raises(MidblockError):
        parse_segments("a,b")


def test_alpha_policies():
    c = MidBlockConfig(rank=8, alpha=16)  # constant-ratio: alpha/r = 2 at every rank
    assert c.alpha_for(13) == 26 and c.scaling_for(13) == 2.0 and c.scaling_for(8) == 2.0
    f = MidBlockConfig(rank=64, alpha_policy="fixed")  # the paper's alpha = 128 whatever the rank
    assert f.alpha_for(113) == 128 and f.scaling_for(113) == pytest.approx(128 / 113)
    r = MidBlockConfig(rank=8, alpha=16, alpha_policy="rslora")
    assert r.scaling_for(16) == pytest.approx(16 / 4)


def test_auto_band_reads_analysis(tmp_path):
    import json

    (tmp_path / "results.json").write_text(json.dumps({"recommended_band": {"spec": "2-4", "score": 1}}))
    assert MidBlockConfig(band="auto", analysis=str(tmp_path)).resolved_band_spec() == "2-4"
    (tmp_path / "results.json").write_text(json.dumps({"other": 1}))
    with pytest.raises(MidblockError, match="recommended_band"):
        MidBlockConfig(band="auto", analysis=str(tmp_path)).resolved_band_spec()
    with pytest.raises(MidblockError, match="does not exist"):
        MidBlockConfig(band="auto", analysis=str(tmp_path / "nope")).resolved_band_spec()


@pytest.mark.parametrize(
    "L, r, want_blocks, want_rank", [(16, 64, 9, 113), (32, 64, 19, 107), (40, 64, 24, 106), (64, 8, 39, 13)]
)
def test_paper_budget_numbers(L, r, want_blocks, want_rank):
    band = resolve_layers("seg2-4/5", L)  # the paper's band
    m = match_budget(L, r, band)
    assert (m.blocks, m.rank) == (want_blocks, want_rank)
    assert m.units <= m.baseline_units < m.units + m.blocks  # the largest rank within the budget


def test_budget_by_params_differs_when_targets_differ():
    # baseline LoRA on q,v (in+out = 2*(64+64)); band on all four attn projections (4*(64+64))
    m = match_budget(8, 8, 4, by="params", baseline_params_per_rank=256, band_params_per_rank=512)
    assert m.rank == 8 and m.params == m.baseline_params == 8 * 8 * 256
    assert match_budget(8, 8, 4).rank == 16
    assert rank_units([13] * 18) == 234
    with pytest.raises(MidblockError):
        match_budget(2, 1, 5)


def _shape(L=4, d=10, V=100, T=8):
    mods = {"q": (d, d), "o": (d, d), "up": (d, 4 * d), "down": (4 * d, d)}
    lin = sum(i * o for i, o in mods.values())
    return ModelShape(L, d, V, lin, lin + 2 * d, d, d * V, d * V, mods)


def test_flop_model_closed_form():
    s, T, N = _shape(), 8, 16
    lf, attn, head = 2 * s.block_linear_params, 4 * T * s.attn_width, 2 * s.d_model * s.vocab
    lora_r = 2 * (10 + 10) * 2  # q and o at rank 1: 2r(in+out) each
    # LoRA r2 on block 2 only: blocks 0,1 forward only; blocks 2,3 forward + activation grad
    lay = Layout(lora={2: 2}, targets=["q", "o"])
    f = step_flops(s, lay, seq_len=T, tokens=N)
    assert f.forward == N * (4 * (lf + attn) + 2 * lora_r) + N * head
    assert f.act_grad == N * (2 * (lf + 2 * attn) + 2 * lora_r) + N * head
    assert f.weight_grad == N * 2 * lora_r and f.recompute == 0
    full = step_flops(s, Layout(full=[0, 1, 2, 3], train_head=True), seq_len=T, tokens=N)
    assert full.weight_grad == N * (4 * lf + head)
    # head-at-labels shrinks the head
    ck = step_flops(s, Layout(lora={2: 2}, targets=["q", "o"], checkpointing=True), seq_len=T, tokens=N, head_tokens=4)
    # checkpointing recomputes the blocks the backward visits (2 and 3), never those below the band
    assert ck.recompute == N * (2 * (lf + attn) + 2 * lora_r) and ck.forward == f.forward - (N - 4) * head
    r = predicted_ratios(s, lay, baseline_rank=2, seq_len=T, tokens=N)
    assert 0 < r["vs_full"] < r["vs_lora"] < 1


def test_smollm2_prediction_and_table():
    from midblock.models.skeleton import load_skeleton

    s = model_shape(load_skeleton("smollm2-135m"))
    assert s.num_layers == 30 and s.block_linear_params == 3_538_944 and s.head_params == 576 * 49152
    band = resolve_layers("seg2-4/5", 30)
    lay = Layout(
        lora={b: 13 for b in band},
        targets=["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
    )
    r = predicted_ratios(s, lay, baseline_rank=8, seq_len=256, tokens=2048)
    # head ~ 8 blocks: the saving of skipping 6 of 30 blocks' backward is ~8%, not the textbook 20%/2
    assert 0.90 < r["vs_lora"] < 0.93
    row = parameter_row("midblock", s, lay, {b: 26.0 for b in band}, {b: 2.0 for b in band})
    per_block = 13 * (576 + 576 + 576 + 192 + 576 + 192 + 576 + 576)
    assert row["trainable_params"] == trainable_params(s, lay) == 18 * per_block
    assert row["rank_units"] == 234 and row["backward_depth"] == 24 and row["blocks_trained"] == "6-23"
    assert math.isclose(row["share_of_model"], 18 * per_block / s.total_params)
