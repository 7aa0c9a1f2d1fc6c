"""Dev splits for data that has none: carved from train by content, disjoint from what training reads."""

import json
import random

import pytest

from midblock.data.tasks import carve_dev, check_dev_disjoint, load_rows
from midblock.errors import MidblockError
from midblock.experiments.grid import CompareConfig
from midblock.experiments.runner import compare
from midblock.fingerprint import rows_digest


def _rows(n):
    return [
        {"question": f"What is {i} plus {i % 7}?", "answer": f"{i} + {i % 7} = {i + i % 7}\n#### {i + i % 7}"}
        for i in range(n)
    ]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_carve_is_deterministic_disjoint_and_independent_of_row_order():
    rows = _rows(50)
    train, dev = carve_dev(rows, 10)
    assert len(dev) == 10 and len(train) == 40
    assert not {r["question"] for r in train} & {r["question"] for r in dev}
    assert [r for r in rows if r in dev] == dev  # dev keeps the file order
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(map(str, carve_dev(shuffled, 10)[1])) == sorted(map(str, dev))  # chosen by content
    # rows appended to the file later never move an old training row into dev
    grown_dev = carve_dev(_rows(80), 10)[1]
    assert [r for r in grown_dev if r in rows] == [r for r in dev if r in grown_dev]


def test_a_row_twice_in_the_file_is_one_dev_item_and_leaves_train_entirely():
    rows = _rows(20)
    _, dev = carve_dev(rows, 3)
    doubled = rows + [dev[0]]
    train2, dev2 = carve_dev(doubled, 3)
    assert dev2 == dev and dev[0] not in train2 and len(train2) == 17


def test_jsonl_task_dev_split_and_errors(tmp_path):
    data = _write(tmp_path / "mine.jsonl", _rows(30))
    dev = load_rows("jsonl", "dev", data, dev_size=5)
    train = load_rows("jsonl", "train", data, dev_size=5)
    assert len(dev) == 5 and len(train) == 25 and not [r for r in dev if r in train]
    assert load_rows("jsonl", "train", data) == _rows(30)  # no dev_size: training reads every row
    with pytest.raises(MidblockError, match="no dev split of its own"):
        load_rows("jsonl", "dev", data)
    with pytest.raises(MidblockError, match="would leave no training rows"):
        load_rows("jsonl", "dev", data, dev_size=30)
    # a directory: the dev split is carved from its train.jsonl; its test.jsonl is untouched
    d = tmp_path / "dir"
    d.mkdir()
    _write(d / "train.jsonl", _rows(30))
    _write(d / "test.jsonl", _rows(40)[30:])
    assert load_rows("jsonl", "dev", str(d), dev_size=5) == dev
    assert load_rows("jsonl", "test", str(d), dev_size=5) == _rows(40)[30:]


def test_gsm8k_local_copy_dev_split(gsm8k_path):
    full = load_rows("gsm8k", "train", str(gsm8k_path))
    dev = load_rows("gsm8k", "dev", str(gsm8k_path), dev_size=200)
    train = load_rows("gsm8k", "train", str(gsm8k_path), dev_size=200)
    assert len(dev) == 200 and len(train) == len(full) - 200
    assert not {r["question"] for r in dev} & {r["question"] for r in train}
    check_dev_disjoint(train, dev)  # the runner's own check agrees
    assert load_rows("gsm8k", "dev", str(gsm8k_path), dev_size=200) == dev  # deterministic
    assert load_rows("gsm8k", "test", str(gsm8k_path), dev_size=200) == load_rows("gsm8k", "test", str(gsm8k_path))


def test_the_disjointness_check_refuses_a_leak():
    rows = _rows(10)
    with pytest.raises(MidblockError, match="1 of 2 dev items appear in the training data"):
        check_dev_disjoint(rows, [rows[3], {"question": "Something else entirely?", "answer": "#### 1"}])


def _gsm_dir(path, n=24):
    path.mkdir()
    _write(path / "train.jsonl", _rows(n))
    _write(path / "test.jsonl", _rows(n + 6)[n:])
    return str(path)


GRID = {
    "model": "random:llama-tiny",
    "protocol": "original",
    "eval_items": 2,
    "max_new_tokens": 2,
    "seeds": [0],
    "train": {"steps": 1, "batch_size": 2, "max_length": 256, "eval_loss_items": 0},
    "methods": [{"name": "lora", "method": "lora", "rank": 2}],
    "lr_search": {"lrs": [1e-2, 1e-3], "split": "dev", "eval_items": 3},
}


@pytest.mark.parametrize("task", ["gsm8k", "jsonl"])
def test_a_grid_searches_rates_on_a_dev_split_carved_from_train(tmp_path, task):
    data = _gsm_dir(tmp_path / "d")
    grid = GRID | {"task": task, "data": data, "eval_task": "gsm8k", "eval_data": data, "dev_size": 4}
    cc = CompareConfig.from_dict(grid)
    assert cc.dev_size == 4 and cc.train_config(cc.cells()[0], tmp_path / "x").dev_size == 4
    res = compare(grid, tmp_path / "c", progress=False)
    assert [r["n"] for r in res["lr_search"]] == [3, 3]
    dev = load_rows("gsm8k", "dev", data, dev_size=4)
    scored = set()
    for f in (tmp_path / "c").glob("cells/*/eval-*/eval/items.jsonl"):
        scored |= {json.loads(line)["prompt"] for line in f.read_text().splitlines()}
    assert {f"Question: {r['question']}\nAnswer:" for r in dev[:3]} <= scored  # the search scored dev items ...
    stored = [json.loads(p.read_text()) for p in (tmp_path / "c" / "cells").glob("*/fingerprint.json")]
    assert stored and all(fp["training"]["dev_size"] == 4 for fp in stored)
    # ... which no cell trained on: the training rows' digest is that of train minus dev
    held_out = rows_digest(load_rows(task, "train", data, dev_size=4))
    assert all(fp["data"] == held_out for fp in stored)


def test_a_grid_whose_training_data_holds_dev_items_is_refused(tmp_path):
    data = _gsm_dir(tmp_path / "d")
    # the user's training file quotes every question of the evaluation's train split, dev items included
    notes = [{"text": f"Notes. {r['question']} Worked out: {r['answer']}"} for r in _rows(24)]
    mine = _write(tmp_path / "mine.jsonl", notes)
    grid = GRID | {"task": "jsonl", "data": mine, "eval_task": "gsm8k", "eval_data": data, "dev_size": 4}
    with pytest.raises(MidblockError, match="4 of 4 gsm8k dev items appear in the training data"):
        compare(grid, tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "cells").exists()  # refused before any training


def test_dev_size_defaults_and_validation():
    base = GRID | {"task": "gsm8k", "eval_task": "gsm8k"}
    assert CompareConfig.from_dict(base).dev_size == 200  # searching on gsm8k: a dev split by default
    assert CompareConfig.from_dict(base | {"lr_search": None}).dev_size == 0
    assert CompareConfig.from_dict(GRID | {"task": "arith"}).train_dev_size == 0  # arith has its own
    with pytest.raises(MidblockError, match="needs a dev split"):
        CompareConfig.from_dict(base | {"dev_size": 0})
    with pytest.raises(MidblockError, match="dev_size"):
        CompareConfig.from_dict(base | {"dev_size": -1})


def test_eval_scores_a_gsm8k_dev_split_only_when_its_size_is_given(tmp_path):
    from midblock.evaluation.config import EvalConfig
    from midblock.evaluation.evaluate import load_test_items
    from tests.conftest import run_cli

    data = _gsm_dir(tmp_path / "d")
    with pytest.raises(MidblockError, match="no dev split of its own"):
        EvalConfig(task="gsm8k", split="dev", data=data)
    items = load_test_items(EvalConfig(task="gsm8k", split="dev", data=data, dev_size=4))
    assert [it["question"] for it in items] == [r["question"] for r in load_rows("gsm8k", "dev", data, dev_size=4)]
    rc, out, err = run_cli("eval", "--help")
    assert rc == 0 and "--dev-size" in out
