"""arith v2: no dev or test problem is a train problem with another name or object.

The check is independent of the generator's own key: a question's skeleton (names, objects and containers
replaced by placeholders, numbers by '#') plus its numbers identifies the problem. On version 1's splits it
finds the review's 35 of the first 400 test items and 18 of the first 200 dev items.
"""

import re

from midblock.data.arith import ARITH_VERSION, CONTAINERS, ITEMS, NAMES, generate_arith
from midblock.fingerprint import rows_digest

# the sizes the band-landscape preset uses: all 2000 train rows, 200 dev items for the rate search, 400 test
PUBLISHED = {"train": 2000, "dev": 200, "test": 400}


def near_key(question: str) -> tuple[str, tuple[int, ...]]:
    q = question.lower()
    for word in sorted(ITEMS + CONTAINERS, key=len, reverse=True):  # 'toy cars' before 'cars'
        q = re.sub(rf"\b{re.escape(word)}\b", "<thing>", q)
    for name in NAMES:
        q = re.sub(rf"\b{name.lower()}\b", "<name>", q)
    numbers = tuple(int(x) for x in re.findall(r"\d+", q))
    return re.sub(r"\d+", "#", q), numbers


def _keys(rows):
    return [near_key(r["question"]) for r in rows]


def test_dev_and_test_share_no_template_and_numbers_with_train_at_the_published_sizes():
    train = set(_keys(generate_arith("train", PUBLISHED["train"])))
    dev = _keys(generate_arith("dev")[: PUBLISHED["dev"]])
    test = _keys(generate_arith("test")[: PUBLISHED["test"]])
    assert ARITH_VERSION == 2
    assert not [k for k in test if k in train]
    assert not [k for k in dev if k in train]
    assert not set(dev) & set(test)
    # nor within a held-out split: each item is its own problem
    assert len(set(dev)) == len(dev) and len(set(test)) == len(test)


def test_whole_default_splits_are_clean_and_train_is_unchanged():
    train = set(_keys(generate_arith("train")))
    for split in ("dev", "test"):
        keys = _keys(generate_arith(split))
        assert keys and not [k for k in keys if k in train]
    # version 2 redrew only dev and test: the train rows are version 1's (their digest, taken from v1)
    assert rows_digest(generate_arith("train")) == "8b10b4b6013bdeee"


def test_the_check_finds_a_renamed_problem():
    row = generate_arith("train", 1)[0]["question"]  # Quinn makes 10 cookies a day ...
    renamed = row.replace("Quinn", "Ava").replace("cookies", "shells")
    assert renamed != row and near_key(renamed) == near_key(row)
