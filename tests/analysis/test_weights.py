"""Weight-space metrics: weight_delta, lora_delta (never materialised) against merged weights, grad_norm."""

from __future__ import annotations

import math

import pytest
import torch

from midblock.analysis.weights import grad_norm, is_lora_model, lora_delta, weight_delta


def _lora(model, rslora: bool, layers=None):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        use_rslora=rslora,
        layers_to_transform=layers,
        init_lora_weights=False,
    )  # random B: a non-zero update
    return get_peft_model(model, cfg)


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_delta_equals_weight_delta_of_merged_model(tiny, rslora):
    base, _ = tiny("llama-tiny")
    peft_model = _lora(tiny("llama-tiny")[0], rslora, layers=[2, 4])
    assert is_lora_model(peft_model) and not is_lora_model(base)
    ld = lora_delta(peft_model)
    merged = peft_model.merge_and_unload()
    wd = weight_delta(base, merged)
    for (layer, metric), v in wd.items():
        if layer == 0:
            continue
        key = (layer, metric.replace("weight_delta", "lora_delta"))
        assert ld[key] == pytest.approx(v, rel=1e-5, abs=1e-9), key
    assert ld[(1, "lora_delta")] == 0.0 and ld[(3, "lora_delta")] > 0  # block 2 -> layer index 3
    assert ld[(3, "lora_delta_attn")] > 0 and ld[(5, "lora_delta_mlp")] > 0


def test_lora_on_every_block_including_block_0(tiny):
    """With LoRA on block 0 the layout lists PEFT's pieces (q_proj.base_layer, q_proj.lora_A.default ...);
    the deltas must still see q_proj itself (this gave zeros everywhere before)."""
    base, _ = tiny("llama-tiny")
    peft_model = _lora(tiny("llama-tiny")[0], False)
    ld = lora_delta(peft_model)
    wd = weight_delta(base, peft_model)  # an unmerged PEFT variant: its frozen base weights equal the base
    assert all(v == 0.0 for (layer, m), v in wd.items() if not m.endswith("_rel"))
    wd = weight_delta(base, peft_model.merge_and_unload())
    for block in range(6):
        for g in ("", "_attn", "_mlp"):
            key = (block + 1, f"lora_delta{g}")
            assert ld[key] > 0 and ld[key] == pytest.approx(wd[(block + 1, f"weight_delta{g}")], rel=1e-5)


def test_weight_delta_groups_add_up(tiny):
    base, _ = tiny("llama-tiny")
    var, _ = tiny("llama-tiny")
    with torch.no_grad():
        var.model.layers[1].self_attn.o_proj.weight.add_(1.0)
        var.model.layers[1].mlp.up_proj.weight.add_(2.0)
    wd = weight_delta(base, var)
    o = var.model.layers[1].self_attn.o_proj.weight.numel()
    u = var.model.layers[1].mlp.up_proj.weight.numel()
    assert wd[(2, "weight_delta_attn")] == pytest.approx(math.sqrt(o))
    assert wd[(2, "weight_delta_mlp")] == pytest.approx(math.sqrt(4 * u))
    assert wd[(2, "weight_delta")] == pytest.approx(math.sqrt(o + 4 * u))
    assert all(wd[(i, "weight_delta")] == 0.0 for i in (0, 1, 3, 4, 5, 6))


def test_grad_norm_matches_manual_and_leaves_no_trace(tiny):
    model, _ = tiny("llama-tiny")
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    g = grad_norm(model, [batch, batch])
    assert all(p.grad is None for p in model.parameters())
    model.zero_grad()
    model(**batch).loss.backward()
    blk = model.model.layers[3]
    ref = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in blk.parameters()))
    wn = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in blk.parameters()))
    assert g[(4, "grad_norm")] == pytest.approx(ref, rel=1e-5)
    assert g[(4, "grad_norm_rel")] == pytest.approx(ref / wn, rel=1e-5)
    assert (0, "grad_norm") in g  # the embedding


@pytest.mark.parametrize("preset", ["gemma3-tiny", "gpt2-tiny"])
def test_grad_norm_of_a_left_padded_batch_with_a_tied_head_equals_the_models_own(tiny, preset):
    """A left-padded batch with its position ids (GPT-2's learned positions depend on them), on models whose head
    is tied to the embedding (layer 0's gradient holds the head's part too): the labelled-positions head gives
    the model's own gradients."""
    from midblock.models.introspect import get_layout

    model, _ = tiny(preset)
    lay = get_layout(model)
    assert lay.lm_head.weight is lay.embedding.weight
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.where(mask.bool(), ids, torch.full_like(ids, -100)),
        "position_ids": (mask.cumsum(-1) - 1).clamp_min(0),
    }
    g = grad_norm(model, [batch])
    model.zero_grad()
    model(**batch).loss.backward()
    for layer, params in ((0, [lay.embedding.weight]), (4, list(lay.blocks[3].parameters()))):
        ref = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
        assert g[(layer, "grad_norm")] == pytest.approx(ref, rel=1e-4)
