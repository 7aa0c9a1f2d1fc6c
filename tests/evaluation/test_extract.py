"""Every extractor against tricky completions, with the outcomes the harness's (and each protocol's) rules give."""

import pytest

from midblock.evaluation.extract import (
    INVALID,
    flexible_extract,
    gold_number,
    harness_exact_match,
    harness_normalize,
    original_extract,
    paper_extract,
    score_all,
    strict_match,
)

GOLD_1000 = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nShe sold 976+24 = <<976+24=1000>>1000 clips.\n#### 1,000"

# completion, gold solution, strict pred, flexible pred, {extractor: correct}
CASES = [
    (
        "She has 10.\n#### 1000",
        GOLD_1000,
        "1000",
        "1000",
        {"strict-match": True, "flexible-extract": True, "paper": True, "original": True},
    ),
    # several '####': strict and original take the first, flexible the last number
    (
        "#### 1000\n#### 7",
        GOLD_1000,
        "1000",
        "7",
        {"strict-match": True, "flexible-extract": False, "paper": False, "original": True},
    ),
    (
        "#### 7\n#### 1000",
        GOLD_1000,
        "7",
        "1000",
        {"strict-match": False, "flexible-extract": True, "paper": True, "original": False},
    ),
    # '$1,000.': strict's class has no '$'; flexible keeps '$' and the period, normalisation removes them
    (
        "The total is $1,000.",
        GOLD_1000,
        INVALID,
        "$1,000.",
        {"strict-match": False, "flexible-extract": True, "paper": True, "original": False},
    ),
    (
        "#### $1,000.",
        GOLD_1000,
        INVALID,
        "$1,000.",
        {"strict-match": False, "flexible-extract": True, "paper": True, "original": False},
    ),
    # '1,000.' after ####: harness strips the period, original compares '1000.' with '1000'
    (
        "#### 1,000.",
        GOLD_1000,
        "1,000.",
        "1,000.",
        {"strict-match": True, "flexible-extract": True, "paper": True, "original": False},
    ),
    # '18.0' is not '18' for string matching; the paper compares floats
    (
        "So 9*2 = 18.0\n#### 18.0",
        "9*2=<<9*2=18>>18\n#### 18",
        "18.0",
        "18.0",
        {"strict-match": False, "flexible-extract": False, "paper": True, "original": False},
    ),
    # negatives
    (
        "It drops by 5.\n#### -5",
        "#### -5",
        "-5",
        "-5",
        {"strict-match": True, "flexible-extract": True, "paper": True, "original": True},
    ),
    (
        "The change is -12 dollars",
        "#### -12",
        INVALID,
        "-12",
        {"strict-match": False, "flexible-extract": True, "paper": True, "original": False},
    ),
    # no number at all
    (
        "I do not know.",
        "#### 3",
        INVALID,
        INVALID,
        {"strict-match": False, "flexible-extract": False, "paper": False, "original": False},
    ),
    # trailing period
    (
        "So the answer is 42.",
        "#### 42",
        INVALID,
        "42.",
        {"strict-match": False, "flexible-extract": True, "paper": True, "original": False},
    ),
    # text after the answer: flexible and paper take the last number, strict the '####' one
    (
        "#### 42 because 6*7 is 42 and 3 more",
        "#### 42",
        "42",
        "3",
        {"strict-match": True, "flexible-extract": False, "paper": False, "original": True},
    ),
    (
        "#### 42\n\nThat is all.",
        "#### 42",
        "42",
        "42",
        {"strict-match": True, "flexible-extract": True, "paper": True, "original": True},
    ),
    # '\.$' removes only one period: '7...' stays '7..'
    (
        "It is 7... I think",
        "#### 7",
        INVALID,
        "7...",
        {"strict-match": False, "flexible-extract": False, "paper": True, "original": False},
    ),
    # thousands separators inside the text
    (
        "The total is 1,234,567 dollars",
        "#### 1234567",
        INVALID,
        "1,234,567",
        {"strict-match": False, "flexible-extract": True, "paper": True, "original": False},
    ),
    # the paper's regex can end on a lone comma, which does not parse
    (
        "There are 5 apples, pears",
        "#### 5",
        INVALID,
        "5",
        {"strict-match": False, "flexible-extract": True, "paper": False, "original": False},
    ),
]


@pytest.mark.parametrize("completion,gold,strict,flex,correct", CASES)
def test_extractors_on_tricky_completions(completion, gold, strict, flex, correct):
    assert strict_match(completion) == strict
    assert flexible_extract(completion) == flex
    scores = score_all(completion, gold)
    assert {k: v["correct"] for k, v in scores.items()} == correct


def test_harness_normalisation_reference_values():
    assert harness_normalize("$1,000.") == "1000"
    assert harness_normalize("18.0") == "18.0"
    assert harness_normalize(GOLD_1000) == "1000"  # '(?s).*#### ' drops the whole solution
    assert gold_number("a\nb #### 5") == "5"
    assert harness_exact_match("[invalid]", "#### 5") is False
    assert harness_exact_match("ABC", "abc") is True  # ignore_case


def test_gold_as_number_or_full_solution_agree():
    # the harness's target is either the solution or its '#### N' value; both normalise the same way
    for completion, gold, *_ in CASES:
        short = gold.split("####")[-1].strip()
        for name in ("strict-match", "flexible-extract"):
            assert score_all(completion, gold)[name] == score_all(completion, short)[name]


def test_paper_and_original_extract_values():
    assert paper_extract("x = 1,000.5 then 3") == 3.0
    assert paper_extract("total $2,500") == 2500.0
    assert paper_extract("nothing") is None
    assert original_extract("#### 1,234\n#### 5") == "1234"
    assert original_extract("no answer") == INVALID
