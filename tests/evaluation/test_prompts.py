import random

import pytest

from midblock.errors import MidblockError
from midblock.evaluation import prompts
from midblock.evaluation.prompts import chat_prompt, fewshot_prompt, harness_draw, sample_exemplars, zero_shot

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
    for mode in ("lm-eval", "per-item"):
        a = sample_exemplars(TRAIN, 3, sampling=mode)
        assert a == sample_exemplars(TRAIN, index=3, seed=1234, sampling=mode)
        assert len(a) == 5 and len({r["question"] for r in a}) == 5
        assert a != sample_exemplars(TRAIN, 4, sampling=mode)
        assert a != sample_exemplars(TRAIN, 3, seed=1, sampling=mode)
    assert sample_exemplars(TRAIN, 3) == sample_exemplars(TRAIN, 3, sampling="lm-eval")  # the default
    fixed = sample_exemplars(TRAIN, index=None)
    assert fixed == sample_exemplars(TRAIN, 7, sampling="fixed") and len(fixed) == 5
    with pytest.raises(MidblockError):
        sample_exemplars(TRAIN[:3], index=0)
    with pytest.raises(MidblockError, match="unknown few-shot sampling"):
        sample_exemplars(TRAIN, 0, sampling="random")


def test_lm_eval_draws_are_one_generator_advanced_per_document():
    """lm-eval: document k gets the (k+1)-th successive ``Random(seed).sample(train, k)``, and the shared
    ``fixed`` draw is the first of them; the cache gives the same draws in any order of requests."""
    rng = random.Random(1234)
    expected = [rng.sample(TRAIN, 5) for _ in range(12)]
    prompts._DRAWS.clear()
    assert [sample_exemplars(TRAIN, k) for k in (11, 0, 5)] == [expected[11], expected[0], expected[5]]
    assert [sample_exemplars(TRAIN, k) for k in range(12)] == expected
    assert sample_exemplars(TRAIN, None) == expected[0]
    assert harness_draw(len(TRAIN), 2) == tuple(TRAIN.index(r) for r in expected[2])
    rng = random.Random(7)
    assert [sample_exemplars(TRAIN, k, 3, 7) for k in range(4)] == [rng.sample(TRAIN, 3) for _ in range(4)]


def test_chat_prompt_wraps_question_and_requires_template(tokenizer):
    p = chat_prompt(tokenizer, "How many?", TRAIN[:1])
    assert p.startswith("<|im_start|>user\nQ0?\n\n") and "#### N" in p
    assert "<|im_start|>assistant\nWork 0.\n#### 0<|im_end|>" in p
    assert p.endswith("How many?\n\n" + p.split("How many?\n\n")[1]) and p.endswith("<|im_start|>assistant\n")
    tokenizer.chat_template = None
    with pytest.raises(MidblockError, match="no chat template"):
        chat_prompt(tokenizer, "How many?")
