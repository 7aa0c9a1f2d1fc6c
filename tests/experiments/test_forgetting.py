"""Forgetting in compare: per-text losses in every cell (search cells too), the probe in the fingerprint,
and the accuracy-against-forgetting figure."""

import json

import pytest

from midblock.data.general import general_rows, general_texts
from midblock.experiments.grid import CompareConfig
from midblock.experiments.runner import Keys, compare, forgetting_texts

SMALL = {
    "model": "random:llama-tiny",
    "task": "arith",
    "protocol": "original",
    "eval_items": 2,
    "max_new_tokens": 2,
    "seeds": [0],
    "train": {"steps": 1, "batch_size": 2, "max_length": 256, "train_rows": 4, "eval_loss_items": 0},
    "methods": [{"name": "lora", "method": "lora", "rank": 2}],
    "forgetting": {"data": "general", "limit": 3, "max_length": 48, "batch_size": 2},
}


def test_every_cell_stores_per_text_losses_including_search_cells(tmp_path, monkeypatch):
    grid = SMALL | {"lr_search": {"lrs": [1e-2, 1e-3], "split": "dev", "eval_items": 2}, "include_base": True}
    res = compare(grid, tmp_path / "c", progress=False)
    stored = [json.loads(p.read_text()) for p in (tmp_path / "c" / "cells").glob("*/eval-*/cell.json")]
    trained = [r for r in stored if r["label"] != "base"]
    # two search cells (one is also the grid's cell at the chosen rate, evaluated on test as well) + the base
    assert len(trained) == 3 and len(stored) == 4
    for rec in stored:
        per = rec["ppl"]["per_text"]
        assert len(per) == 3 and all(n == 47 for _, n in per)  # the byte tokenizer: 48 tokens, 47 predicted
        assert sum(s for s, _ in per) / sum(n for _, n in per) == pytest.approx(rec["ppl"]["loss"])
    assert all(r["ppl"] is not None for r in res["lr_search"])
    # the figure: every cell is a point, the search's on the dev split, the grid's on the test split
    pts = res["pareto"]
    assert sorted((p["split"], p["lr"]) for p in pts) == [("dev", 1e-3), ("dev", 1e-2), ("test", res["cells"][0]["lr"])]
    assert all(p["ppl_change_pct"] is not None for p in pts)
    assert (tmp_path / "c" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["pareto"] == pts
    # ... and an export publishes it, with the raw files its points re-derive from
    from midblock.experiments.export import export
    from tests.experiments.test_published_results import check_pareto

    dest = export(tmp_path / "c", tmp_path / "raw")
    assert (dest / "pareto.png").read_bytes() == (tmp_path / "c" / "pareto.png").read_bytes()
    check_pareto(dest)
    # a rerun on the finished directory (search, base and grid cells all stored) trains nothing and writes
    # the same tables
    import midblock.experiments.runner as runner

    for step in ("train", "evaluate_model", "token_loss"):
        monkeypatch.setattr(runner, step, lambda *a, _s=step, **k: pytest.fail(f"a finished cell ran {_s} again"))
    tables = {f: (tmp_path / "c" / f).read_bytes() for f in ("compare.md", "compare.csv", "lr_search.md")}
    compare(grid, tmp_path / "c", progress=False, reuse_only=True)
    assert {f: (tmp_path / "c" / f).read_bytes() for f in tables} == tables
    # ... and one more seed is a cell that is not finished: one line, exit 2, nothing created
    from tests.conftest import run_cli

    (tmp_path / "g.yaml").write_text(json.dumps(grid))  # YAML reads JSON
    cells = sorted((tmp_path / "c" / "cells").iterdir())
    argv = ["compare", "--config", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "c"), "--no-progress"]
    rc, _, err = run_cli(*argv, "--seeds", "0,1", "--reuse-only")
    assert rc == 2 and "--reuse-only: cell lora__s1-" in err and "is not finished" in err and err.count("\n") == 1
    assert sorted((tmp_path / "c" / "cells").iterdir()) == cells


def test_the_probe_version_and_contents_are_in_the_evaluation_fingerprint():
    cc = CompareConfig.from_dict(SMALL)
    texts = forgetting_texts(cc)
    assert texts == general_texts("general-v2", 3)
    rows = {r["text"]: r["source"] for r in general_rows("general-v2")}
    assert len({rows[t] for t in texts}) == 3  # a subset is spread over the probe's three sources
    fp = Keys(cc, texts).evaluation(None)
    assert fp["forgetting"]["corpus"] == "general-v2"
    old = CompareConfig.from_dict(SMALL | {"forgetting": SMALL["forgetting"] | {"data": "general-v1"}})
    assert Keys(old, forgetting_texts(old)).evaluation(None)["key"] != fp["key"]
    edited = Keys(cc, [texts[0] + " ", *texts[1:]]).evaluation(None)  # the same name, other contents
    assert edited["key"] != fp["key"] and edited["forgetting"]["corpus"] == "general-v2"


def test_eval_ppl_scores_the_bundled_probe_by_name(tmp_path):
    from tests.conftest import run_cli

    rc, out, err = run_cli(
        "eval",
        "--model",
        "random:llama-tiny",
        "--task",
        "ppl",
        "--data",
        "general",
        "--eval-items",
        "2",
        "--max-length",
        "32",
        "--out",
        str(tmp_path / "p"),
        "--no-progress",
    )
    assert rc == 0, err
    res = json.loads((tmp_path / "p" / "ppl.json").read_text())
    assert res["n_texts"] == 2 and [n for _, n in res["per_text"]] == [31, 31]
