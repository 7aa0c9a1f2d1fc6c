import json

import pytest

from midblock.data import IGNORE_INDEX, Example, collate, load_examples, read_jsonl, tokenize_sft
from midblock.errors import MidblockError


def _write(p, lines):
    p.write_text("\n".join(lines) + "\n")
    return p


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = _write(tmp_path / "d.jsonl", ['{"prompt": "a", "completion": "b"}', "{not json"])
    with pytest.raises(MidblockError, match=r"d.jsonl:2: invalid JSON"):
        read_jsonl(f)
    f = _write(tmp_path / "e.jsonl", ['{"question": "a"}'])
    with pytest.raises(MidblockError, match=r"e.jsonl:1: missing key 'answer'"):
        read_jsonl(f, required=("question", "answer"))
    f = _write(tmp_path / "l.jsonl", ["[1, 2]"])
    with pytest.raises(MidblockError, match="expected a JSON object"):
        read_jsonl(f)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(MidblockError, match="empty"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_generic_jsonl_prompt_completion_and_chat(tmp_path, tokenizer):
    rows = [
        {"prompt": "Q: 1+1?\nA:", "completion": " 2"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    f = _write(tmp_path / "mix.jsonl", [json.dumps(r) for r in rows])
    ex = load_examples("jsonl", data=str(f))
    assert ex[0].prompt == "Q: 1+1?\nA:" and ex[1].messages is not None
    ts = tokenize_sft(ex, tokenizer, max_length=128)
    chat = ts.items[1]
    n_prompt = sum(1 for x in chat["labels"] if x == IGNORE_INDEX)
    prompt_text = tokenizer.decode(chat["input_ids"][:n_prompt])
    assert prompt_text.endswith("<|im_start|>assistant\n") and "hi" in prompt_text


def test_completion_only_labels_and_eos(tokenizer):
    ex = Example(prompt="Question: x\nAnswer:", completion=" 42")
    t = tokenize_sft([ex], tokenizer, max_length=64).items[0]
    n_p = len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])
    assert t["labels"][:n_p] == [IGNORE_INDEX] * n_p
    assert t["labels"][n_p:] == t["input_ids"][n_p:]
    assert t["input_ids"][-1] == tokenizer.eos_token_id
    whole = tokenize_sft([ex], tokenizer, max_length=64, completion_only=False).items[0]
    assert whole["labels"] == whole["input_ids"]


def test_overlong_items_are_reported_not_truncated(tokenizer):
    exs = [Example("p", " short"), Example("p", " " + "long " * 50), Example("p", " ok")]
    ts = tokenize_sft(exs, tokenizer, max_length=40)
    assert len(ts.items) == 2 and ts.overlong == [1] and ts.report()["dropped_overlong"] == 1
    with pytest.raises(MidblockError, match="example 1 has"):
        tokenize_sft(exs, tokenizer, max_length=40, on_overlong="error")


def test_collate_pads_both_sides(tokenizer):
    items = tokenize_sft([Example("ab", " c"), Example("abcdef", " ghij")], tokenizer, 64).items
    for side in ("left", "right"):
        b = collate(items, pad_id=tokenizer.pad_token_id, padding_side=side)
        assert b["attention_mask"].sum(1).tolist() == [len(i["input_ids"]) for i in items]
        row0 = b["input_ids"][0][b["attention_mask"][0].bool()].tolist()
        assert row0 == items[0]["input_ids"]
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_bos_follows_the_tokenizers_own_encoding(tokenizer):
    """Gemma's tokenizer puts BOS first by default (without an ``add_bos_token`` flag once converted from a
    GGUF): prompts get it once, as the tokenizer's default encoding (lm-eval's, TRL's) has it; the byte
    tokenizer (SmolLM2-like) adds nothing, and a prompt that already starts with BOS gets no second one."""
    from midblock.data.tasks import adds_bos, encode_prompt, tokenize_example
    from midblock.models.presets import preset_tokenizer

    gemma = preset_tokenizer("gemma3-tiny")
    assert not getattr(gemma, "add_bos_token", False) and adds_bos(gemma) and not adds_bos(tokenizer)
    for tok in (gemma, tokenizer):
        text = "Question: 1+2?\nAnswer:"
        assert encode_prompt(tok, text) == tok(text)["input_ids"]  # the default encoding, BOS or not
    bos = gemma.bos_token_id
    assert encode_prompt(gemma, "x")[:2] == [bos, gemma("x", add_special_tokens=False)["input_ids"][0]]
    assert encode_prompt(gemma, gemma.bos_token + "x") == encode_prompt(gemma, "x")
    t = tokenize_example(Example("2+2=", "4"), gemma)
    assert t["input_ids"].count(bos) == 1 and t["input_ids"][0] == bos and t["labels"][0] == IGNORE_INDEX
