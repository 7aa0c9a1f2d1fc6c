"""Swap mechanics: exact transplants, exact restores, lazy reads, every kind of variant, bad pairs."""

from __future__ import annotations

import pytest
import torch

from midblock.errors import MidblockError
from midblock.models import load_model
from midblock.surgery.sources import SafetensorsSource, open_source, tied_aliases
from midblock.surgery.swap import (
    Configuration,
    Patch,
    all_param_names,
    block_param_names,
    check_compatible_configs,
    check_source,
    head_param_names,
    reference_configurations,
    run_configurations,
    swap_configurations,
)
from tests.surgery.conftest import logits, perturb_blocks, write_delta_run


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_equal(model, snap) -> None:
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(now[k], v), k


def test_all_blocks_and_head_reproduce_variant_exactly(pair, ids):
    base, var, _, tmp = pair
    src = SafetensorsSource(tmp / "variant", tied_aliases(base))
    names = block_param_names(base, range(6)) + head_param_names(base)
    before = snapshot(base)
    base_logits = logits(base, ids)
    with Patch(base, src, dict.fromkeys(names, 1.0)):
        assert torch.equal(logits(base, ids), logits(var, ids))
    assert_bit_equal(base, before)
    assert torch.equal(logits(base, ids), base_logits)


def test_nothing_swapped_is_the_base_and_blocks_without_head_differ(pair, ids):
    base, var, _, tmp = pair
    src = SafetensorsSource(tmp / "variant")
    ref = logits(base, ids)
    with Patch(base, src, {}):
        assert torch.equal(logits(base, ids), ref)
    with Patch(base, src, dict.fromkeys(block_param_names(base, range(6)), 1.0)):
        out = logits(base, ids)
    assert not torch.equal(out, ref) and not torch.equal(out, logits(var, ids))


def test_grid_restores_bit_exactly_and_reads_only_needed_tensors(pair, ids, monkeypatch):
    base, var, _, tmp = pair
    src = SafetensorsSource(tmp / "variant")
    reads: list[str] = []
    real_get = src.get
    monkeypatch.setattr(src, "get", lambda n: reads.append(n) or real_get(n))
    configs = swap_configurations(base, segments=3)
    assert [c.info["blocks"] for c in configs] == ["0-1", "2-3", "4-5"]
    before = snapshot(base)
    seen = []

    def measure(m):
        assert_bit_equal_except = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
        seen.append(assert_bit_equal_except)
        return {"logit_sum": float(logits(m, ids).sum())}

    rows = run_configurations(base, src, configs, measure, progress=False)
    assert_bit_equal(base, before)
    # Each configuration changed exactly its own blocks, and only those tensors were read.
    for c, changed in zip(configs, seen):
        assert changed == set(c.weights)
    assert sorted(reads) == sorted(n for c in configs for n in c.weights)
    assert [r["tensors_swapped"] for r in rows] == [18, 18, 18]


def test_resume_skips_finished_configurations(pair):
    base, _, _, tmp = pair
    src = SafetensorsSource(tmp / "variant")
    configs = swap_configurations(base, bands=["0-1", "last:2"], with_head=True)
    assert [c.name for c in configs] == ["band 0-1+head", "band last:2+head"]
    calls = []
    rows = run_configurations(
        base, src, configs, lambda m: calls.append(1) or {}, done={"band 0-1+head"}, progress=False
    )
    assert len(calls) == 1 and rows[0]["config"] == "band last:2+head"


def test_reference_donor_row_is_the_full_variant(ids, tmp_path):
    base, _ = load_model("random:llama-tiny", seed=0)
    var, _ = load_model("random:llama-tiny", seed=1)  # a different model everywhere, embeddings included
    var.save_pretrained(tmp_path / "v")
    src = SafetensorsSource(tmp_path / "v")
    recip, donor = reference_configurations(base, "base", "variant")
    check_source(base, src, donor.weights)
    with Patch(base, src, donor.weights):
        assert torch.equal(logits(base, ids), logits(var, ids))
    assert recip.weights == {}


def test_into_variant_direction_uses_base_files(pair, ids):
    base, var, _, tmp = pair
    # The variant is the recipient; base blocks 2..3 go into it.
    src = open_source(str(tmp / "base"), [], tied_aliases(var))
    assert isinstance(src, SafetensorsSource)
    before = snapshot(var)
    with Patch(var, src, dict.fromkeys(all_param_names(var), 1.0)):
        assert torch.equal(logits(var, ids), logits(base, ids))
    assert_bit_equal(var, before)


def test_tied_head_swaps_through_alias(tmp_path, ids):
    base, _ = load_model("random:gpt2-tiny", seed=0)
    var, _ = load_model("random:gpt2-tiny", seed=0)
    perturb_blocks(var, range(6))  # perturbs lm_head = wte (tied)
    var.save_pretrained(tmp_path / "v")
    names = block_param_names(base, range(6)) + head_param_names(base)
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    src = SafetensorsSource(tmp_path / "v", tied_aliases(base))
    check_source(base, src, names)
    with Patch(base, src, dict.fromkeys(names, 1.0)):
        assert torch.equal(logits(base, ids), logits(var, ids))


def test_delta_run_dir_is_read_lazily_over_its_base(pair, ids):
    base, var, _, tmp = pair
    run = write_delta_run(tmp, tmp / "base", var, blocks=[2, 3])
    names = block_param_names(base, range(6))
    src = open_source(run, names, tied_aliases(base))
    assert type(src).__name__ == "OverlaySource"
    full_var, _ = load_model(run)
    with Patch(base, src, dict.fromkeys(names, 1.0)):
        assert torch.equal(logits(base, ids), logits(full_var, ids))


def test_adapter_variant_is_merged_by_peft(pair, ids, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _, _, tmp = pair
    lora_base, _ = load_model(str(tmp / "base"))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(lora_base, cfg)
    peft_model.save_pretrained(tmp_path / "adapter")
    spec = f"{tmp / 'base'}+{tmp_path / 'adapter'}"
    names = block_param_names(base, range(6))
    src = open_source(spec, names, tied_aliases(base))
    merged, _ = load_model(spec, merge=True)
    with Patch(base, src, dict.fromkeys(names, 1.0)):
        got = logits(base, ids)
    assert torch.equal(got, logits(merged, ids))
    assert not torch.allclose(got, logits(load_model(str(tmp / "base"))[0], ids))


def test_random_preset_variant_materialised(ids):
    base, _ = load_model("random:llama-tiny", seed=0)
    var, _ = load_model("random:llama-tiny", seed=1)
    names = all_param_names(base)
    src = open_source("random:llama-tiny", names, tied_aliases(base), seed=1)
    with Patch(base, src, dict.fromkeys(names, 1.0)):
        assert torch.equal(logits(base, ids), logits(var, ids))


def test_bad_pairs_are_refused():
    from midblock.models.presets import preset_config

    with pytest.raises(MidblockError, match="differ in model_type"):
        check_compatible_configs(preset_config("llama-tiny"), preset_config("qwen2-tiny"), "a", "b")
    with pytest.raises(MidblockError, match="num_hidden_layers"):
        check_compatible_configs(preset_config("llama-tiny"), preset_config("llama-8l"), "a", "b")
    base, _ = load_model("random:llama-tiny")
    with pytest.raises(MidblockError, match="at most 6 segments"):
        swap_configurations(base, segments=7)
    with pytest.raises(MidblockError, match="exactly one"):
        swap_configurations(base)


def test_shape_mismatch_and_failed_patch_restore(tmp_path):
    from midblock.surgery.sources import DictSource

    base, _ = load_model("random:llama-tiny")
    name = block_param_names(base, [0])[0]
    with pytest.raises(MidblockError, match="shape"):
        check_source(base, DictSource({name: torch.zeros(3, 3)}), [name])
    with pytest.raises(MidblockError, match="no tensor"):
        check_source(base, DictSource({}), [name])
    before = snapshot(base)
    names = block_param_names(base, [0, 1])
    bad = DictSource({n: torch.ones_like(p) for n, p in base.named_parameters() if n in names[:3]})
    with pytest.raises(KeyError):
        with Patch(base, bad, dict.fromkeys(names, 1.0)):
            pass
    assert_bit_equal(base, before)
    with pytest.raises(MidblockError, match="outside"):
        Patch(base, bad, {names[0]: 1.5})


def test_configuration_dataclass_defaults():
    c = Configuration("x")
    assert c.weights == {} and c.info == {}


def test_patch_keeps_original_storage_instead_of_cloning(pair):
    base, _, _, tmp = pair
    names = block_param_names(base, [1])
    ptrs = {n: base.get_parameter(n).data_ptr() for n in names}
    with Patch(base, SafetensorsSource(tmp / "variant"), dict.fromkeys(names, 1.0)) as patch:
        assert {n: t.data_ptr() for n, t in patch.saved.items()} == ptrs  # the originals themselves, not copies
        assert all(base.get_parameter(n).data_ptr() != ptrs[n] for n in names)
    assert {n: base.get_parameter(n).data_ptr() for n in names} == ptrs
