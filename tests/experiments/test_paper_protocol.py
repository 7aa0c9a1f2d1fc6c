"""``--preset paper-protocol``: the paper's training protocol, end to end on a tiny model (sizes shrunk)."""

import json
import math
from pathlib import Path

from midblock.data.tasks import IGNORE_INDEX, Example, tokenize_sft
from midblock.experiments.grid import CompareConfig, preset
from midblock.experiments.runner import compare
from tests.conftest import run_cli


def _gsm_dir(path, n=12):
    path.mkdir()
    rows = [
        {
            "question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
            "answer": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}",
        }
        for i in range(n + 4)
    ]
    (path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    (path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n:]))
    return str(path)


def test_the_preset_states_the_papers_protocol():
    cc = CompareConfig.from_dict(preset("paper-protocol"))
    t = cc.train
    assert (t["train_rows"], t["epochs"], t["batch_size"], t["grad_accum"], t["lr"], t["warmup_steps"]) == (
        2000,
        1,
        32,
        1,
        1e-4,
        0,
    )
    assert (t["max_length"], t["overlong"], t["loss_on"]) == (128, "truncate", "all")
    assert cc.eval_items == 100 and cc.task == cc.eval_task == "gsm8k" and cc.lr_search is None
    assert len(cc.seeds) > 1  # the one-seed comparison, replayed once per seed
    for m in cc.methods:
        assert (m["alpha_policy"], m["dropout"], m["target_modules"]) == ("fixed", 0.05, ["attn"])
    assert [m.get("budget_baseline_rank") for m in cc.methods] == [None, 64]
    tc = cc.train_config(cc.cells()[1], "x")
    assert tc.tuning.alpha_for(64) == tc.tuning.alpha_for(113) == 128.0  # alpha fixed, whatever the rank


def test_paper_protocol_end_to_end_on_a_tiny_model(tmp_path):
    data = _gsm_dir(tmp_path / "d")
    grid = preset("paper-protocol")
    grid |= {
        "model": "random:llama-8l",
        "data": data,
        "eval_data": data,
        "eval_items": 2,
        "max_new_tokens": 4,
        "seeds": [0, 1],
        "train": grid["train"] | {"train_rows": 8, "batch_size": 4, "max_length": 40},
        "forgetting": grid["forgetting"] | {"limit": 2, "max_length": 32},
    }
    res = compare(grid, tmp_path / "pp", progress=False)
    per_seed = [r for r in res["rows"] if r["seed"] in (0, 1)]
    assert sorted({r["arm"] for r in per_seed}) == ["mid-seg2-4", "uniform-r64"] and len(per_seed) == 4
    units = {r["arm"]: r["rank_units"] for r in per_seed}
    assert units["uniform-r64"] == 8 * 64 and abs(units["mid-seg2-4"] - 512) <= 64  # matched in rank units
    for cell in res["cells"]:
        run = Path(cell["run_dir"])
        cfg = json.loads((run / "train_config.json").read_text())
        assert cfg["train_config"]["loss_on"] == "all" and cfg["data"]["truncated"] == 8  # every example cut at 40
        assert cell["train"]["steps"] == math.ceil(8 / 4)  # one epoch over the 8 examples
        assert cell["ppl"]["per_text"] and cell["lr"] == 1e-4
        adapter = json.loads(next(run.rglob("adapter_config.json")).read_text())
        assert adapter["lora_alpha"] == 128 and adapter["lora_dropout"] == 0.05
        assert {t.split(".")[-1] for t in adapter["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_whole_sequence_loss_and_truncation(tokenizer):
    ex = [Example(prompt="Question: what is two plus two?\nAnswer:", completion=" 2 + 2 = 4\n#### 4")]
    full = tokenize_sft(ex, tokenizer, max_length=512, completion_only=False)
    item = full.items[0]
    assert item["labels"] == item["input_ids"]  # every token is a target (the first is never predicted)
    cut = tokenize_sft(ex, tokenizer, max_length=20, completion_only=False, on_overlong="truncate")
    assert len(cut.items[0]["input_ids"]) == 20 and cut.report()["truncated"] == 1
    # completion-only labels cut down to nothing: the example is dropped, not trained on as all -100
    only = tokenize_sft(ex + ex, tokenizer, max_length=60, completion_only=True, on_overlong="truncate")
    assert len(only.items) == 2 and any(x != IGNORE_INDEX for x in only.items[0]["labels"])
    none_left = tokenize_sft([ex[0], Example("", "short")], tokenizer, 20, completion_only=True, on_overlong="truncate")
    assert none_left.overlong == [0] and len(none_left.items) == 1


def test_cli_preset_and_flags(tmp_path):
    rc, out, err = run_cli("compare", "--help")
    assert rc == 0 and "paper-protocol" in out
    rc, out, err = run_cli("train", "--help")
    assert rc == 0 and "--loss-on" in out and "--overlong" in out and "--dev-size" in out


def test_new_training_settings_are_validated(tmp_path):
    import pytest

    from midblock.errors import MidblockError
    from midblock.tuning.trainconfig import TrainConfig

    with pytest.raises(MidblockError, match="--loss-on"):
        TrainConfig(out=str(tmp_path), loss_on="prompt")
    with pytest.raises(MidblockError, match="--overlong"):
        TrainConfig(out=str(tmp_path), overlong="cut")
    with pytest.raises(MidblockError, match="--dev-size"):
        TrainConfig(out=str(tmp_path), dev_size=-1)
    rc, out, err = run_cli("train", "--out", str(tmp_path / "r"), "--loss-on", "prompt")
    assert rc == 2 and "invalid choice" in err
