import re

from midblock.data import generate_arith, gold_answer

CALC = re.compile(r"<<([^=<>]+)=(-?\d+)>>(-?\d+)")


def _safe_eval(expr: str) -> int:
    a, op, b = re.fullmatch(r"(\d+)([-+*/])(\d+)", expr).groups()
    a, b = int(a), int(b)
    if op == "/":
        assert a % b == 0, f"{expr} is not exact"
        return a // b
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def test_deterministic_and_splits_are_fixed():
    assert generate_arith("train", 50) == generate_arith("train", 50)
    assert generate_arith("test", 20) == generate_arith("test", 20)
    assert generate_arith("train", 10) == generate_arith("train", 50)[:10]


def test_test_split_never_overlaps_train():
    train = {r["question"] for r in generate_arith("train")}
    test = [r["question"] for r in generate_arith("test")]
    assert len(test) == len(set(test)) == 500
    assert not train.intersection(test)


def test_every_answer_recomputes():
    for row in generate_arith("train", 400) + generate_arith("test", 100):
        steps = CALC.findall(row["answer"])
        assert len(steps) >= 2, row
        for expr, val, shown in steps:
            assert _safe_eval(expr) == int(val) == int(shown)
        final = gold_answer(row["answer"])
        assert int(final) == int(steps[-1][1]) and int(final) >= 0
        assert row["answer"].rstrip().endswith(f"#### {final}")


def test_templates_are_varied():
    first_words = {r["question"].split(" ", 3)[1] for r in generate_arith("train", 300)}
    assert len(first_words) >= 5


def test_dev_split_is_disjoint_from_train_and_test():
    from midblock.data import generate_arith

    train, test, dev = ({r["question"] for r in generate_arith(s)} for s in ("train", "test", "dev"))
    assert len(dev) == 300 and not dev & train and not dev & test
