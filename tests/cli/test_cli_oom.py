"""Out of memory in a command: advice with a smaller batch (exit 2, one line), or --auto-batch halving."""

import pytest
import torch

import midblock.evaluation.evaluate as ev  # what `midblock eval` calls
from tests.conftest import run_cli


def _real_oom() -> None:
    """What torch itself raises: a CPU allocation larger than any machine (nothing is actually allocated)."""
    torch.empty(2**60, dtype=torch.uint8)


def _cuda_oom() -> None:
    """torch's own CUDA out-of-memory type, with a message that carries none of the usual words."""
    raise torch.OutOfMemoryError("allocation failed")


def _fake_evaluate(limit_bs, calls, fail=_real_oom):
    def fake(model, cfg, **kw):
        calls.append(cfg.batch_size)
        if cfg.batch_size > limit_bs:
            fail()
        return {"n": 1, "primary": ["original"], "scores": {}, "items": []}

    return fake


@pytest.mark.parametrize("fail", [_real_oom, _cuda_oom], ids=["cpu-alloc", "torch.OutOfMemoryError"])
def test_eval_oom_gives_batch_advice(monkeypatch, fail):
    calls = []
    monkeypatch.setattr(ev, "evaluate", _fake_evaluate(2, calls, fail))
    rc, _, err = run_cli("eval", "--model", "random:llama-tiny", "--task", "arith", "--batch-size", "16")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "out of memory" in err and "--batch-size 8" in err and calls == [16]


def test_eval_auto_batch_halves(monkeypatch):
    calls = []
    monkeypatch.setattr(ev, "evaluate", _fake_evaluate(2, calls))
    monkeypatch.setattr(ev, "format_summary", lambda s: "ok")
    rc, out, err = run_cli(
        "eval", "--model", "random:llama-tiny", "--task", "arith", "--batch-size", "16", "--auto-batch"
    )
    assert rc == 0, err
    assert calls == [16, 8, 4, 2]
