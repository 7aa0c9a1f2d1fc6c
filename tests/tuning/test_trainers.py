"""Mid-Block inside the real trainers: transformers' Trainer always, TRL's SFTTrainer when installed.

With the trainer's own gradient checkpointing on and off: no block below the band gets a backward call
(tensor hooks on every block's output), the first step's loss equals midblock's own loop on the same batch,
and the activations a step keeps (bytes saved for the backward, counted with ``saved_tensors_hooks``; exact,
unlike RSS) are no more than the same trainer's all-block LoRA with checkpointing.
"""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

import pytest
import torch

from midblock.data import collate, load_examples, tokenize_sft
from midblock.models.introspect import get_layout
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.loss import causal_lm_loss
from midblock.tuning.prepare import check_truncated_backward, prepare_model

REPO = Path(__file__).resolve().parents[2]
BAND = "2-3"  # llama-tiny has 6 blocks: 0 and 1 lie below the band


def _trl():
    try:
        import trl  # noqa: F401
    except ImportError:
        pytest.skip("TRL is not installed (pip install 'midblock[trl]'); the TRL path is untested here")


class _Probe:
    """Records, per training step, the blocks whose output gets a gradient and the bytes saved for backward."""

    def __init__(self, model):
        self.visited: set[int] = set()
        self.saved: list[int] = []
        self.losses: list[float] = []
        self.batches: list[dict] = []
        for i, blk in enumerate(get_layout(model).blocks):

            def fwd(_m, _inp, out, i=i):
                h = out[0] if isinstance(out, tuple) else out
                if h.requires_grad:
                    h.register_hook(lambda g, i=i: self.visited.add(i))

            blk.register_forward_hook(fwd)

    def compute_loss(self, call, inputs):
        self.batches.append({k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)})
        seen: dict[int, int] = {}

        def pack(t):
            # unique storages: a tensor saved by several ops is held once
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = call()
        self.saved.append(sum(seen.values()))
        self.losses.append(float(loss.detach()))
        return loss


def _probed(cls):
    class Probed(cls):
        probe: _Probe

        def compute_loss(self, model, inputs, *a, **k):
            return self.probe.compute_loss(lambda: super(Probed, self).compute_loss(model, inputs, *a, **k), inputs)

    return Probed


def _items(tok, n=8):
    return tokenize_sft(load_examples("arith", "train", limit=n), tok, 256).items


def _hf_trainer(model, tok, tmp_path, ckpt, callbacks=(), steps=2):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=steps,
        gradient_checkpointing=ckpt,
        remove_unused_columns=False,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    tr = _probed(Trainer)(
        model=model,
        args=args,
        train_dataset=_items(tok),
        data_collator=lambda b: collate(b, tok.pad_token_id),
        callbacks=list(callbacks),
    )
    tr.probe = _Probe(model)
    return tr


def _trl_trainer(model, tok, tmp_path, ckpt, callbacks=(), steps=2, peft_config=None):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": e.prompt, "completion": e.completion} for e in load_examples("arith", "train", limit=8)]
    args = SFTConfig(
        str(tmp_path / "out"),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=steps,
        max_length=256,
        gradient_checkpointing=ckpt,
        bf16=False,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    tr = _probed(SFTTrainer)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    tr.probe = _Probe(tr.model)
    return tr


def _fresh_loss(tiny, batch):
    """midblock's own loop on the same batch: a freshly prepared model, the fused labelled-positions head."""
    model, _ = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band=BAND, rank=4))
    pm.train()
    b = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        return float(causal_lm_loss(pm, b, labelled_head=True)[0])


# --------------------------------------------------------------------------- transformers' Trainer


@pytest.mark.parametrize("ckpt", [True, False], ids=["ckpt", "no-ckpt"])
def test_trainer_keeps_truncation_and_loss(tiny, tmp_path, ckpt):
    from midblock import MidBlockCallback

    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band=BAND, rank=4))
    cb = MidBlockCallback()
    tr = _hf_trainer(pm, tok, tmp_path, ckpt, [cb])
    tr.train()
    assert tr.probe.visited == {2, 3, 4, 5}  # blocks 0 and 1 never get a backward call
    rep = check_truncated_backward(pm)  # raises on input-grad hooks or checkpointing below the band
    assert rep["checkpointed_blocks"] == ([2, 3, 4, 5] if ckpt else [])
    assert cb.report["labelled_head"] and cb.report["backward_depth"] == 4
    want = _fresh_loss(tiny, tr.probe.batches[0])
    assert tr.probe.losses[0] == pytest.approx(want, rel=1e-5)


def test_trainer_without_midblock_visits_every_block(tiny, tmp_path):
    """The peer set-up (PEFT layers_to_transform + Trainer checkpointing) back-propagates every block: the
    hooks above can see a violation."""
    from peft import LoraConfig, get_peft_model

    model, tok = tiny("llama-tiny")
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[2, 3], task_type="CAUSAL_LM")
    tr = _hf_trainer(get_peft_model(model, cfg), tok, tmp_path, True, steps=1)
    tr.train()
    assert tr.probe.visited == set(range(6))


def test_trainer_band_keeps_less_than_all_block_lora(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    from midblock import MidBlockCallback

    model, tok = tiny("llama-tiny")
    peer = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    t_lora = _hf_trainer(peer, tok, tmp_path / "lora", True, steps=1)
    t_lora.train()
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band=BAND, budget_baseline_rank=8))
    t_band = _hf_trainer(pm, tok, tmp_path / "band", True, [MidBlockCallback()], steps=1)
    t_band.train()
    assert t_lora.probe.visited == set(range(6)) and t_band.probe.visited == {2, 3, 4, 5}
    assert 0 < t_band.probe.saved[0] <= t_lora.probe.saved[0]


def test_labelled_head_same_loss_and_grads_as_full_logits(tiny):
    """The trainer-path head gives the model's own loss and the same LoRA gradients (with num_items_in_batch)."""
    from midblock.tuning.trainers import use_labelled_head

    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band=BAND, rank=4))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    pm.train()
    batch = collate(_items(tok, 4), tok.pad_token_id)

    def run(n_items=None):
        pm.zero_grad(set_to_none=True)
        kw = {} if n_items is None else {"num_items_in_batch": n_items}
        out = pm(**batch, use_cache=False, **kw)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}

    ref, g_ref = run()
    assert ref.logits is not None
    assert use_labelled_head(pm)
    got, g_got = run()
    assert got.logits is None
    assert float(got.loss) == pytest.approx(float(ref.loss), rel=1e-5)
    for n in g_ref:
        torch.testing.assert_close(g_got[n], g_ref[n], rtol=1e-4, atol=1e-7)
    n_lab = int((batch["labels"][:, 1:] != -100).sum())
    half, _ = run(2 * n_lab)  # a larger accumulated batch: the sum over this batch's tokens / its count
    assert float(half.loss) == pytest.approx(float(ref.loss) / 2, rel=1e-5)
    pm.eval()
    assert pm(**batch).logits is not None  # evaluation keeps the original forward


# --------------------------------------------------------------------------- TRL


@pytest.mark.parametrize("ckpt", [True, False], ids=["ckpt", "no-ckpt"])
def test_trl_prepared_model_keeps_truncation_and_loss(tiny, tmp_path, ckpt):
    _trl()
    from midblock import MidBlockCallback

    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band=BAND, rank=4))
    cb = MidBlockCallback()
    tr = _trl_trainer(pm, tok, tmp_path, ckpt, [cb])
    tr.train()
    assert tr.probe.visited == {2, 3, 4, 5}
    rep = check_truncated_backward(tr.model)
    assert rep["checkpointed_blocks"] == ([2, 3, 4, 5] if ckpt else [])
    assert cb.report["labelled_head"]
    want = _fresh_loss(tiny, tr.probe.batches[0])
    assert tr.probe.losses[0] == pytest.approx(want, rel=1e-5)


def test_trl_peft_config_route(tiny, tmp_path):
    """peft_config=band_lora_config(...): PEFT builds the band LoRA inside TRL, the callback does the rest."""
    _trl()
    from peft.tuners.lora import LoraLayer

    from midblock import MidBlockCallback, band_lora_config

    model, tok = tiny("llama-tiny")
    cfg = band_lora_config(model, band=BAND, budget_baseline_rank=8)
    tr = _trl_trainer(model, tok, tmp_path, True, [MidBlockCallback()], peft_config=cfg)
    tr.train()
    assert tr.probe.visited == {2, 3, 4, 5}
    ranks = {m.r["default"] for m in tr.model.modules() if isinstance(m, LoraLayer)}
    expected = prepare_model(tiny("llama-tiny")[0], MidBlockConfig(band=BAND, budget_baseline_rank=8)).midblock_plan
    assert ranks == set(expected.lora_ranks.values()) == {24}  # 6 blocks x r8 = 48 rank units over 2 blocks
    built = {n for n, m in tr.model.named_modules() if isinstance(m, LoraLayer)}
    assert {int(re.search(r"layers\.(\d+)\.", n).group(1)) for n in built} == {2, 3}
    assert cfg.lora_alpha == 48.0  # alpha/r = 2 as for all-block r8 / alpha 16


def test_trl_band_keeps_less_than_trl_lora_and_head_matches_trl(tiny, tmp_path):
    _trl()
    from peft import LoraConfig

    from midblock import MidBlockCallback

    model, tok = tiny("llama-tiny")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    t_lora = _trl_trainer(model, tok, tmp_path / "lora", True, steps=1, peft_config=lora)
    t_lora.train()
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band=BAND, budget_baseline_rank=8))
    t_band = _trl_trainer(pm, tok, tmp_path / "band", True, [MidBlockCallback()], steps=1)
    t_band.train()
    assert t_lora.probe.visited == set(range(6)) and t_band.probe.visited == {2, 3, 4, 5}
    assert 0 < t_band.probe.saved[0] <= t_lora.probe.saved[0]
    # TRL's own fused head (callback without the labelled head) gives the same first loss
    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band=BAND, budget_baseline_rank=8))
    t_trl_head = _trl_trainer(pm, tok, tmp_path / "trlhead", True, [MidBlockCallback(labelled_head=False)], steps=1)
    t_trl_head.train()
    assert t_band.probe.losses[0] == pytest.approx(t_trl_head.probe.losses[0], rel=1e-5)
    assert t_trl_head.probe.visited == {2, 3, 4, 5}
    # TRL's logged entropy (over the labelled positions) is TRL's own number, not NaN, under the labelled head
    ent = [next(r["entropy"] for r in t.state.log_history if "entropy" in r) for t in (t_band, t_trl_head)]
    assert ent[0] == ent[0] and ent[0] == pytest.approx(ent[1], rel=1e-4)


# --------------------------------------------------------------------------- README == tested code


def _readme_block(path: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- example: {re.escape(path)} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"README.md does not include {path}"
    return m.group(1)


@pytest.mark.parametrize("example", ["examples/trainer_hf.py", "examples/trainer_trl.py"])
def test_readme_trainer_examples_run_as_written(example, tmp_path, monkeypatch):
    if "trl" in example:
        _trl()
    code = (REPO / example).read_text()
    assert _readme_block(example) == code  # the README shows exactly the file this test runs
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIDBLOCK_EXAMPLE_MODEL", "random:llama-tiny")
    monkeypatch.setenv("MIDBLOCK_EXAMPLE_STEPS", "2")
    g = runpy.run_path(str(REPO / example), run_name="__main__")
    out = tmp_path / "runs" / ("trl-example" if "trl" in example else "trainer-example") / "adapter"
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    # the truncation held through train() with the trainer's checkpointing on: seg2-4/5 of 6 blocks = 1-3
    cb = next(c for c in g["trainer"].callback_handler.callbacks if type(c).__name__ == "MidBlockCallback")
    assert cb.report["first_trainable_block"] == 1 and cb.report["checkpointed_blocks"] == [1, 2, 3, 4, 5]
    assert check_truncated_backward(g["trainer"].model)["fixed"] == []


def test_gpu_check_script_parses_and_skips_without_cuda():
    """bench/gpu_check.sh: valid bash; without CUDA it measures nothing and says so (the GPU run is separate;
    `bash bench/gpu_check.sh --cpu-smoke` runs the whole script on a tiny model in ~30 s)."""
    import subprocess
    import sys

    script = REPO / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run the full check")
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0 and "no CUDA device" in r.stdout


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no-grad"])
def test_chunked_head_stats_are_per_row_ce_and_top1(grad):
    """The per-token fields the TRL answer is built from: each row's cross-entropy, whether it is top-1 and
    the entropy of its predicted distribution."""
    import torch.nn.functional as F

    from midblock.tuning.loss import chunked_head_ce

    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64, requires_grad=grad)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 50, (37,), generator=g)
    y[:5] = (h[:5].detach() @ w.T).argmax(-1)  # some rows whose target is the arg-max
    stats: dict = {}
    total = chunked_head_ce(h, w, None, y, chunk=8, reduction="sum", stats=stats)
    logits = h.detach() @ w.T
    # float32 log-softmax on the no-grad path: float32 rounding against the float64 reference
    ref = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(stats["row_loss"].double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(stats["is_top1"], logits.argmax(-1) == y) and stats["is_top1"][:5].all()
    assert float(total) == pytest.approx(float(ref.sum()), rel=1e-6)
    lp = logits.log_softmax(-1)
    torch.testing.assert_close(stats["entropy"].double(), -(lp.exp() * lp).sum(-1), rtol=1e-5, atol=1e-6)


def test_band_lora_config_bad_input_is_one_line(tiny):
    from midblock import MidblockError, band_lora_config

    model, _ = tiny("llama-tiny")
    with pytest.raises(MidblockError, match="unknown field 'bnad'"):
        band_lora_config(model, bnad="2-3")
    with pytest.raises(MidblockError, match="trains full parameters"):
        band_lora_config(model, method="midblock-full", band="2-3")
    with pytest.raises(MidblockError, match="selects|block"):
        band_lora_config(model, band="7-9")  # past the last of 6 blocks
    pm = prepare_model(model, MidBlockConfig(band=BAND, rank=4))
    with pytest.raises(MidblockError, match="already a PEFT model"):
        band_lora_config(pm, band=BAND)
