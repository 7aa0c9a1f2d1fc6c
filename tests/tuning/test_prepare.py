"""prepare_model: exactly the intended parameters train, PEFT modules match the plan, backward is truncated."""

from __future__ import annotations

import pytest
import torch

from midblock.data import collate, load_examples, tokenize_sft
from midblock.errors import MidblockError
from midblock.models.introspect import block_of_param, get_layout
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.loss import causal_lm_loss
from midblock.tuning.prepare import check_truncated_backward, prepare_model


def _batch(tok, n=4):
    ts = tokenize_sft(load_examples("arith", "train", limit=n), tok, 512)
    return collate(ts.items, tok.pad_token_id)


def _grads(model, tok):
    model.train()
    loss, _ = causal_lm_loss(model, _batch(tok), True)
    loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_midblock_lora_trains_only_band_targets(tiny, preset):
    model, tok = tiny(preset)
    pm = prepare_model(model, MidBlockConfig(method="midblock", band="2-3", rank=4))
    lay = get_layout(pm)
    req = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert req and all("lora_" in n for n in req)
    assert {block_of_param(n, lay) for n in req} == {2, 3}
    per_block = {n.split(f"{lay.blocks_path}.", 1)[1].split(".lora_")[0] for n in req}
    assert per_block == {f"{b}.{t}" for b in (2, 3) for t in lay.attn_linears}  # GPT-2: c_attn / c_proj
    with torch.no_grad():  # B starts at 0, which gives A a zero gradient: make every LoRA factor live
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    assert _grads(pm, tok) == req


def test_full_methods_by_requires_grad(tiny):
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(method="midblock-full", band="3-4"))
    lay = get_layout(pm)
    req = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert {block_of_param(n, lay) for n in req} == {3, 4}
    assert req == {n for n, _ in pm.named_parameters() if block_of_param(n, lay) in (3, 4)}
    assert _grads(pm, tok) == req
    m2, _ = tiny("llama-tiny")
    fr = prepare_model(m2, MidBlockConfig(method="freeze", freeze_first=1, freeze_last=2))
    assert {block_of_param(n, lay) for n, p in fr.named_parameters() if p.requires_grad} == {1, 2, 3}
    m3, _ = tiny("llama-tiny")
    full = prepare_model(m3, MidBlockConfig(method="full"))
    assert all(p.requires_grad for p in full.parameters())


def test_segments_heterogeneous_ranks_are_built(tiny):
    from peft.tuners.lora import LoraLayer

    model, _ = tiny("llama-tiny")  # 6 blocks, 3 segments of 2: -1 | r4 | r8
    pm = prepare_model(model, MidBlockConfig(method="segments", segments="-1,4,8", rank=4, alpha=8))
    lay = get_layout(pm)
    built = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer):
            b = block_of_param(name, lay)
            built[name] = (b, mod.r["default"], mod.lora_A["default"].weight.shape[0], mod.scaling["default"])
    assert {v[0] for v in built.values()} == {2, 3, 4, 5}
    for b, r, a_rows, scaling in built.values():
        want = 4 if b in (2, 3) else 8
        assert r == a_rows == want
        assert scaling == 2.0  # constant-ratio: alpha follows the rank
    assert len(built) == 4 * len(lay.attn_linears)


def test_target_names_and_errors(tiny):
    model, _ = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(method="lora", target_modules=("q_proj", "mlp.down_proj")))
    names = {n.rsplit(".lora_", 1)[0].split(".layers.")[1] for n, p in pm.named_parameters() if p.requires_grad}
    assert names == {f"{b}.{m}" for b in range(6) for m in ("self_attn.q_proj", "mlp.down_proj")}
    m2, _ = tiny("llama-tiny")
    with pytest.raises(MidblockError, match="existing: self_attn.q_proj"):
        prepare_model(m2, MidBlockConfig(target_modules=("c_attn",)))
    with pytest.raises(MidblockError, match="selects block 8"):
        prepare_model(m2, MidBlockConfig(band="8-9"))


def _visited_blocks(model, tok):
    """Blocks whose output gradient autograd computes (tensor hooks on every block's output)."""
    lay = get_layout(model)
    seen: set[int] = set()
    handles = []
    for i, blk in enumerate(lay.blocks):

        def fwd(_m, _inp, out, i=i):
            h = out[0] if isinstance(out, tuple) else out
            if h.requires_grad:
                h.register_hook(lambda g, i=i: seen.add(i))

        handles.append(blk.register_forward_hook(fwd))
    try:
        _grads(model, tok)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_checkpointing_backward_never_visits_blocks_below_band(tiny):
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band="2-3", gradient_checkpointing=True))
    rep = check_truncated_backward(pm)
    assert rep["backward_depth"] == 4 and rep["checkpointed_blocks"] == [2, 3, 4, 5]
    assert _visited_blocks(pm, tok) == {2, 3, 4, 5}
    # the prepared model's own enable_input_require_grads (what TRL/Trainer call) does nothing
    pm.enable_input_require_grads()
    assert _visited_blocks(pm, tok) == {2, 3, 4, 5}
    # the peer set-up (transformers' own method: input grads) visits every block: the test can fail
    inner = pm.base_model.model
    type(inner).enable_input_require_grads(inner)
    assert _visited_blocks(pm, tok) == set(range(6))
    with pytest.raises(MidblockError, match="requires grad"):
        check_truncated_backward(pm, fix=False)
    assert check_truncated_backward(pm, fix=True)["fixed"]
    assert _visited_blocks(pm, tok) == {2, 3, 4, 5}


def test_checkpointing_gives_identical_lora_grads(tiny):
    grads = []
    for ck in (False, True):
        model, tok = tiny("llama-tiny")
        torch.manual_seed(0)
        pm = prepare_model(model, MidBlockConfig(band="2-3", gradient_checkpointing=ck))
        _grads(pm, tok)
        grads.append({n: p.grad.clone() for n, p in pm.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny", "gemma3-tiny", "gptneox-tiny"])
def test_labelled_head_loss_equals_full_loss(tiny, preset):
    model, tok = tiny(preset)
    b = _batch(tok)
    with torch.no_grad():
        ref = model(**b).loss
        fast, n = causal_lm_loss(model, b, labelled_head=True)
        slow, _ = causal_lm_loss(model, b, labelled_head=False)
    assert n == int((b["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(slow, ref, rtol=1e-6, atol=0)


def test_trainer_style_reentrant_checkpointing_is_repaired(tiny):
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band="3-4"))
    # what Trainer(gradient_checkpointing=True) does to a model that is not prepared (e.g. rebuilt by a trainer):
    # reentrant checkpointing on every block + input grads, through transformers' own methods
    inner = pm.base_model.model
    type(inner).gradient_checkpointing_enable(inner, gradient_checkpointing_kwargs={"use_reentrant": True})
    type(inner).enable_input_require_grads(inner)
    with pytest.raises(MidblockError):
        check_truncated_backward(pm)
    rep = check_truncated_backward(pm, fix=True)
    assert rep["checkpointed_blocks"] == [3, 4, 5] and rep["backward_depth"] == 3
    blocks = get_layout(pm).blocks
    assert not any(blocks[i].gradient_checkpointing for i in range(3))
    assert _visited_blocks(pm, tok) == {3, 4, 5}


def test_prepared_model_keeps_truncation_when_a_trainer_enables_checkpointing(tiny):
    """The entry points Trainer / SFTTrainer call, on the prepared model: band-only, non-reentrant, no input grads."""
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band="3-4"))
    pm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    pm.gradient_checkpointing_enable()  # the deprecated name, as older trainers call it
    pm.enable_input_require_grads()
    rep = check_truncated_backward(pm)  # fix=False: nothing to repair
    assert rep["checkpointed_blocks"] == [3, 4, 5] and not rep["fixed"]
    assert _visited_blocks(pm, tok) == {3, 4, 5}
    import copy

    twin = copy.deepcopy(pm)  # the methods are bound to the model, so a copy checkpoints its own blocks
    for m in (pm, twin):
        for blk in get_layout(m).blocks:
            blk.gradient_checkpointing = False
    twin.base_model.model.activation_checkpointing_enable()
    assert check_truncated_backward(twin)["checkpointed_blocks"] == [3, 4, 5]
    assert check_truncated_backward(pm)["checkpointed_blocks"] == []


def test_refuses_trainable_params_below_the_band(tiny):
    model, _ = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band="3-4"))
    get_layout(pm).blocks[1].mlp.up_proj.weight.requires_grad_(True)
    with pytest.raises(MidblockError, match="below the band"):
        check_truncated_backward(pm, fix=True)


def test_base_name_is_recorded_as_loadable_without_peft_rename_warning(tiny, tmp_path, monkeypatch):
    """PEFT overwrites a LoraConfig's base with the model's own path and warns when they differ: the base is
    set after get_peft_model instead, as what from_pretrained can load (None for a ``random:`` preset)."""
    import warnings

    model, _ = tiny("llama-tiny")
    model.save_pretrained(tmp_path / "base")  # a local directory, named below relative to the working directory
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*base_model_name_or_path.*")
        pm = prepare_model(model, MidBlockConfig(band="2-3", rank=4), base_name="random:llama-tiny")
    assert pm.peft_config["default"].base_model_name_or_path is None
    monkeypatch.chdir(tmp_path)
    plain, _ = tiny("llama-tiny")
    pm = prepare_model(plain, MidBlockConfig(band="2-3", rank=4), base_name="base")
    assert pm.peft_config["default"].base_model_name_or_path == str((tmp_path / "base").resolve())


def test_wrapping_with_peft_raises_no_deprecation_warning_from_peft(tiny):
    # PEFT reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model: a FutureWarning
    # about PEFT's code that a midblock user cannot act on. prepare_model hides exactly that one warning.
    import warnings

    model, _ = tiny("llama-tiny")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        prepare_model(model, MidBlockConfig(method="midblock", band="2-3", rank=4))
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]


def test_the_peft_warning_filter_lets_other_warnings_through():
    import warnings

    from midblock.models.loading import peft_quietly

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with peft_quietly():
            msg = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
            warnings.warn(msg, FutureWarning, stacklevel=1)
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]
