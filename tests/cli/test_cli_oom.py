"""Out of memory in a command: advice with a smaller batch (exit 2, one line), or --auto-batch halving."""

import midblock.evaluation.evaluate as ev  # what `midblock eval` calls
from tests.conftest import run_cli


def _fake_evaluate(limit_bs, calls):
    def fake(model, cfg, **kw):
        calls.append(cfg.batch_size)
        if cfg.batch_size > limit_bs:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"n": 1, "primary": ["original"], "scores": {}, "items": []}

    return fake


def test_eval_oom_gives_batch_advice(monkeypatch):
    calls = []
    monkeypatch.setattr(ev, "evaluate", _fake_evaluate(2, calls))
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
