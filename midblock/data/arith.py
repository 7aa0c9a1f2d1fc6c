"""``arith``: seeded GSM8K-style multi-step arithmetic word problems.

Each problem takes 2-3 operations on numbers up to 50; the answer is a worked solution with GSM8K's
calculator annotations (``<<a*b=c>>``) and a last line ``#### N``. Splits are fixed: the same seed always
gives the same problems, and no dev or test problem is a train problem with another name or object.

``ARITH_VERSION`` enters every fingerprint of arith data: version 1's dev and test splits held such
near-duplicates of train rows (35 of the first 400 test items, 18 of the first 200 dev items); version 2
draws them again. The train split is unchanged.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

NAMES = [
    "Ava",
    "Ben",
    "Carla",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jamal",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Yara",
]
ITEMS = [
    "apples",
    "marbles",
    "stickers",
    "books",
    "pencils",
    "cookies",
    "stamps",
    "shells",
    "cards",
    "coins",
    "eggs",
    "flowers",
    "beads",
    "toy cars",
    "cupcakes",
    "oranges",
]
CONTAINERS = ["boxes", "bags", "baskets", "jars", "crates", "packs"]

ARITH_VERSION = 2
# dev: held out from both train and test, for choosing settings (e.g. a learning rate) without the test set
SPLIT_SEEDS = {"train": 1_000_003, "test": 2_000_003, "dev": 3_000_003}
DEFAULT_SIZES = {"train": 2000, "test": 500, "dev": 300}


def _eq(a: int, op: str, b: int) -> tuple[str, int]:
    r = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    return f"{a}{op}{b}=<<{a}{op}{b}={r}>>{r}", r


def _t_buy_give(r: random.Random) -> tuple[str, str, int]:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(10, 50), r.randint(2, 30)
    c = r.randint(1, a + b - 1)
    s1, v1 = _eq(a, "+", b)
    s2, v2 = _eq(v1, "-", c)
    q = f"{n} has {a} {it}. {n} buys {b} more and then gives {c} to a friend. How many {it} does {n} have now?"
    ans = f"After buying, {n} has {s1} {it}.\nAfter giving some away, {n} has {s2} {it}.\n#### {v2}"
    return q, ans, v2


def _t_containers(r: random.Random) -> tuple[str, str, int]:
    n, it, box = r.choice(NAMES), r.choice(ITEMS), r.choice(CONTAINERS)
    a, b, c = r.randint(2, 12), r.randint(2, 12), r.randint(1, 30)
    s1, v1 = _eq(a, "*", b)
    s2, v2 = _eq(v1, "+", c)
    q = f"{n} has {a} {box} with {b} {it} in each, and {c} loose {it}. How many {it} does {n} have in total?"
    ans = f"The {box} hold {s1} {it}.\nWith the loose ones, {n} has {s2} {it}.\n#### {v2}"
    return q, ans, v2


def _t_share(r: random.Random) -> tuple[str, str, int]:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    k, each = r.randint(2, 9), r.randint(2, 12)
    extra = r.randint(1, 20)
    total = k * each
    s1, v1 = _eq(total + extra, "-", extra)
    s2, v2 = _eq(v1, "/", k)
    q = (
        f"{n} had {total + extra} {it}, kept {extra} and shared the rest equally among {k} friends. "
        f"How many {it} did each friend get?"
    )
    ans = f"{n} shared {s1} {it}.\nEach friend got {s2} {it}.\n#### {v2}"
    return q, ans, v2


def _t_price(r: random.Random) -> tuple[str, str, int]:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    p, k, m = r.randint(2, 15), r.randint(2, 10), r.randint(1, 50)
    s1, v1 = _eq(p, "*", k)
    s2, v2 = _eq(v1 + m, "-", v1)
    q = (
        f"{it.capitalize()} cost ${p} each. {n} buys {k} of them and pays with ${v1 + m}. "
        f"How much change does {n} get in dollars?"
    )
    ans = f"The {it} cost {s1} dollars.\nThe change is {s2} dollars.\n#### {v2}"
    return q, ans, v2


def _t_three_step(r: random.Random) -> tuple[str, str, int]:
    n, m, it = *r.sample(NAMES, 2), r.choice(ITEMS)
    a, k, c = r.randint(3, 25), r.randint(2, 4), r.randint(1, 20)
    s1, v1 = _eq(a, "*", k)
    s2, v2 = _eq(v1, "+", c)
    s3, v3 = _eq(a, "+", v2)
    q = (
        f"{n} collects {a} {it}. {m} collects {k} times as many as {n}, plus {c} more. "
        f"How many {it} do they collect together?"
    )
    ans = f"{k} times as many is {s1} {it}.\n{m} collects {s2} {it}.\nTogether they collect {s3} {it}.\n#### {v3}"
    return q, ans, v3


def _t_days(r: random.Random) -> tuple[str, str, int]:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    per, days, used = r.randint(2, 15), r.randint(2, 7), r.randint(1, 20)
    used = min(used, per * days - 1)
    s1, v1 = _eq(per, "*", days)
    s2, v2 = _eq(v1, "-", used)
    q = f"{n} makes {per} {it} a day for {days} days, then uses {used} of them. How many {it} are left?"
    ans = f"{n} makes {s1} {it}.\n{s2} {it} are left.\n#### {v2}"
    return q, ans, v2


def _t_difference(r: random.Random) -> tuple[str, str, int]:
    n, m, it = *r.sample(NAMES, 2), r.choice(ITEMS)
    a, b, c = r.randint(20, 50), r.randint(2, 19), r.randint(2, 6)
    s1, v1 = _eq(a, "-", b)
    s2, v2 = _eq(v1, "*", c)
    q = (
        f"{n} has {a} {it} and {m} has {b} fewer. Then {m}'s collection grows to {c} times its size. "
        f"How many {it} does {m} have now?"
    )
    ans = f"{m} starts with {s1} {it}.\nAfter growing, {m} has {s2} {it}.\n#### {v2}"
    return q, ans, v2


def _t_groups(r: random.Random) -> tuple[str, str, int]:
    it = r.choice(ITEMS)
    g, size, a, b = r.randint(2, 8), r.randint(2, 9), r.randint(1, 15), r.randint(1, 15)
    s1, v1 = _eq(g, "*", size)
    s2, v2 = _eq(v1, "+", a)
    s3, v3 = _eq(v2, "+", b)
    q = (
        f"A class sorts {it} into {g} groups of {size}. Then {a} more {it} arrive in the morning and "
        f"{b} more in the afternoon. How many {it} are there at the end of the day?"
    )
    ans = f"The groups hold {s1} {it}.\nIn the morning there are {s2}.\nAt the end there are {s3}.\n#### {v3}"
    return q, ans, v3


TEMPLATES: list[Callable[[random.Random], tuple[str, str, int]]] = [
    _t_buy_give,
    _t_containers,
    _t_share,
    _t_price,
    _t_three_step,
    _t_days,
    _t_difference,
    _t_groups,
]


def problem_key(template: Callable, question: str) -> tuple[str, tuple[int, ...]]:
    """What makes two problems the same problem: the template and its numbers (names and objects aside)."""
    return template.__name__, tuple(int(x) for x in re.findall(r"\d+", question))


def _generate(split: str, n: int, seed: int | None) -> list[tuple[dict[str, str], tuple]]:
    """Rows of a split with their problem keys. Dev and test rows share no problem key (template and
    numbers) with the train split at its default size; dev rows none with the test split either."""
    r = random.Random(SPLIT_SEEDS[split] + (seed or 0))
    banned: set[tuple] = set()
    if split in ("test", "dev"):
        banned = {k for _, k in _generate("train", DEFAULT_SIZES["train"], seed)}
    if split == "dev":
        banned |= {k for _, k in _generate("test", DEFAULT_SIZES["test"], seed)}
    rows, seen, keys = [], set(), set()
    while len(rows) < n:
        template = r.choice(TEMPLATES)
        q, a, _ = template(r)
        key = problem_key(template, q)
        # a question twice in a split, a near-duplicate of a train (or test) row, or within dev or test: again
        if q in seen or key in banned or (split != "train" and key in keys):
            continue
        seen.add(q)
        keys.add(key)
        rows.append(({"question": q, "answer": a}, key))
    return rows


def generate_arith(split: str = "train", n: int | None = None, seed: int | None = None) -> list[dict[str, str]]:
    """Rows ``{"question", "answer"}`` in GSM8K's format; deterministic for a split (and optional seed).

    No dev or test row has the template and numbers of a train row (a near-duplicate that differs only in a
    name or an object); dev rows none of a test row's. The train split is the same as in version 1."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"arith has splits train, test and dev, not {split!r}")
    n = DEFAULT_SIZES[split] if n is None else n
    return [row for row, _ in _generate(split, n, seed)]
