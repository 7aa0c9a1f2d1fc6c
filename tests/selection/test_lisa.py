"""LISA: active sets from the seed, switching every K steps, frozen blocks untouched, truncated backward."""

from __future__ import annotations

import json

import pytest
import torch

from midblock.data import collate, load_examples, tokenize_sft
from midblock.errors import MidblockError
from midblock.models.introspect import get_layout
from midblock.selection.lisa import Lisa, LisaSchedule
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.loss import causal_lm_loss
from midblock.tuning.prepare import prepare_model


def test_active_sets_are_reproducible_from_the_seed_and_differ_between_seeds():
    a, b = LisaSchedule(2, 5, 12, seed=3), LisaSchedule(2, 5, 12, seed=3)
    assert [a.active(s) for s in range(60)] == [b.active(s) for s in range(60)]
    other = LisaSchedule(2, 5, 12, seed=4)
    assert [a.active(s) for s in range(0, 60, 5)] != [other.active(s) for s in range(0, 60, 5)]
    for s in range(60):
        act = a.active(s)
        assert len(act) == 2 and len(set(act)) == 2 and all(0 <= i < 12 for i in act)


def test_sets_change_only_at_multiples_of_k():
    sch = LisaSchedule(2, 4, 10, seed=0)
    draws = [sch.active(s) for s in range(40)]
    for s in range(40):
        assert draws[s] == draws[4 * (s // 4)]  # constant within a period
    changes = [s for s in range(1, 40) if draws[s] != draws[s - 1]]
    assert changes and all(s % 4 == 0 for s in changes)
    assert len(changes) >= 7  # 9 boundaries; two draws of 2 of 10 blocks rarely coincide


def _items(tok, n=4):
    return tokenize_sft(load_examples("arith", "train", limit=n), tok, 512).items


def _snapshot(model):
    return [{n: p.detach().clone() for n, p in blk.named_parameters()} for blk in get_layout(model).blocks]


def _changed(before, after):
    return [i for i, (a, b) in enumerate(zip(before, after)) if any(not torch.equal(a[n], b[n]) for n in a)]


@pytest.mark.parametrize("ends", [False, True], ids=["blocks-only", "with-ends"])
def test_a_step_updates_exactly_the_active_blocks_and_backward_stops_at_the_lowest(tiny, ends):
    model, tok = tiny("llama-tiny")
    spec = "lisa:2/2" + ("" if ends else ":blocks")
    pm = prepare_model(model, MidBlockConfig(method="midblock-full", band=spec), seed=1)
    sch = pm.midblock_plan.schedule
    lay = get_layout(pm)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    visited: set[int] = set()
    for i, blk in enumerate(lay.blocks):

        def fwd(_m, _a, out, i=i):
            h = out[0] if isinstance(out, tuple) else out
            if h.requires_grad:
                h.register_hook(lambda g, i=i: visited.add(i))

        blk.register_forward_hook(fwd)
    batch = collate(_items(tok), tok.pad_token_id)
    emb = lay.embedding.weight.detach().clone()
    for step in range(6):
        active = sch.begin_step(pm, step)
        before = _snapshot(pm)
        visited.clear()
        loss, _ = causal_lm_loss(pm, batch, True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sch.end_step(pm)
        # weights: the active blocks moved, every other block (Adam state or not, weight decay on) did not
        assert _changed(before, _snapshot(pm)) == active
        # backward calls: from the lowest active block up, or every block when the embeddings train
        assert visited == set(range(0 if ends else active[0], 6)), (step, active)
        assert sch.backward_depth(step) == 6 - (0 if ends else active[0])
    assert [s["step"] for s in sch.switches] == [0, 2, 4]
    assert torch.equal(emb, lay.embedding.weight) != ends  # the embeddings train only without ':blocks'
    assert all(p.requires_grad for blk in lay.blocks for p in blk.parameters())  # widened between steps


def test_midblock_train_switches_logs_and_leaves_never_active_blocks_untouched(tmp_path, tiny):
    from safetensors.torch import load_file

    from midblock.tuning.train import TrainConfig, train

    cfg = TrainConfig(
        model="random:llama-tiny",
        task="arith",
        out=str(tmp_path / "run"),
        steps=4,
        batch_size=2,
        train_rows=16,
        eval_loss_items=2,
        lr=1e-2,
        seed=1,  # draws blocks 4 then 3: the backward never reaches blocks 0-2
        progress=False,
        tuning=MidBlockConfig(method="midblock-full", band="lisa:1/2:blocks"),
    )
    res = train(cfg)
    assert res.method == "midblock-full" and res.selection["form"] == "full"
    sch = LisaSchedule(1, 2, 6, seed=1, train_ends=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["active_blocks"] for r in log] == [sch.active(s) for s in range(4)]
    assert [r["backward_depth"] for r in log] == [sch.backward_depth(s) for s in range(4)]
    assert [s["step"] for s in res.selection["lisa"]["switches"]] == [0, 2]
    assert res.backward_depth == max(sch.backward_depth(s) for s in range(4)) == 3  # the deepest step's, not 6
    ever = {b for s in range(4) for b in sch.active(s)}
    base, _ = tiny("llama-tiny")
    delta = load_file(str(tmp_path / "run" / "delta.safetensors"))
    base_p = dict(base.named_parameters())
    lay = get_layout(base)
    moved = {
        int(k.split(f"{lay.blocks_path}.")[1].split(".")[0]) for k, v in delta.items() if not torch.equal(v, base_p[k])
    }
    assert moved == ever
    assert not any(k.startswith("model.embed_tokens") for k in delta)  # ':blocks': embeddings frozen


def test_bad_specs_and_too_many_blocks_are_one_line_errors(tiny):
    for arg in ["", "2", "0/5", "2/0", "2/5:head", "a/b"]:
        with pytest.raises(MidblockError, match="lisa"):
            Lisa().parse(arg)
    model, _ = tiny("llama-tiny")
    with pytest.raises(MidblockError, match="the model has 6"):
        prepare_model(model, MidBlockConfig(method="midblock-full", band="lisa:7/2"))


@pytest.mark.parametrize(
    "tuning",
    [MidBlockConfig(method="midblock-full", band="lisa:2/3:blocks"), MidBlockConfig(band="lisa:2/3", rank=2)],
    ids=["full", "lora"],
)
def test_a_resumed_lisa_run_draws_the_same_sets_and_ends_with_the_same_weights(tmp_path, tuning):
    """Stopped inside the first period and resumed: the same active sets, and weights (the full form's delta,
    the LoRA form's adapters) bit-equal to an uninterrupted run's, the second period's draw included."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from midblock.tuning.train import TrainConfig, train

    cfg = TrainConfig(
        model="random:llama-tiny",
        task="arith",
        out=str(tmp_path / "straight"),
        steps=4,
        batch_size=2,
        train_rows=8,
        eval_loss_items=0,
        lr=1e-2,
        seed=2,
        progress=False,
        tuning=tuning,
    )
    train(cfg)
    cut = replace(cfg, out=str(tmp_path / "cut"))
    assert train(cut, on_step=lambda step, loss: step == 2).stopped  # stopped inside the first period
    res = train(replace(cut, resume=True))
    assert not res.stopped and res.steps == 4
    name = "delta.safetensors" if tuning.method == "midblock-full" else "adapter_model.safetensors"
    a = load_file(str(next((tmp_path / "straight").rglob(name))))
    b = load_file(str(next((tmp_path / "cut").rglob(name))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert [r["active_blocks"] for r in log] == [LisaSchedule(2, 3, 6, seed=2).active(s) for s in range(4)]
