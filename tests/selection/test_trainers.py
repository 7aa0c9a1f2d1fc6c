"""The selection strategies inside the real trainers: transformers' Trainer, TRL's SFTTrainer when installed.

Weights decide what trained (a frozen block or matrix must come out bit-identical), backward hooks on every
block's output decide how deep the backward went, and LISA's switches are read from the callback.
"""

from __future__ import annotations

import pytest
import torch

from midblock.models.introspect import get_layout
from midblock.selection.lisa import LisaSchedule
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.prepare import prepare_model
from midblock.tuning.trainers import LisaCallback, MidBlockCallback, band_lora_config
from tests.tuning.test_trainers import _hf_trainer, _items, _trl, _trl_trainer


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moved(before, model) -> set[str]:
    return {n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach())}


def _block(name: str) -> int | None:
    return int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None


@pytest.mark.parametrize("runner", ["trainer", "sft"])
def test_lisa_switches_every_k_steps_and_only_active_blocks_train(tiny, tmp_path, runner):
    if runner == "sft":
        _trl()
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(method="midblock-full", band="lisa:1/2:blocks"), seed=7)
    before = _weights(pm)
    cb = MidBlockCallback()
    make = _hf_trainer if runner == "trainer" else _trl_trainer
    tr = make(pm, tok, tmp_path, False, callbacks=[cb], steps=4)
    tr.train()
    sch = LisaSchedule(1, 2, 6, seed=7, train_ends=False)
    assert [(s["step"], s["active"]) for s in cb.switches] == [(0, sch.active(0)), (2, sch.active(2))]
    ever = {b for s in range(4) for b in sch.active(s)}
    assert {_block(n) for n in _moved(before, pm)} == ever  # embeddings, head and other blocks untouched
    # the backward reached only the blocks from the lowest active block of some step upwards
    assert min(tr.probe.visited) == min(sch.active(s)[0] for s in range(4))


def test_lisa_callback_alone_does_the_switching(tiny, tmp_path):
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(method="midblock-full", band="lisa:2/1"), seed=0)
    cb = LisaCallback()
    _hf_trainer(pm, tok, tmp_path, False, callbacks=[cb], steps=3).train()
    assert [s["step"] for s in cb.switches] == [0, 1, 2]
    assert all(s["backward_depth"] == 6 for s in cb.switches)  # embeddings train: a full backward


@pytest.mark.parametrize("runner", ["trainer", "sft"])
def test_spectrum_trains_only_the_selected_matrices_with_a_truncated_backward(tiny, tmp_path, runner):
    if runner == "sft":
        _trl()
    model, tok = tiny("llama-8l")
    pm = prepare_model(model, MidBlockConfig(method="midblock-full", band="spectrum:25:blocks"))
    p, lay = pm.midblock_plan, get_layout(pm)
    selected = {f"{lay.blocks_path}.{b}.{n}.weight" for b, ns in p.full_modules.items() for n in ns}
    before = _weights(pm)
    make = _hf_trainer if runner == "trainer" else _trl_trainer
    tr = make(pm, tok, tmp_path, True, callbacks=[MidBlockCallback()], steps=2)
    tr.train()
    assert _moved(before, pm) == selected
    assert tr.probe.visited == set(range(min(p.full_modules), 8))


def test_cka_select_through_trl_peft_config(tiny, tmp_path):
    _trl()
    model, tok = tiny("llama-tiny")
    data = [it["input_ids"] for it in _items(tok)]
    cfg = band_lora_config(model, band="cka-select:0.5", rank=2, data=data)
    blocks = model.midblock_plan.selection.blocks
    tr = _trl_trainer(model, tok, tmp_path, True, callbacks=[MidBlockCallback()], peft_config=cfg)
    tr.train()
    lora = {_block(n) for n, p in tr.model.named_parameters() if "lora_" in n}
    assert lora == set(blocks) and len(blocks) == 3
    assert min(tr.probe.visited) == min(blocks)


def test_cka_select_lora_inside_trainer(tiny, tmp_path):
    model, tok = tiny("llama-tiny")
    data = [it["input_ids"] for it in _items(tok)]
    pm = prepare_model(model, MidBlockConfig(band="cka-select:0.34", rank=2), data=data)
    before = _weights(pm)
    tr = _hf_trainer(pm, tok, tmp_path, True, callbacks=[MidBlockCallback()])
    tr.train()
    moved = _moved(before, pm)
    assert moved and all("lora_B" in n or "lora_A" in n for n in moved)
    assert {_block(n) for n in moved} <= set(pm.midblock_plan.selection.blocks)


@pytest.mark.parametrize("runner", ["trainer", "sft"])
def test_lisa_lora_switches_adapters_every_k_steps_inside_the_trainers(tiny, tmp_path, runner):
    if runner == "sft":
        _trl()
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band="lisa:1/2", rank=2), seed=7)  # LoRA form
    before = _weights(pm)
    cb = MidBlockCallback()
    make = _hf_trainer if runner == "trainer" else _trl_trainer
    tr = make(pm, tok, tmp_path, False, callbacks=[cb], steps=4)
    tr.train()
    sch = LisaSchedule(1, 2, 6, seed=7, train_ends=False)
    assert [(s["step"], s["active"]) for s in cb.switches] == [(0, sch.active(0)), (2, sch.active(2))]
    moved = _moved(before, pm)
    # only adapters moved, and only those of blocks some step had active
    assert moved and all("lora_" in n for n in moved)
    assert {_block(n) for n in moved} == {b for s in range(4) for b in sch.active(s)}
    assert min(tr.probe.visited) == min(sch.active(s)[0] for s in range(4))


@pytest.mark.parametrize("runner", ["trainer", "sft"])
def test_spectrum_lora_trains_only_the_selected_matrices_adapters(tiny, tmp_path, runner):
    if runner == "sft":
        _trl()
    model, tok = tiny("llama-8l")
    pm = prepare_model(model, MidBlockConfig(band="spectrum:25", rank=2))  # LoRA on the selected q,k,v,o
    p = pm.midblock_plan
    selected = {(b, n) for b, ns in p.lora_modules.items() for n in ns}
    before = _weights(pm)
    make = _hf_trainer if runner == "trainer" else _trl_trainer
    tr = make(pm, tok, tmp_path, True, callbacks=[MidBlockCallback()], steps=2)
    tr.train()
    moved = _moved(before, pm)
    assert moved and all("lora_" in n for n in moved)
    assert {(_block(n), n.split(f"layers.{_block(n)}.")[1].split(".lora_")[0]) for n in moved} == selected
    assert tr.probe.visited == set(range(min(p.lora_modules), 8))


def test_spectrum_lora_through_trl_peft_config(tiny, tmp_path):
    _trl()
    model, tok = tiny("llama-8l")
    cfg = band_lora_config(model, band="spectrum:25", rank=2)
    p = model.midblock_plan
    want = {f"model.layers.{b}.{n}" for b, ns in p.lora_modules.items() for n in ns}
    assert set(cfg.target_modules) == want
    tr = _trl_trainer(model, tok, tmp_path, False, callbacks=[MidBlockCallback()], peft_config=cfg)
    tr.train()
    lora_a = [n for n, _ in tr.model.named_parameters() if ".lora_A." in n]
    assert {n.split("base_model.model.", 1)[-1].split(".lora_A")[0] for n in lora_a} == want
