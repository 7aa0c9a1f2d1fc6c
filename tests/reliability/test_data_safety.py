"""Data safety (issue 27): midblock deletes only what it wrote, under its lock, and never pools what is not
the same arm. One test per reproducer of the issue, on a tiny random model and a tiny grid (1 step, 2 test
items); each failed before the fix."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from midblock.errors import MidblockError
from tests.conftest import run_cli

TINY = "random:llama-tiny"
GRID = {
    "model": TINY,
    "task": "arith",
    "protocol": "paper",
    "eval_items": 2,
    "max_new_tokens": 4,
    "seeds": [0],
    "train": {"steps": 1, "batch_size": 2, "max_length": 512, "train_rows": 8},
    "methods": [
        {"name": "lora", "method": "lora", "rank": 2},
        {"name": "mid", "method": "midblock", "band": "seg2-4/5", "budget_baseline_rank": 2},
    ],
}


def _grid(path: Path, **over) -> str:
    """A grid file (YAML is a superset of JSON)."""
    path.write_text(json.dumps(GRID | over))
    return str(path)


def _one_line(rc: int, err: str, fragment: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("midblock: error:") and "Traceback" not in err, err
    assert fragment.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny ``midblock train`` run (LoRA on llama-tiny)."""
    d = tmp_path_factory.mktemp("run") / "run"
    rc, _, err = run_cli(
        "train", "--model", TINY, "--method", "lora", "--rank", "2", "--steps", "1", "--batch-size", "2",
        "--train-rows", "8", "--no-progress", "--out", str(d),
    )  # fmt: skip
    assert rc == 0, err
    return d


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny comparison (two arms, one seed, the base row)."""
    from midblock.experiments.runner import compare

    out = tmp_path_factory.mktemp("cmp") / "o"
    compare(GRID | {"include_base": True}, out, progress=False)
    return out


# --------------------------------------------------------------------------- 1. a second compare on a running cell


def _started_cell(cc, out: Path) -> Path:
    """The first cell of ``cc`` as a compare leaves it when its training has started: the cell's recorded
    fingerprint and a training directory without a checkpoint. Returns the training directory."""
    from midblock.experiments.runner import Keys
    from midblock.fingerprint import check_or_record

    cell = cc.cells()[0]
    fp = Keys(cc, None).training(cell)
    cdir = out / "cells" / f"{cell.slug}__s{cell.seed}-{fp['key'][:10]}"
    check_or_record(cdir, fp, "a comparison cell", has_results=False)
    (cdir / "train").mkdir()
    return cdir / "train"


def test_1_second_compare_on_a_cell_in_training_is_refused_and_deletes_nothing(tmp_path):
    """The first compare's cell is held (its training directory's lock, as a live `train` holds it) and has
    no checkpoint yet; the second compare used to remove that directory and train it again."""
    from midblock.experiments.grid import CompareConfig
    from midblock.io import RunDir

    cc = CompareConfig.from_dict(GRID)
    out = tmp_path / "o"
    tdir = _started_cell(cc, out)
    (tdir / "train_log.jsonl").write_text('{"step": 1, "loss": 3.0}\n')  # the first run's, before a checkpoint
    with RunDir(tdir):
        rc, _, err = run_cli("compare", "--config", _grid(tmp_path / "g.yaml"), "--out", str(out), "--no-progress")
    _one_line(rc, err, "in use by process")
    assert (tdir / "train_log.jsonl").read_text() == '{"step": 1, "loss": 3.0}\n'


def test_1_second_compare_on_a_running_out_is_refused_up_front(tmp_path):
    """The whole --out is held by the first compare: the second stops before any cell, as `eval` does."""
    from midblock.io import RunDir

    out = tmp_path / "o"
    with RunDir(out):
        rc, _, err = run_cli("compare", "--config", _grid(tmp_path / "g.yaml"), "--out", str(out), "--no-progress")
        _one_line(rc, err, "in use by process")
        assert sorted(p.name for p in out.iterdir()) == ["RUNNING.lock"]


def test_1_a_cell_interrupted_before_its_first_checkpoint_resumes_in_place(tmp_path):
    """Without another process, the same directory is trained from step 0 (resume), not removed first."""
    from midblock.experiments.grid import CompareConfig
    from midblock.experiments.runner import compare

    grid = GRID | {"methods": GRID["methods"][:1]}
    tdir = _started_cell(CompareConfig.from_dict(grid), tmp_path)
    res = compare(grid, tmp_path, progress=False)
    assert res["rows"][0]["n"] == 2 and (tdir / "COMPLETED").exists()


# --------------------------------------------------------------------------- 2. interpolate --save


def _interpolate(run_dir: Path, save: Path, out: Path) -> list[str]:
    return [
        "interpolate", "--base", TINY, "--variant", str(run_dir), "--weights", "0,1,0", "--task", "arith",
        "--eval-items", "2", "--save", str(save), "--out", str(out),
    ]  # fmt: skip


def test_2_interpolate_save_never_replaces_a_directory_of_other_files(tmp_path, run_dir):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("x")
    rc, _, err = run_cli(*_interpolate(run_dir, keep, tmp_path / "o"))
    _one_line(rc, err, "notes.txt")
    assert (keep / "notes.txt").read_text() == "x" and not (tmp_path / "o").exists()
    # --save equal to --out, or above it: the run's own state and lock would be swapped out
    for save in (tmp_path / "o2", tmp_path):
        rc, _, err = run_cli(*_interpolate(run_dir, save, tmp_path / "o2"))
        _one_line(rc, err, "--save")
    assert not (tmp_path / "o2").exists()


def test_2_interpolate_save_replaces_its_own_earlier_save(tmp_path, run_dir):
    save = tmp_path / "model"
    for _ in range(2):  # the second run replaces what the first saved (its marker lists every file)
        rc, _, err = run_cli(*_interpolate(run_dir, save, tmp_path / "o"))
        assert rc == 0, err
    marker = json.loads((save / "midblock_interpolation.json").read_text())
    assert sorted(p.name for p in save.iterdir()) == sorted(marker["files"])
    (save / "mine.txt").write_text("added by hand")  # now it holds a file midblock did not write
    rc, _, err = run_cli(*_interpolate(run_dir, save, tmp_path / "o"))
    _one_line(rc, err, "mine.txt")
    assert (save / "mine.txt").exists()


# --------------------------------------------------------------------------- 3. export reads the grid, not the disk


def test_3_export_and_derive_take_the_current_grids_cells_only(tmp_path, finished):
    from midblock.experiments.export import derive, export
    from midblock.experiments.runner import compare

    out = tmp_path / "o"
    shutil.copytree(finished, out)
    # the same --out with 2 steps: new cells beside the old ones
    res = compare(GRID | {"include_base": True, "train": GRID["train"] | {"steps": 2}}, out, progress=False)
    assert len(list((out / "cells").glob("*__s0-*"))) == 4  # the old cells stay on disk
    rows = derive(export(out, tmp_path / "x"))
    assert [(r["arm"], r["seed"]) for r in rows] == [(r["arm"], r["seed"]) for r in res["rows"]]
    assert ("lora", "mean(1)") in [(r["arm"], r["seed"]) for r in rows]
    for mine, theirs in zip(rows, res["rows"]):
        assert mine["accuracy"] == theirs["accuracy"] and mine.get("final_loss") == theirs.get("final_loss")
    cells = [json.loads(x) for x in (tmp_path / "x" / "cells.jsonl").read_text().splitlines()]
    assert {c["train"]["steps"] for c in cells if c["train"]} == {2}
    # an arm removed from the grid: its cells stay on disk, never in the export
    res = compare(GRID | {"methods": GRID["methods"][:1]}, out, progress=False)
    rows = derive(export(out, tmp_path / "y"))
    assert [(r["arm"], r["seed"]) for r in rows] == [("lora", 0), ("lora", "mean(1)")]


# --------------------------------------------------------------------------- 4, 5, 6: arm identity


def test_4_two_arms_never_share_a_label_after_bands_expansion():
    from midblock.experiments.grid import CompareConfig

    methods = [
        {"name": "x[1-2]", "method": "midblock", "band": "1-2", "rank": 2},
        {"name": "x", "method": "midblock", "bands": ["1-2", "3-4"], "rank": 4},
    ]
    with pytest.raises(MidblockError, match=r"label 'x\[1-2\]'"):
        CompareConfig.from_dict(GRID | {"methods": methods})


def test_5_an_arm_named_base_is_refused_beside_the_base_row():
    from midblock.experiments.grid import CompareConfig

    methods = [*GRID["methods"], {"name": "base", "method": "lora", "rank": 4}]
    with pytest.raises(MidblockError, match="'base'"):
        CompareConfig.from_dict(GRID | {"methods": methods, "include_base": True})
    CompareConfig.from_dict(GRID | {"methods": methods})  # without a base row the name is free


def test_6_compare_rank_zero_is_refused_not_turned_into_eight(tmp_path):
    from midblock.cli import build_parser
    from midblock.cli.compare import grid_from_args
    from midblock.experiments.grid import CompareConfig

    argv = ["compare", "--model", TINY, "--methods", "lora,midblock", "--out", str(tmp_path / "o")]
    with pytest.raises(MidblockError, match="rank"):
        CompareConfig.from_dict(grid_from_args(build_parser().parse_args([*argv, "--rank", "0"])))
    rc, _, err = run_cli(*argv, "--rank", "0")
    _one_line(rc, err, "rank must be a positive integer")
    assert not (tmp_path / "o").exists()
    grid = grid_from_args(build_parser().parse_args(argv))  # no --rank: the documented default, 8
    assert {m["rank"] for m in grid["methods"]} == {8}


# --------------------------------------------------------------------------- 7. derive checks its inputs


@pytest.fixture
def exported(tmp_path, finished) -> Path:
    from midblock.experiments.export import export

    return export(finished, tmp_path / "x")


def test_7_derive_refuses_a_tampered_item(exported):
    from midblock.experiments.export import derive

    derive(exported)  # untouched: fine
    lines = (exported / "items.csv").read_text().splitlines()
    k = next(i for i, x in enumerate(lines) if x.startswith("main,lora,"))
    lines[k] = lines[k][:-1] + ("0" if lines[k].endswith("1") else "1")
    (exported / "items.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(MidblockError, match="disagree about lora"):
        derive(exported)


def test_7_derive_of_an_export_without_digests_checks_the_counts(exported):
    """Exports made before the per-cell digest (the published study's) are checked against the scores."""
    from midblock.experiments.export import derive

    cells = [json.loads(x) for x in (exported / "cells.jsonl").read_text().splitlines()]
    (exported / "cells.jsonl").write_text("".join(json.dumps(c | {"items_digest": None}) + "\n" for c in cells))
    derive(exported)
    text = (exported / "items.csv").read_text()
    row = next(x for x in text.splitlines() if x.startswith("main,mid,"))
    (exported / "items.csv").write_text(text.replace(row + "\n", ""))  # one item of 'mid' dropped
    with pytest.raises(MidblockError, match="disagree about mid"):
        derive(exported)


def test_7_derive_refuses_an_unknown_arm_and_a_stray_cell(exported):
    from midblock.experiments.export import derive, main

    with pytest.raises(MidblockError, match="unknown arm 'nosucharm'"):
        derive(exported, "nosucharm")
    assert {r["arm"] for r in derive(exported, "mid")} == {"base", "lora", "mid"}
    cells = (exported / "cells.jsonl").read_text().splitlines()
    extra = json.loads(next(c for c in cells if '"label": "mid"' in c)) | {"label": "ghost"}
    items = (exported / "items.csv").read_text()
    ghost = "".join(x.replace(",mid,", ",ghost,", 1) + "\n" for x in items.splitlines() if x.startswith("main,mid,"))
    (exported / "cells.jsonl").write_text("\n".join([*cells, json.dumps(extra)]) + "\n")
    (exported / "items.csv").write_text(items + ghost)
    with pytest.raises(MidblockError, match="arm 'ghost'"):
        derive(exported)
    (exported / "cells.jsonl").write_text("\n".join([*cells, cells[-1]]) + "\n")  # one cell listed twice
    with pytest.raises(MidblockError, match="twice"):
        derive(exported)
    assert main(["derive", str(exported)]) == 2


# --------------------------------------------------------------------------- 8, 9: the whole grid validated first


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"methods": [GRID["methods"][0], {"name": "b", "method": "midblock", "band": "0.95:1.0"}]}, "no block"),
        ({"methods": [GRID["methods"][0], {"name": "b", "method": "midblock", "band": "2-40"}]}, "selects block"),
        ({"lr_search": {"lrs": [0.001, float("inf")], "split": "dev", "eval_items": 2}}, "finite"),
        ({"seeds": [2**64]}, "seed"),
        ({"seeds": [-1]}, "seed"),
    ],
    ids=["band-selects-nothing", "band-past-the-last-block", "lr-search-inf", "seed-2**64", "seed-negative"],
)
def test_8_9_grid_errors_are_caught_before_the_first_cell(tmp_path, over, fragment):
    grid = tmp_path / "g.yaml"
    grid.write_text(json.dumps(GRID | over).replace("Infinity", ".inf"))  # JSON has no inf; YAML's is .inf
    out = tmp_path / "o"
    rc, _, err = run_cli("compare", "--config", str(grid), "--out", str(out), "--no-progress")
    _one_line(rc, err, fragment)
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


@pytest.mark.parametrize("seed", [str(2**64), str(2**32), "-1"])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_9_a_seed_out_of_range_is_one_line(tmp_path, seed, command):
    out = tmp_path / "t"
    more = ["--steps", "1"] if command == "train" else ["--task", "arith", "--eval-items", "1"]
    model = ["--model", TINY]
    rc, _, err = run_cli(command, *model, *more, "--seed", seed, "--out", str(out))
    _one_line(rc, err, "--seed")
    assert not out.exists()


def test_9_the_python_api_refuses_the_seed_too():
    from midblock.tuning.trainconfig import TrainConfig

    with pytest.raises(MidblockError, match="--seed must be an integer"):
        TrainConfig(model=TINY, out="unused", seed=2**64)


# --------------------------------------------------------------------------- 10. one-line errors


def test_10_export_input_errors_are_one_line_exit_2(tmp_path, finished, capsys):
    from midblock.experiments.export import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    x = tmp_path / "x"
    assert main(["export", str(finished), str(x)]) == 0
    capsys.readouterr()
    torn, bad_items, no_export = tmp_path / "torn", tmp_path / "bad_items", tmp_path / "nothing"
    for d in (torn, bad_items):
        shutil.copytree(x, d)
    (torn / "cells.jsonl").write_text((x / "cells.jsonl").read_text()[:-40])
    (bad_items / "items.csv").write_text("phase,arm\nmain,lora\n")
    no_export.mkdir()
    (no_export / "compare.json").write_text("{}")
    cases = [
        (["export", str(tmp_path / "missing"), str(tmp_path / "d1")], "no finished comparison"),
        (["export", str(tmp_path / "empty"), str(tmp_path / "d2")], "no finished comparison"),
        (["export", str(finished), str(tmp_path / "a_file")], "is a file"),
        (["export", str(finished), str(finished)], "comparison itself"),
        (["derive", str(torn)], "invalid JSON"),
        (["derive", str(bad_items)], "columns"),
        (["derive", str(tmp_path / "missing")], "no export"),
        (["derive", str(no_export)], "not a comparison"),
        (["state", str(tmp_path / "empty"), str(tmp_path / "d3")], "no comparison cells"),
    ]
    cases.append((["derive", str(x), "nosucharm"], "unknown arm 'nosucharm'"))
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        _one_line(2, captured.err, fragment)
        assert captured.out == "", argv  # nothing half-printed (derive printed its header before checking)


def test_10_export_never_writes_over_files_it_did_not_write(tmp_path, finished, capsys):
    from midblock.experiments.export import main

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "compare.md").write_text("my own notes")
    (dest / "README.md").write_text("mine")
    assert main(["export", str(finished), str(dest)]) == 2
    _one_line(2, capsys.readouterr().err, "compare.md")
    assert (dest / "compare.md").read_text() == "my own notes"
    (dest / "compare.md").unlink()
    assert main(["export", str(finished), str(dest)]) == 0  # other files beside an export are left alone
    assert main(["export", str(finished), str(dest)]) == 0  # and an earlier export is replaced
    assert (dest / "README.md").read_text() == "mine"


def test_10_compare_config_directory_and_non_utf8_yaml_are_one_line(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model: random:llama-tiny  # caf\xe9\n".encode("latin-1"))
    for path, fragment in ((tmp_path, "not a regular file"), (latin, "UTF-8")):
        rc, _, err = run_cli("compare", "--config", str(path), "--out", str(tmp_path / "o"))
        _one_line(rc, err, fragment)


def test_10_correlate_non_utf8_metrics_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_bytes(b"variant,dataset,layer,depth,metric,value\nv\xe9,d,0,0.0,m,1.0\n")
    rc, _, err = run_cli("correlate", str(run), "--out", str(tmp_path / "c"))
    _one_line(rc, err, "UTF-8")


# --------------------------------------------------------------------------- 11. FIFOs


@pytest.fixture
def fifo(tmp_path):
    """A FIFO, and a helper that keeps opening its writing end so that a reader blocked in open() would
    read end-of-file instead of hanging the test (before the fix, the commands read it as empty)."""
    path = tmp_path / "data.jsonl"
    os.mkfifo(path)
    stop = threading.Event()

    def unblock():
        while not stop.is_set():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet
                pass
            stop.wait(0.05)

    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    yield path
    stop.set()
    t.join()


@pytest.mark.parametrize("command", ["train", "eval-ppl", "analyze"])
def test_11_a_fifo_as_data_is_refused(tmp_path, fifo, command):
    out = str(tmp_path / "o")
    argv = {
        "train": ["train", "--model", TINY, "--task", "jsonl", "--data", str(fifo), "--steps", "1", "--out", out],
        "eval-ppl": ["eval", "--model", TINY, "--task", "ppl", "--data", str(fifo), "--out", out],
        "analyze": ["analyze", "--base", TINY, "--data", str(fifo), "--samples", "2", "--out", out],
    }[command]
    rc, _, err = run_cli(*argv)
    _one_line(rc, err, "is a FIFO")


# --------------------------------------------------------------------------- 12. JSONL records split on "\n" only


def test_12_a_raw_line_separator_inside_a_json_string_is_valid_jsonl(tmp_path):
    from midblock.data.jsonl import read_jsonl
    from midblock.evaluation.ppl import load_texts
    from midblock.io import read_jsonl_tolerant

    f = tmp_path / "u2028.jsonl"
    text = "two\u2028lines and a next-line\u0085mark"
    f.write_text(json.dumps({"prompt": text, "completion": " ok"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert "\u2028" in f.read_text(encoding="utf-8")  # raw, not escaped
    assert read_jsonl(f)[0]["prompt"] == text
    assert read_jsonl_tolerant(f)[0]["prompt"] == text
    assert load_texts(f) == [text + " ok"]
    rc, _, err = run_cli(
        "train", "--model", TINY, "--task", "jsonl", "--data", str(f), "--steps", "1", "--batch-size", "1",
        "--no-progress", "--out", str(tmp_path / "t"),
    )  # fmt: skip
    assert rc == 0, err


# --------------------------------------------------------------------------- 13. MIDBLOCK_CACHE


def test_13_a_cache_that_is_a_file_says_so(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    monkeypatch.setenv("MIDBLOCK_CACHE", str(cache))
    rc, _, err = run_cli("layers", "smollm2-135m")
    line = _one_line(rc, err, "MIDBLOCK_CACHE")
    assert "check the name" not in line and str(cache) in line


# --------------------------------------------------------------------------- 14. an adapter on another base


def test_14_an_adapter_applied_to_another_base_warns_loudly(tmp_path, run_dir, caplog):
    adapter = run_dir / "adapter"
    for base, warned in (("random:qwen2-tiny", True), (TINY, False)):
        caplog.clear()
        out = tmp_path / base.replace(":", "_")
        rc, _, err = run_cli(
            "eval", "--model", f"{base}+{adapter}", "--task", "arith", "--eval-items", "1", "--out", str(out)
        )
        assert rc == 0, err
        hits = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "trained on" in r.getMessage()]
        assert bool(hits) == warned, hits
        if warned:
            assert TINY in hits[0] and "random:qwen2-tiny" in hits[0]


# --------------------------------------------------------------------------- the audit stays true

_DELETERS = ("rmtree", "unlink", "rmdir", "rename", "removedirs")


def _calls_in(source: str, where: str) -> set[tuple[str, str, str]]:
    """(file, enclosing function, call) of every call in ``source`` that can delete or replace a path:
    ``rmtree``, ``unlink``, ``rmdir``, ``rename``, ``os.remove`` and ``os.replace`` / a one-argument
    ``.replace(target)`` (``Path.replace``; ``str.replace`` takes two, ``dataclasses.replace`` is a name)."""
    import ast

    found = set()

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call) and isinstance(child.func, (ast.Attribute, ast.Name)):
                fn = child.func
                name = fn.attr if isinstance(fn, ast.Attribute) else fn.id
                owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else None
                op = None
                if name in _DELETERS:
                    op = name
                elif name == "remove" and owner == "os":
                    op = "os.remove"
                elif name == "replace" and isinstance(fn, ast.Attribute):
                    if owner == "os":
                        op = "os.replace"
                    elif len(child.args) == 1 and not child.keywords:
                        op = "replace"
                if op:
                    found.add((where, ".".join(scope) or "<module>", op))
            visit(child, scope)

    visit(ast.parse(source), [])
    return found


def _delete_and_replace_calls() -> set[tuple[str, str, str]]:
    root = Path(__file__).resolve().parents[2]
    found: set[tuple[str, str, str]] = set()
    for f in sorted((root / "midblock").rglob("*.py")):
        found |= _calls_in(f.read_text(encoding="utf-8"), f.relative_to(root).as_posix())
    return found


def test_the_audit_lists_every_delete_and_replace():
    """docs/safety.md's audit table names every such call (file, function, call), and nothing that is gone."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "safety.md").read_text(encoding="utf-8")
    listed = set()
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("midblock/") and cells[0].endswith(".py"):
            listed.add((cells[0], cells[1], cells[2]))
    found = _delete_and_replace_calls()
    assert found, "the scan found nothing: it is broken"
    assert not found - listed, f"not in docs/safety.md's audit: {sorted(found - listed)}"
    assert not listed - found, f"listed in docs/safety.md but gone from the code: {sorted(listed - found)}"


def test_the_audit_scan_sees_a_new_delete():
    """The scan is not blind: each kind of call is found, with its function; str and dataclasses
    ``replace`` are not."""
    src = (
        "import os, shutil\nfrom dataclasses import replace\n"
        "class C:\n    def clean(self, p, q):\n        shutil.rmtree(p)\n        p.replace(q)\n"
        "def g(p):\n    os.remove(p)\n    p.unlink()\n    os.replace(p, 'x')\n    'a'.replace('a', 'b')\n"
        "    replace(p, x=1)\n"
    )
    assert _calls_in(src, "m.py") == {
        ("m.py", "C.clean", "rmtree"),
        ("m.py", "C.clean", "replace"),
        ("m.py", "g", "os.remove"),
        ("m.py", "g", "unlink"),
        ("m.py", "g", "os.replace"),
    }


# --------------------------------------------------------------------------- the helpers, one by one


def test_check_data_file_accepts_regular_files_and_links_to_them(tmp_path):
    import socket

    from midblock.data.jsonl import check_data_file

    f = tmp_path / "d.jsonl"
    f.write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(f)
    assert check_data_file(tmp_path / "link.jsonl") == tmp_path / "link.jsonl"
    with pytest.raises(MidblockError, match="does not exist"):
        check_data_file(tmp_path / "missing.jsonl")
    with pytest.raises(MidblockError, match="is a directory"):
        check_data_file(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s.jsonl"))
        with pytest.raises(MidblockError, match="not a regular file"):
            check_data_file(tmp_path / "s.jsonl")
    finally:
        sock.close()


def test_check_save_dir(tmp_path):
    from midblock.surgery.interpolate import SAVE_MARKER, check_save_dir

    check_save_dir(tmp_path / "new")  # new: fine
    (tmp_path / "empty").mkdir()
    check_save_dir(tmp_path / "empty")  # empty: fine
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text("{}")
    (ours / SAVE_MARKER).write_text(json.dumps({"files": ["config.json", SAVE_MARKER]}))
    check_save_dir(ours)  # every file listed by its marker
    (ours / "extra.bin").write_text("x")
    with pytest.raises(MidblockError, match="extra.bin"):
        check_save_dir(ours)
    (ours / SAVE_MARKER).write_text("[1, 2]")  # a marker of the wrong shape proves nothing
    with pytest.raises(MidblockError):
        check_save_dir(ours)
    with pytest.raises(MidblockError, match="holds --out"):
        check_save_dir(tmp_path / "a", out=tmp_path / "a" / "b")


def test_cache_dir_under_a_file_names_the_variable(tmp_path, monkeypatch):
    from midblock.models.loading import cache_dir

    monkeypatch.setenv("MIDBLOCK_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"  # not there yet: created when first needed
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("MIDBLOCK_CACHE", str(tmp_path / "f" / "below"))
    with pytest.raises(MidblockError, match="MIDBLOCK_CACHE .* is a file"):
        cache_dir()


def test_warn_if_other_base_reads_midblocks_record_then_peft(tmp_path, caplog):
    from midblock.models.loading import ADAPTER_META, ModelSpec, warn_if_other_base

    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    spec = ModelSpec("random", "qwen2-tiny", adapter=str(ad), original="x", given_base="random:qwen2-tiny")
    assert warn_if_other_base(spec) is None  # nothing recorded: nothing to compare
    (ad / ADAPTER_META).write_text(json.dumps({"base": "random:llama-tiny"}))
    assert "random:llama-tiny" in warn_if_other_base(spec)
    assert any("OTHER BASE" in r.getMessage() for r in caplog.records)
    (ad / ADAPTER_META).unlink()
    model_dir = tmp_path / "base"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model_dir)}))
    same = ModelSpec("hf", str(model_dir), adapter=str(ad), original="x", given_base=f"{tmp_path}/./base")
    assert warn_if_other_base(same) is None  # the same directory, written another way


def test_a_failed_new_run_removes_only_a_directory_that_held_nothing_else(tmp_path):
    """train removes the directory of a new run that failed before its first checkpoint only when it held
    nothing but the run's own files: a user's file beside it keeps the directory (and the file)."""
    argv = ["train", "--model", TINY, "--steps", "3", "--batch-size", "2", "--lr", "1e30", "--no-progress"]
    rc, _, err = run_cli(*argv, "--out", str(tmp_path / "new"))
    _one_line(rc, err, "loss is nan")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    rc, _, err = run_cli(*argv, "--out", str(tmp_path / "mine"))
    _one_line(rc, err, "loss is nan")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"
