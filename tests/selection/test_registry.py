"""The selection registry: dispatch by name, the band language unchanged, and each strategy in prepare_model."""

from __future__ import annotations

import json

import pytest

from midblock.errors import MidblockError
from midblock.layers import resolve_layers
from midblock.models.introspect import get_layout
from midblock.selection import REGISTRY, names, select, split_spec
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.prepare import check_truncated_backward, plan, prepare_model


def test_every_strategy_is_registered_and_dispatched_by_its_name():
    assert set(names()) == {"band", "auto", "spectrum", "cka-select", "lisa"}
    assert split_spec("spectrum:50")[0] is REGISTRY["spectrum"]
    assert split_spec("lisa:2/20:blocks") == (REGISTRY["lisa"], "2/20:blocks")
    assert split_spec("cka-select:0.5")[0] is REGISTRY["cka-select"]
    for band in ("seg2-4/5", "0.2:0.8", "first:2", "last:3", "1,3-4", "all"):
        assert split_spec(band) == (REGISTRY["band"], band)


@pytest.mark.parametrize("spec", ["seg2-4/5", "0.2:0.8", "2-4", "0,5", "first:2", "last:1", "all", "seg3/5"])
def test_the_band_language_selects_what_resolve_layers_does(tiny, spec):
    model, _ = tiny("llama-tiny")
    sel = select(spec, get_layout(model))
    assert sel.blocks == resolve_layers(spec, 6) and sel.strategy == "band" and not sel.modules


def test_auto_reads_the_recommended_band(tiny, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"recommended_band": {"spec": "2-4"}}))
    model, _ = tiny("llama-tiny")
    sel = select("auto", get_layout(model), analysis=str(tmp_path))
    assert (sel.spec, sel.blocks, sel.strategy) == ("2-4", [2, 3, 4], "auto")
    with pytest.raises(MidblockError, match="does not exist"):
        select("auto", get_layout(model), analysis=str(tmp_path / "nope"))


def test_every_strategy_keeps_the_form_asked_for_and_bad_specs_fail_at_construction():
    for spec in ("spectrum:50", "lisa:2/20", "cka-select:0.5"):
        assert MidBlockConfig(band=spec).method == "midblock"  # the LoRA form
        assert MidBlockConfig(method="midblock-full", band=spec).method == "midblock-full"
    for bad in ("spectrum:0", "lisa:2", "cka-select:2", "auto:x"):
        for method in ("midblock", "midblock-full"):
            with pytest.raises(MidblockError):
                MidBlockConfig(method=method, band=bad, analysis="x")


def test_spectrum_prepare_trains_exactly_the_selected_matrices_and_the_ends(tiny):
    model, _ = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(method="midblock-full", band="spectrum:50"))
    p, lay = pm.midblock_plan, get_layout(pm)
    want = {f"{lay.blocks_path}.{b}.{n}.weight" for b, ns in p.full_modules.items() for n in ns}
    want |= {"model.embed_tokens.weight"} | (
        {"lm_head.weight"} if lay.lm_head.weight is not lay.embedding.weight else set()
    )
    assert {n for n, x in pm.named_parameters() if x.requires_grad} == want
    assert p.first_trainable == 0  # the embeddings train: a full backward


def test_spectrum_blocks_only_truncates_the_backward_at_its_lowest_matrix(tiny):
    model, _ = tiny("llama-8l")
    pm = prepare_model(model, MidBlockConfig(method="midblock-full", band="spectrum:25:blocks"))
    p = pm.midblock_plan
    rep = check_truncated_backward(pm)
    assert rep["first_trainable_block"] == min(p.full_modules) == p.first_trainable
    assert not rep["embedding_trainable"]


def test_a_form_a_strategy_lacks_is_a_one_line_error(tiny, monkeypatch):
    model, _ = tiny("llama-tiny")
    monkeypatch.setattr(REGISTRY["lisa"], "forms", ("full",))
    with pytest.raises(MidblockError, match="'lisa:2/5' has no lora form"):
        plan(MidBlockConfig(band="lisa:2/5"), get_layout(model), model=model)


def test_cka_select_lora_trains_the_selected_blocks(tiny):
    model, tok = tiny("llama-tiny")
    data = [tok(f"{a} plus {b} is").input_ids for a in range(6) for b in range(4)]
    pm = prepare_model(model, MidBlockConfig(band="cka-select:0.5", rank=2), data=data)
    p = pm.midblock_plan
    assert sorted(p.lora_ranks) == p.selection.blocks and len(p.lora_ranks) == 3
    got = {int(n.split("layers.")[1].split(".")[0]) for n, x in pm.named_parameters() if x.requires_grad}
    assert got == set(p.selection.blocks)


def test_the_meta_skeleton_only_validates_weight_and_data_strategies():
    from midblock.models.skeleton import load_skeleton

    sk = load_skeleton("random:llama-tiny")
    for spec in ("spectrum:50", "cka-select:0.5"):
        assert select(spec, get_layout(sk)).deferred


def test_cli_band_flag_takes_a_strategy(tmp_path):
    from midblock.cli import build_parser
    from midblock.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--band", "lisa:2/20:blocks", "--out", str(tmp_path / "r")])
    cfg = config_from_args(args)
    assert cfg.tuning.band == "lisa:2/20:blocks" and cfg.tuning.method == "midblock"  # LoRA, the default
    args = build_parser().parse_args(
        ["train", "--method", "midblock-full", "--band", "spectrum:50", "--out", str(tmp_path / "f")]
    )
    assert config_from_args(args).tuning.method == "midblock-full"


def test_spectrum_and_lisa_match_a_parameter_budget(tiny):
    model, _ = tiny("llama-8l")
    lay = get_layout(model)
    block = sum(x.numel() for x in lay.blocks[0].parameters())
    linears = sum(x.numel() for n in lay.linear_names for x in lay.blocks[0].get_submodule(n).parameters())
    full = {"method": "midblock-full"}
    p = plan(MidBlockConfig(band="lisa:2/5:blocks", param_budget=3 * block + 1, **full), lay, model=model)
    assert p.band_spec == "lisa:3/5:blocks" and p.budget["params"] == 3 * block
    p = plan(MidBlockConfig(band="spectrum:50", param_budget=2 * linears + 7, **full), lay, model=model)
    per_type = {n: sum(n in m for m in p.full_modules.values()) for n in lay.linear_names}
    assert set(per_type.values()) == {2} and p.budget["outside_budget"] == "embeddings and head"
    # matched to all-block LoRA: the budget is that arm's parameter count
    lora = prepare_model(tiny("llama-8l")[0], MidBlockConfig(method="lora", rank=64))
    n_lora = sum(x.numel() for x in lora.parameters() if x.requires_grad)
    p = plan(MidBlockConfig(band="lisa:1/5", budget_baseline_rank=64, **full), lay, model=model)
    assert p.budget["baseline_params"] == n_lora and p.budget["params"] <= n_lora < p.budget["params"] + block
    with pytest.raises(MidblockError, match="smaller than one block"):
        plan(MidBlockConfig(band="lisa:1/5", param_budget=block - 1, **full), lay, model=model)
    with pytest.raises(MidblockError, match="applies to spectrum and lisa"):
        MidBlockConfig(band="seg2-4/5", param_budget=10, **full)
    with pytest.raises(MidblockError, match="with --method midblock-full"):  # the LoRA forms match rank units
        MidBlockConfig(band="lisa:1/5", param_budget=10)
