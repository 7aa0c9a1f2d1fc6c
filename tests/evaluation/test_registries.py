"""The evaluation's registries: tasks it scores, protocols and extractors, each looked up by name."""

from __future__ import annotations

import pytest

from midblock.data.tasks import TASKS
from midblock.errors import MidblockError
from midblock.evaluation.config import EVAL_TASKS, HARNESS_STOPS, PROTOCOLS, EvalConfig
from midblock.evaluation.extract import EXTRACTORS, score_all


def test_eval_tasks_are_the_scored_tasks():
    assert EVAL_TASKS.names() == ["gsm8k", "arith"] == [n for n, t in TASKS.items() if t.scored]
    assert all(EVAL_TASKS[n] is TASKS[n] for n in EVAL_TASKS)


def test_protocols_keep_their_settings_and_describe_themselves():
    assert PROTOCOLS.names() == ["lm-eval", "paper", "original"]
    got = {n: (p.num_fewshot, p.max_new_tokens, p.stop, p.primary) for n, p in PROTOCOLS.items()}
    assert got == {
        "lm-eval": (5, 256, HARNESS_STOPS, ("strict-match", "flexible-extract")),
        "paper": (0, 64, (), ("paper",)),
        "original": (0, 256, HARNESS_STOPS, ("original",)),
    }
    for n in PROTOCOLS:
        assert PROTOCOLS.doc(n).strip(), n
        assert set(PROTOCOLS[n].primary) <= set(EXTRACTORS), n  # a protocol reports registered extractors


def test_extractors_are_registered_with_docs_and_score_all_applies_each():
    assert EXTRACTORS.names() == ["strict-match", "flexible-extract", "paper", "original"]
    assert all(EXTRACTORS.doc(n).strip() for n in EXTRACTORS)
    scores = score_all("so 2 + 3 = 5\n#### 5", "3 + 2 = 5\n#### 5")
    assert list(scores) == EXTRACTORS.names() and all(s["correct"] for s in scores.values())
    assert scores["paper"]["pred"] == 5.0 and scores["strict-match"]["pred"] == "5"


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        (dict(task="mmlu"), "unknown task 'mmlu' (use gsm8k, arith, ppl)"),
        (dict(task="jsonl"), "unknown task 'jsonl' (use gsm8k, arith, ppl)"),  # a task, but not a scored one
        (dict(protocol="harness"), "unknown protocol 'harness' (use lm-eval, paper, original)"),
    ],
)
def test_unknown_names_are_one_line_listing_the_registered_ones(kwargs, line):
    with pytest.raises(MidblockError) as e:
        EvalConfig(**kwargs)
    assert e.value.one_line() == line


def test_a_task_without_a_dev_split_of_its_own_needs_dev_size():
    EvalConfig(task="arith", split="dev")
    with pytest.raises(MidblockError, match="gsm8k has no dev split of its own"):
        EvalConfig(task="gsm8k", split="dev")
    assert EvalConfig(task="gsm8k", split="dev", dev_size=5).train_dev_size == 5
