import pytest
import torch

from midblock.models import get_layout, load_model
from midblock.models.presets import PRESETS, TINY_PRESETS, preset_config

EXPECTED_GROUPS = {
    "llama-tiny": (
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    ),
    "gpt2-tiny": (["attn.c_attn", "attn.c_proj"], ["mlp.c_fc", "mlp.c_proj"]),
    "gptneox-tiny": (["attention.query_key_value", "attention.dense"], ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]),
    "phi3-tiny": (["self_attn.o_proj", "self_attn.qkv_proj"], ["mlp.gate_up_proj", "mlp.down_proj"]),
}
NORM_PATHS = {"gpt2-tiny": "transformer.ln_f", "gptneox-tiny": "gpt_neox.final_layer_norm"}


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_tiny_preset_builds_runs_and_is_introspected(preset):
    model, tok = load_model(f"random:{preset}", seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n_params < 5e6
    batch = tok(["Question: 2+2?\nAnswer:", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    lay = get_layout(model)
    assert lay.num_layers == 6
    assert lay.final_norm is not None
    assert lay.final_norm_path == NORM_PATHS.get(preset, "model.norm")
    assert lay.lm_head is model.get_output_embeddings()
    if preset in EXPECTED_GROUPS:
        attn, mlp = EXPECTED_GROUPS[preset]
        assert sorted(lay.attn_linears) == sorted(attn) and sorted(lay.mlp_linears) == sorted(mlp)
    else:
        assert len(lay.attn_linears) == 4 and len(lay.mlp_linears) == 3
    # the final norm really is the last thing before the head: block output -> norm -> head == logits
    hs = model(**batch, output_hidden_states=True).hidden_states
    assert len(hs) == lay.num_layers + 1


def test_seed_controls_random_weights():
    a, _ = load_model("random:llama-tiny", seed=0)
    b, _ = load_model("random:llama-tiny", seed=0)
    c, _ = load_model("random:llama-tiny", seed=1)
    pa, pb, pc = (dict(m.named_parameters())["model.layers.0.self_attn.q_proj.weight"] for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_big_presets_have_the_real_shapes():
    c1 = preset_config("olmo2-1b")
    c7 = preset_config("olmo2-7b")
    assert (c1.num_hidden_layers, c1.hidden_size, c1.intermediate_size) == (16, 2048, 8192)
    assert (c7.num_hidden_layers, c7.hidden_size, c7.intermediate_size) == (32, 4096, 11008)
    assert c7.vocab_size == 100352 and "olmo2-7b" in PRESETS


def test_skeleton_introspects_a_7b_shape_without_memory():
    from midblock.models.skeleton import load_skeleton

    m = load_skeleton("random:olmo2-7b")
    lay = get_layout(m)
    assert lay.num_layers == 32 and next(m.parameters()).device.type == "meta"


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_layout_sees_through_peft_wrappers(tiny, preset):
    """With LoRA on block 0 the block's linears keep their own names, not PEFT's pieces
    ('q_proj.base_layer', 'q_proj.lora_A.default'), so per-module metrics find the weights."""
    from peft import LoraConfig, get_peft_model

    model, _ = tiny(preset)
    before = get_layout(model)
    names = (list(before.attn_linears), list(before.mlp_linears), list(before.other_linears))
    targets = [n.split(".")[-1] for n in before.attn_linears]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, fan_in_fan_out=preset == "gpt2-tiny"))
    after = get_layout(peft_model)
    assert (after.attn_linears, after.mlp_linears, after.other_linears) == names
