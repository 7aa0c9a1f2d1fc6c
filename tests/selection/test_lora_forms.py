"""The LoRA forms of Spectrum and LISA: adapters exactly where the selection says, LISA's switching on the
adapters (checked on the weights), and the rank units each form holds against uniform LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from midblock.data import collate, load_examples, tokenize_sft
from midblock.models.introspect import get_layout
from midblock.models.skeleton import load_skeleton
from midblock.selection import select
from midblock.selection.lisa import LisaSchedule
from midblock.tuning.budget import layout_rank_units, model_shape, parameter_row, trainable_params
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.loss import causal_lm_loss
from midblock.tuning.prepare import budget_matched_spec, plan, prepare_model, step_trainable_params


def _adapted(model) -> set[tuple[int, str]]:
    """(block, block-relative module) of every LoRA adapter in ``model``."""
    lay = get_layout(model)
    out = set()
    for n, _ in model.named_parameters():
        if "lora_A" in n:
            rel = n.split(f"{lay.blocks_path}.", 1)[1].split(".lora_A")[0]
            b, _, mod = rel.partition(".")
            out.add((int(b), mod))
    return out


def _lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _block(name: str) -> int:
    return int(name.split("layers.")[1].split(".")[0])


def test_spectrum_lora_puts_adapters_exactly_on_the_selected_matrices_of_the_target_types(tiny):
    model, _ = tiny("llama-8l")
    lay = get_layout(model)
    targets = list(lay.attn_linears)
    full = select("spectrum:25", lay, model=model)  # the reference ranking over every module type
    want = {(b, n) for b, names in full.modules.items() for n in names if n in targets}
    pm = prepare_model(model, MidBlockConfig(band="spectrum:25", rank=2))  # LoRA, --targets attn (default)
    p = pm.midblock_plan
    assert _adapted(pm) == want and len(want) == 2 * len(targets)  # floor(8 x 25%) = 2 matrices per type
    assert {(b, n) for b, names in p.lora_modules.items() for n in names} == want
    # adapters only: base weights, embeddings and head frozen; the backward starts at the lowest adapted block
    assert all("lora_" in n for n, x in pm.named_parameters() if x.requires_grad)
    assert not p.train_ends and p.first_trainable == min(b for b, _ in want)
    assert p.selection.details["form"] == "lora" and set(p.selection.details["snr"]) == set(targets)


def test_spectrum_lora_matches_uniform_rank_units_and_parameters(tiny):
    model, _ = tiny("llama-8l")
    lay, shape = get_layout(model), model_shape(model)
    p = plan(MidBlockConfig(band="spectrum:25", budget_baseline_rank=4), lay, model=model)
    # 2 matrices of every type = the adapters of 2 blocks: rank floor(8 x 4 / 2) = 16, 32 units like uniform r4
    assert p.budget["rank"] == 16 and p.budget["units"] == p.budget["baseline_units"] == 32
    assert "2 matrices of each of 4 target types" in p.budget["unit"]
    uniform = plan(MidBlockConfig(method="lora", rank=4), lay)
    row = parameter_row("spectrum", shape, p.layout(), p.alphas, p.scalings)
    assert row["rank_units"] == 32 == layout_rank_units(uniform.layout())
    assert row["trainable_params"] == trainable_params(shape, uniform.layout())
    pm = prepare_model(model, MidBlockConfig(band="spectrum:25", budget_baseline_rank=4))
    assert sum(x.numel() for x in pm.parameters() if x.requires_grad) == row["trainable_params"]


def test_lisa_lora_switches_which_adapters_update_and_never_touches_the_base(tiny):
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band="lisa:2/2", rank=2), seed=1)
    sch, lay = pm.midblock_plan.schedule, get_layout(pm)
    assert sch.adapters_only and not sch.train_ends
    assert {b for b, _ in _adapted(pm)} == set(range(6))  # adapters on every block
    base = {n: x.detach().clone() for n, x in pm.named_parameters() if "lora_" not in n}
    opt = torch.optim.AdamW([x for x in pm.parameters() if x.requires_grad], lr=1e-2, weight_decay=0.1)
    visited: set[int] = set()
    for i, blk in enumerate(lay.blocks):

        def fwd(_m, _a, out, i=i):
            h = out[0] if isinstance(out, tuple) else out
            if h.requires_grad:
                h.register_hook(lambda g, i=i: visited.add(i))

        blk.register_forward_hook(fwd)
    items = tokenize_sft(load_examples("arith", "train", limit=4), tok, 512).items
    batch = collate(items, tok.pad_token_id)
    actives = []
    for step in range(6):
        active = sch.begin_step(pm, step)
        actives.append(active)
        # only the active blocks' adapters require grad; base weights never do
        assert {_block(n) for n, x in pm.named_parameters() if x.requires_grad} == set(active)
        assert all("lora_" in n for n, x in pm.named_parameters() if x.requires_grad)
        before = _lora_weights(pm)
        visited.clear()
        loss, _ = causal_lm_loss(pm, batch, True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sch.end_step(pm)
        moved = {_block(n) for n, w in _lora_weights(pm).items() if not torch.equal(w, before[n])}
        assert moved == set(active), (step, active, moved)  # the weights say which adapters trained
        assert visited == set(range(active[0], 6))  # truncated at the step's lowest active block
        assert sch.backward_depth(step) == 6 - active[0]
    assert len({tuple(a) for a in actives}) > 1  # the sets did switch
    assert all(torch.equal(x, base[n]) for n, x in pm.named_parameters() if "lora_" not in n)
    assert all(x.requires_grad for n, x in pm.named_parameters() if "lora_" in n)  # widened between steps


def test_lisa_lora_budget_is_per_step(tiny):
    model, _ = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band="lisa:2/5", budget_baseline_rank=4), seed=0)
    p = pm.midblock_plan
    # 2 active blocks per step at the rank units of uniform r4 on 6 blocks: rank 12, 24 units per step
    assert p.budget["rank"] == 12 and p.budget["units"] == p.budget["baseline_units"] == 24
    assert "2 active blocks per step" in p.budget["unit"]
    shape = model_shape(model)
    row = parameter_row("lisa", shape, p.layout(), p.alphas, p.scalings)
    uniform = plan(MidBlockConfig(method="lora", rank=4), get_layout(model))
    assert row["rank_units"] == 24 and row["trainable_params"] == trainable_params(shape, uniform.layout())
    assert step_trainable_params(pm, p) == row["trainable_params"]


def test_midblock_train_runs_lisa_lora_and_saves_adapters_that_moved_only_where_active(tmp_path):
    from safetensors.torch import load_file

    from midblock.tuning.train import TrainConfig, train

    cfg = TrainConfig(
        model="random:llama-tiny",
        task="arith",
        out=str(tmp_path / "run"),
        steps=4,
        batch_size=2,
        train_rows=8,
        eval_loss_items=0,
        lr=1e-2,
        seed=1,
        progress=False,
        tuning=MidBlockConfig(band="lisa:1/2", rank=2),
    )
    res = train(cfg)
    sch = LisaSchedule(1, 2, 6, seed=1, train_ends=False)
    assert res.method == "midblock" and res.selection["form"] == "lora" and res.selection["lisa"]["adapters_only"]
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["active_blocks"] for r in log] == [sch.active(s) for s in range(4)]
    assert res.backward_depth == max(sch.backward_depth(s) for s in range(4))
    ever = {b for s in range(4) for b in sch.active(s)}
    ad = next((tmp_path / "run").rglob("adapter_model.safetensors"))
    weights = load_file(str(ad))
    moved = {_block(k) for k, v in weights.items() if "lora_B" in k and v.abs().sum() > 0}  # B starts at zero
    assert {_block(k) for k in weights} == set(range(6)) and moved == ever


def test_spectrum_and_lisa_lora_train_from_the_cli(tmp_path):
    from tests.conftest import run_cli

    rc, out, err = run_cli(
        "train", "--model", "random:llama-tiny", "--task", "arith", "--band", "spectrum:50", "--steps", "1",
        "--limit", "4", "--batch-size", "2", "--eval-limit", "0", "--precision", "fp32",
        "--out", str(tmp_path / "s"),
    )  # fmt: skip
    assert rc == 0, err
    assert "spectrum" in out and "form" in out


@pytest.mark.parametrize("spec", ["spectrum:60:blocks", "lisa:18/20:blocks"])
def test_the_selection_family_full_specs_are_what_the_paper_band_budget_chooses(spec):
    """On SmolLM2-135M's shapes (30 blocks), --param-budget at the paper band's full parameters chooses the P
    and G the selection-family preset writes out."""
    sk = load_skeleton("random:smollm2-shape")
    lay = get_layout(sk)
    band = plan(MidBlockConfig(method="midblock-full", band="seg2-4/5"), lay)
    budget = sum(x.numel() for b in band.full_blocks for x in lay.blocks[b].parameters())
    got, rec = budget_matched_spec(MidBlockConfig(method="midblock-full", band=spec, param_budget=budget), lay)
    if spec.startswith("lisa"):
        assert got == spec and rec["params"] == budget
    else:  # P = 100 k / L with k = 18 matrices per type: the same selection as P = 60
        k = round(float(got.split(":")[1]) * 30 / 100 - 0.005)
        assert k == 18 == int(30 * 60 / 100) and budget - rec["params"] == 18 * 2 * 576  # the norms
