"""--resume continues a run only from the same base weights and the same training rows, not just the same
names: a data file edited in place, or a model directory whose weights changed, is refused in one line."""

import json

import pytest
import torch

from midblock.errors import MidblockError
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.train import TrainConfig, train


def _data(path, answer=2):
    rows = [{"prompt": f"{i} + 1 =", "completion": f" {i + 1}"} for i in range(8)]
    rows[1]["completion"] = f" {answer}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(run, data, model="random:llama-tiny", **kw):
    return TrainConfig(
        model=model, task="jsonl", data=data, out=str(run), steps=2, batch_size=2, eval_loss_items=0,
        tuning=MidBlockConfig(method="lora", rank=2), progress=False, **kw,
    )  # fmt: skip


def test_resume_with_edited_training_data_is_refused(tmp_path):
    data = _data(tmp_path / "d.jsonl")
    train(_cfg(tmp_path / "run", data), on_step=lambda step, loss: step >= 1)  # stopped after step 1
    _data(tmp_path / "d.jsonl", answer=3)  # the same file name, other rows
    with pytest.raises(MidblockError, match="trained from other training data"):
        train(_cfg(tmp_path / "run", data, resume=True))


def test_resume_with_changed_base_weights_is_refused(tmp_path, tiny):
    base, tok = tiny()
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = _data(tmp_path / "d.jsonl")
    train(_cfg(tmp_path / "run", data, model=str(tmp_path / "base")), on_step=lambda step, loss: step >= 1)
    other, _ = tiny(seed=5)
    other.save_pretrained(tmp_path / "base")  # the same directory, other weights
    with pytest.raises(MidblockError, match="trained from other base model files"):
        train(_cfg(tmp_path / "run", data, model=str(tmp_path / "base"), resume=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, auto follows the GPU, not the CPU's flags")
def test_resume_where_auto_means_another_precision_is_refused(tmp_path, monkeypatch):
    """`auto` resolved to fp32 when the run started; on a machine where it means bf16 the run must not go on."""
    data = _data(tmp_path / "d.jsonl")
    monkeypatch.setenv("MIDBLOCK_CPU_BF16", "0")
    train(_cfg(tmp_path / "run", data), on_step=lambda step, loss: step >= 1)
    monkeypatch.setenv("MIDBLOCK_CPU_BF16", "1")
    with pytest.raises(MidblockError, match="trained from other precision"):
        train(_cfg(tmp_path / "run", data, resume=True))
