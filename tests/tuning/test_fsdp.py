"""FSDP: 2 CPU processes (gloo) under ``accelerate launch`` / ``torchrun`` against a single-process twin.

The twin sees the same global batch: FSDP runs 2 processes x batch 2, the twin batch 2 x grad_accum 2, so
both divide the same summed token loss by the same label count (the data order is a function of seed and
step only; see test_accumulation.py).
FSDP reduces gradients (and the clipping norm) in another order, so weights are compared with TOL:
measured max |difference| 3.7e-9 for ``midblock-full`` and 0.0 for LoRA (the mean of two gradients is
exact in float); Adam moves each weight by ~lr = 1e-3 per step, and a run that skipped the gradient
reduction (rank 0's half of the batch only) differs by more than 100 x TOL, which the first test asserts
so that the comparison can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from midblock.errors import MidblockError
from midblock.models import load_model
from midblock.models.introspect import block_of_param, get_layout
from midblock.tuning.train import train
from tests.conftest import REPO, run_cli
from tests.tuning.fsdp_worker import MODEL, config

TOL = 1e-6
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}


def _launch(cmd: list[str]) -> None:
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines()]


def _ids():
    return torch.tensor([[72, 101, 108, 108, 111, 32, 49, 43, 50, 61]])


@pytest.mark.slow  # two processes starting up: ~25 s each on 2 cores
def test_accelerate_launch_fsdp_midblock_full(tmp_path):
    """The example config + the CLI: band-only delta, rest bit-identical, equal to one process."""
    out = tmp_path / "fsdp"
    args = ["--model", MODEL, "--task", "arith", "--method", "midblock-full", "--band", "2-3", "--steps", "3"]
    args += ["--batch-size", "2", "--train-rows", "16", "--eval-loss-items", "4", "--max-length", "256", "--lr", "1e-3"]
    _launch(
        [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "examples" / "accelerate_fsdp.yaml")]
        + ["--no_python", "midblock", "train", *args, "--out", str(out), "--no-progress"]
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["fsdp"] is True and summary["world_size"] == 2 and summary["steps"] == 3
    assert summary["truncated_backward"]["first_trainable_block"] == 2
    assert json.loads((out / "train_config.json").read_text())["train_config"]["fsdp"] is True
    base, _ = load_model(MODEL)
    lay = get_layout(base)
    delta = load_file(str(out / "delta.safetensors"))
    assert set(delta) == {n for n, _ in base.named_parameters() if block_of_param(n, lay) in (2, 3)}
    trained, _ = load_model(str(out))
    tp = dict(trained.named_parameters())
    for n, p in base.named_parameters():
        assert torch.equal(tp[n], p) == (block_of_param(n, lay) not in (2, 3)), n
    # the single-process twin (same global batch) and rank 0's half alone
    kw = dict(method="midblock-full", steps=3, lr=1e-3, warmup_steps=0, fsdp=False)
    twin = train(config(tmp_path / "twin", grad_accum=2, **kw))
    half = train(config(tmp_path / "half", **kw))
    d_twin = load_file(str(Path(twin.run_dir) / "delta.safetensors"))
    d_half = load_file(str(Path(half.run_dir) / "delta.safetensors"))
    assert _max_diff(delta, d_twin) <= TOL
    assert _max_diff(delta, d_half) > 100 * TOL
    torch.testing.assert_close(_losses(out), _losses(Path(twin.run_dir)), rtol=1e-6, atol=0)
    assert abs(summary["eval_loss"] - twin.eval_loss) <= 1e-5


@pytest.mark.slow  # two processes starting up: ~25 s each on 2 cores
def test_torchrun_fsdp_lora_methods_and_resume(tmp_path):
    """midblock (LoRA on the band) and lora: loadable adapters equal to one process; --resume is exact."""
    _launch(
        [str(BIN / "python"), "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        + [str(REPO / "tests" / "tuning" / "fsdp_worker.py"), str(tmp_path)]
    )
    from peft import PeftModel

    mid, resumed, lora = tmp_path / "mid", tmp_path / "mid-resumed", tmp_path / "lora"
    for run in (mid, resumed, lora):
        s = json.loads((run / "train_summary.json").read_text())
        assert s["fsdp"] is True and s["world_size"] == 2 and (run / "COMPLETED").exists()

    def adapter(run):
        return load_file(str(Path(run) / "adapter" / "adapter_model.safetensors"))

    # resume after a stop at step 2 == uninterrupted, bit for bit (full optimizer state round trip)
    a, b = adapter(mid), adapter(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(x)["step"] for x in (resumed / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    # the adapter holds exactly the band's attention modules at rank 4, and equals the one-process twin
    base, _ = load_model(MODEL)
    lay = get_layout(base)
    assert {block_of_param(k, lay) for k in a} == {2, 3} and len(a) == 2 * len(lay.attn_linears) * 2
    assert all(4 in v.shape for v in a.values())
    twin = train(config(tmp_path / "twin", "midblock", grad_accum=2, fsdp=False))
    assert _max_diff(a, adapter(twin.run_dir)) <= TOL
    torch.testing.assert_close(_losses(mid), _losses(Path(twin.run_dir)), rtol=1e-6, atol=0)
    # loadable by PEFT, same logits as load_model(run dir), and training changed them
    reloaded = PeftModel.from_pretrained(load_model(MODEL)[0], str(mid / "adapter")).eval()
    via_run, _ = load_model(str(mid))
    with torch.no_grad():
        x, y, z = reloaded(_ids()).logits, via_run(_ids()).logits, base(_ids()).logits
    assert torch.equal(x, y) and not torch.allclose(x, z)
    # one checkpointed FSDP step: blocks below the band run once and build no autograd node; the band and
    # the blocks above are recomputed in backward; only the band's LoRA tensors get gradients
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["requires_grad"] == {"0": [False], "1": [False], **{str(b): [True] for b in (2, 3, 4, 5)}}
    assert probe["runs"] == {"0": 1, "1": 1, "2": 2, "3": 2, "4": 2, "5": 2}
    assert probe["grads"] and {block_of_param(n, lay) for n in probe["grads"]} == {2, 3}
    assert all("lora_" in n for n in probe["grads"])
    # all-block LoRA
    la = adapter(lora)
    assert {block_of_param(k, lay) for k in la} == set(range(lay.num_layers))
    lora_twin = train(config(tmp_path / "lora-twin", "lora", steps=2, grad_accum=2, fsdp=False))
    assert _max_diff(la, adapter(lora_twin.run_dir)) <= TOL


def test_fsdp_without_processes_or_with_unsupported_options_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", "--model", MODEL, "--band", "2-3", "--steps", "1", "--out", str(out)]
    rc, _, err = run_cli(*argv, "--fsdp")
    assert rc == 2 and "FSDP needs several processes" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    rc, _, err = run_cli(*argv)
    assert rc == 2 and "fsdp_activation_checkpointing" in err and "--grad-checkpointing" in err, err
    assert not out.exists()


def test_resume_must_keep_the_sharding_mode(tmp_path):
    """FSDP checkpoints hold full optimizer state keyed by name, DDP/single ones by index: no mixing."""
    part = train(config(tmp_path / "run", "midblock", fsdp=False), on_step=lambda step, loss: step == 1)
    assert part.stopped
    with pytest.raises(MidblockError, match="different fsdp"):
        train(config(tmp_path / "run", "midblock", fsdp=True, resume=True))
