"""A resumed evaluation never reuses answers made under other settings: one test per setting."""

import json

import pytest
from safetensors.torch import load_file, save_file

from midblock.errors import MidblockError
from midblock.evaluation.evaluate import EvalConfig, evaluate
from midblock.io import read_jsonl_tolerant
from tests.conftest import run_cli

BASE = dict(task="arith", protocol="original", eval_items=2, max_new_tokens=4, batch_size=2)


def _eval(out, model="random:llama-tiny", **kw):
    return evaluate(model, EvalConfig(**(BASE | kw)), out=out, progress=False)


def test_another_model_into_the_same_out_is_refused(tmp_path):
    """The finding: llama's answers were reported as qwen2's, exit 0, generated_now 0."""
    out = tmp_path / "e"
    _eval(out)
    with pytest.raises(MidblockError, match=r"different model\.weights"):
        _eval(out, model="random:qwen2-tiny")
    rc, _, err = run_cli(
        "eval", "--model", "random:qwen2-tiny", "--task", "arith", "--protocol", "original", "--eval-items", "2",
        "--max-new-tokens", "4", "--out", str(out),
    )  # fmt: skip
    assert rc == 2 and "model.weights" in err and err.strip().count("\n") == 0
    assert len(read_jsonl_tolerant(out / "items.jsonl")) == 2  # nothing was added or removed


def test_another_max_new_tokens_is_refused(tmp_path):
    _eval(tmp_path / "e")
    with pytest.raises(MidblockError, match=r"settings\.max_new_tokens \(4 != 8\)"):
        _eval(tmp_path / "e", max_new_tokens=8)


def test_another_fewshot_seed_is_refused(tmp_path):
    _eval(tmp_path / "e", protocol="lm-eval", eval_items=1)
    with pytest.raises(MidblockError, match=r"settings\.seed"):
        _eval(tmp_path / "e", protocol="lm-eval", eval_items=1, seed=7)


def test_a_changed_adapter_file_is_refused(tmp_path):
    from midblock.tuning import MidBlockConfig
    from midblock.tuning.train import TrainConfig, train

    run = tmp_path / "run"
    tc = TrainConfig(
        model="random:llama-tiny", task="arith", out=str(run), steps=1, batch_size=2, train_rows=4, eval_loss_items=0,
        tuning=MidBlockConfig(method="lora", rank=2), progress=False,
    )  # fmt: skip
    train(tc)
    _eval(tmp_path / "e", model=str(run))
    f = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(f)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 0.5  # the same path, other weights
    save_file(tensors, f)
    with pytest.raises(MidblockError, match=r"model\.weights"):
        _eval(tmp_path / "e", model=str(run))


def test_changed_test_data_is_refused_and_a_longer_limit_only_adds_items(tmp_path):
    data = tmp_path / "gsm"
    data.mkdir()
    rows = [{"question": f"What is {i} plus 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(4)]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(task="gsm8k", data=str(data))
    _eval(tmp_path / "e", **kw)
    more = _eval(tmp_path / "e", **kw | {"eval_items": 3})
    assert more["generated_now"] == 1 and more["n"] == 3  # the same evaluation, extended
    rows[1]["answer"] = "1 + 1 = 3\n#### 3"  # a corrected gold answer: the stored score is stale
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MidblockError, match="another test item"):
        _eval(tmp_path / "e", **kw)


def test_results_without_a_fingerprint_are_not_reused(tmp_path):
    out = tmp_path / "e"
    _eval(out)
    (out / "fingerprint.json").unlink()  # as written by an older midblock
    with pytest.raises(MidblockError, match="without a fingerprint"):
        _eval(out)
