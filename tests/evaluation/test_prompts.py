import pytest

from midblock.errors import MidblockError
from midblock.evaluation.prompts import chat_prompt, fewshot_prompt, sample_exemplars, zero_shot

TRAIN = [{"question": f"Q{i}?", "answer": f"Work {i}.\n#### {i}"} for i in range(40)]


def test_fewshot_prompt_exact_format():
    ex = TRAIN[:2]
    assert fewshot_prompt("How many?", ex) == (
        "Question: Q0?\nAnswer: Work 0.\n#### 0\n\n"
        "Question: Q1?\nAnswer: Work 1.\n#### 1\n\n"
        "Question: How many?\nAnswer:"
    )
    assert zero_shot("How many?") == "Question: How many?\nAnswer:"


def test_exemplar_sampling_is_seeded_distinct_and_per_item():
    a = sample_exemplars(TRAIN, index=3)
    assert a == sample_exemplars(TRAIN, index=3, seed=1234)
    assert len(a) == 5 and len({r["question"] for r in a}) == 5
    assert a != sample_exemplars(TRAIN, index=4)
    assert a != sample_exemplars(TRAIN, index=3, seed=1)
    fixed = sample_exemplars(TRAIN, index=None)
    assert fixed == sample_exemplars(TRAIN, None) and len(fixed) == 5
    with pytest.raises(MidblockError):
        sample_exemplars(TRAIN[:3], index=0)


def test_chat_prompt_wraps_question_and_requires_template(tokenizer):
    p = chat_prompt(tokenizer, "How many?", TRAIN[:1])
    assert p.startswith("<|im_start|>user\nQ0?\n\n") and "#### N" in p
    assert "<|im_start|>assistant\nWork 0.\n#### 0<|im_end|>" in p
    assert p.endswith("How many?\n\n" + p.split("How many?\n\n")[1]) and p.endswith("<|im_start|>assistant\n")
    tokenizer.chat_template = None
    with pytest.raises(MidblockError, match="no chat template"):
        chat_prompt(tokenizer, "How many?")
