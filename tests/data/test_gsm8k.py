import pytest

from midblock.data import gold_answer, load_examples, load_gsm8k
from midblock.errors import MidblockError


def test_local_copy_sizes_and_format(gsm8k_path):
    test = load_gsm8k("test", str(gsm8k_path))
    train = load_gsm8k("train", str(gsm8k_path))
    assert (len(train), len(test)) == (7473, 1319)
    assert all("####" in r["answer"] for r in test)
    assert gold_answer(test[0]["answer"]) == "18"  # Janet's ducks


def test_single_jsonl_file_and_env_var(gsm8k_path, monkeypatch):
    rows = load_gsm8k("test", str(gsm8k_path / "test.jsonl"))
    assert len(rows) == 1319
    monkeypatch.setenv("MIDBLOCK_GSM8K", str(gsm8k_path))
    ex = load_examples("gsm8k", "test", limit=2, offset=1)
    assert len(ex) == 2 and ex[0].prompt.startswith("Question: ") and ex[0].prompt.endswith("\nAnswer:")
    assert ex[0].completion.startswith(" ") and ex[0].answer == gold_answer(rows[1]["answer"])


def test_offline_without_local_copy_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("MIDBLOCK_GSM8K", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MidblockError, match="MIDBLOCK_GSM8K"):
        load_gsm8k("test")


def test_gold_answer_strips_commas():
    assert gold_answer("so\n#### 1,234") == "1234"
    with pytest.raises(MidblockError):
        gold_answer("no marker")
