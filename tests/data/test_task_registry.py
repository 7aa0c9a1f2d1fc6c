"""The task registry: every task is one registered loader with a description, dispatched by name."""

from __future__ import annotations

import pytest

from midblock.data.tasks import TASKS, builtin_tasks, data_version, has_own_dev, load_rows, register_task, resolve_task
from midblock.errors import MidblockError


def test_the_known_tasks_resolve_and_describe_themselves():
    assert TASKS.names() == ["gsm8k", "arith", "jsonl"]
    for name in TASKS:
        t = TASKS.lookup(name)
        assert t.name == name and callable(t.load) and TASKS.doc(name).strip(), name
    assert [n for n, t in TASKS.items() if t.scored] == ["gsm8k", "arith"]
    assert [n for n in TASKS if has_own_dev(n)] == ["arith"] and not has_own_dev("nope")
    assert builtin_tasks() == ["gsm8k", "arith"]


def test_data_versions_are_the_ones_every_stored_fingerprint_holds():
    # these strings are inside the keys of stored cells: changing one recomputes published results
    assert [data_version(t) for t in ("arith", "gsm8k", "jsonl", "general")] == [
        "arith-v2",
        "gsm8k-v2",
        "jsonl-v2",
        "general-v1",
    ]


@pytest.mark.parametrize("call", [lambda: load_rows("mmlu"), lambda: resolve_task("mmlu", None)])
def test_an_unknown_task_is_one_line_listing_the_tasks(call):
    with pytest.raises(MidblockError) as e:
        call()
    assert e.value.one_line() == "unknown task 'mmlu' (use gsm8k, arith, jsonl)"


def test_load_rows_dispatches_to_the_registered_loader(monkeypatch):
    calls = []
    monkeypatch.setattr(TASKS, "_own", dict(TASKS._own))  # the registration below stays in this test

    @register_task("echo", version=7, scored=False)
    def _echo(split, data, dev_size):
        """Rows that say how they were asked for."""
        calls.append((split, data, dev_size))
        return [{"text": f"{split}-{i}"} for i in range(5)]

    assert load_rows("echo", "dev", "d", limit=2, offset=1, dev_size=3) == [{"text": "dev-1"}, {"text": "dev-2"}]
    assert calls == [("dev", "d", 3)] and data_version("echo") == "echo-v7" and "echo" in builtin_tasks()


def test_jsonl_still_needs_data_and_arith_is_built_in():
    with pytest.raises(MidblockError, match="task jsonl needs --data"):
        load_rows("jsonl")
    rows = load_rows("arith", "test", limit=3)
    assert len(rows) == 3 and all("####" in r["answer"] for r in rows)
