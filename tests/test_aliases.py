"""One name per concept (midblock/aliases.py): the old names still work, with one warning, and a result keyed
before the rename keeps its key.

The digests below were computed with the code *before* the rename (the names ``limit``, ``eval_limit``,
``head_at_labels``; package version pinned to 0.2.0 so that a release does not move them): every key built
from the new names must equal them, so no stored cell, run, evaluation, surgery or demo is recomputed."""

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

import midblock.fingerprint as fingerprint
from midblock.aliases import RENAMED, RenamedWarning, renamed, renamed_kwargs, stored, stored_grid, table
from midblock.errors import MidblockError
from midblock.evaluation.config import EvalConfig
from midblock.experiments.grid import CompareConfig, preset
from midblock.tuning.trainconfig import TrainConfig

PUBLISHED = Path(__file__).resolve().parents[1] / "docs" / "results" / "band-landscape" / "compare.json"
MODEL = "random:llama-tiny"


@pytest.fixture
def pinned_version(monkeypatch):
    monkeypatch.setattr(fingerprint, "package_version", lambda: "0.2.0")


def _grid_keys(grid: dict) -> str:
    """One digest over every training key (cells and learning-rate search), the test and dev evaluation keys
    and the forgetting key of a grid, as ``compare`` builds them."""
    from midblock.experiments.runner import Keys, forgetting_texts

    cc = CompareConfig.from_dict(grid)
    keys = Keys(cc, forgetting_texts(cc))
    out = []
    for cell in cc.cells() + cc.search_cells():
        if cell.tuning.get("band") == "auto":  # resolved from the grid's own analysis when it runs
            cell = replace(cell, tuning=cell.tuning | {"band": "1-2"})
        out.append([cell.label, cell.seed, keys.training(cell)["key"]])
    out.append(keys.evaluation(cc.eval_config())["key"])
    if cc.lr_search:
        out.append(keys.evaluation(cc.search_config())["key"])
    out.append(keys.evaluation(None)["key"])
    return fingerprint.digest(out)


def _custom(old: bool) -> dict:
    """A grid that sets every renamed setting, in the old or the new spelling."""
    n = {"items": "eval_limit", "rows": "limit", "loss": "eval_limit", "head": "head_at_labels"} if old else {}
    return {
        "model": MODEL,
        "task": "arith",
        "eval_task": "arith",
        n.get("items", "eval_items"): 7,
        "seeds": [0, 1],
        "train": {"steps": 3, n.get("rows", "train_rows"): 50, n.get("loss", "eval_loss_items"): 5}
        | {n.get("head", "labelled_head"): False},
        "methods": [
            {"name": "a", "method": "lora"},
            {"name": "b", "method": "midblock", "band": "1-1", "train": {n.get("rows", "train_rows"): 20}},
        ],
        "lr_search": {"lrs": [1e-3, 2e-3], n.get("items", "eval_items"): 9},
        "forgetting": {"data": "general", "limit": 3},
    }


# ----------------------------------------------------------------------------- keys made before the rename


@pytest.mark.parametrize(
    "name, key",
    [
        ("band-landscape", "eaefa1a9a1328465"),
        ("paper-protocol", "0fc35afc07d8116c"),  # train_rows: 2000
        ("quick", "a965187831b51cdb"),  # eval_loss_items: 16
        ("smoke", "ace76190bf69084a"),
    ],
)
def test_preset_cells_keep_the_keys_they_had_before_the_rename(pinned_version, name, key):
    grid = preset(name) | {"model": MODEL}
    if grid["task"] == "gsm8k":  # the same settings on the built-in data
        grid |= {"task": "arith", "eval_task": "arith"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RenamedWarning)  # the presets use the new names only
        assert _grid_keys(grid) == key


def test_the_published_band_landscape_grid_keeps_its_keys(pinned_version):
    """docs/results/band-landscape/compare.json holds the grid in the old spelling (eval_limit, lr_search's
    eval_limit): read as it is, it still runs (warning once per old name) and every key is the one before."""
    config = json.loads(PUBLISHED.read_text())["config"] | {"model": MODEL}
    assert "eval_limit" in config and "eval_limit" in config["lr_search"]
    with pytest.warns(RenamedWarning, match="'eval_limit' is deprecated, use 'eval_items'"):
        assert _grid_keys(config) == "004c8ae546f81393"


@pytest.mark.parametrize("old", [False, True], ids=["new names", "old names"])
def test_a_grid_setting_every_renamed_key_keeps_its_keys_in_either_spelling(pinned_version, old):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _grid_keys(_custom(old)) == "9833be52f14339d4"
    said = sorted(str(w.message) for w in caught if issubclass(w.category, RenamedWarning))
    if not old:
        assert said == []
    else:  # one warning per old name, naming where it was and the new name
        assert said == [
            "lr_search: 'eval_limit' is deprecated, use 'eval_items'",
            "the grid: 'eval_limit' is deprecated, use 'eval_items'",
            "train of method entry 'b': 'limit' is deprecated, use 'train_rows'",
            "train: 'eval_limit' is deprecated, use 'eval_loss_items'",
            "train: 'head_at_labels' is deprecated, use 'labelled_head'",
            "train: 'limit' is deprecated, use 'train_rows'",
        ]


def test_run_evaluation_surgery_and_demo_fingerprints_keep_their_keys(pinned_version):
    from midblock.evaluation.evaluate import eval_fingerprint
    from midblock.experiments.demo import DemoConfig, _fingerprint
    from midblock.surgery.config import SwapConfig
    from midblock.surgery.runs import surgery_fingerprint

    tc = TrainConfig(out="x", train_rows=11, eval_loss_items=3, labelled_head=False)
    assert fingerprint.digest(tc.fingerprint()) == "d013897deef96e21"  # what train --resume compares
    assert fingerprint.digest(TrainConfig(out="x").fingerprint()) == "067ad15bba0fc2a2"
    assert eval_fingerprint(EvalConfig(task="arith", eval_items=5, split="dev"), {"m": 1})["key"] == "8bd679cde6b59c82"
    sw = SwapConfig(base=MODEL, variant=MODEL, out="x", segments=2, eval_items=4, task="arith")
    models = {"recipient": (MODEL, 0), "donor": (MODEL, 1)}
    assert surgery_fingerprint(sw, models)["key"] == "36b8cd5021dafaa3"
    assert _fingerprint(DemoConfig(model=MODEL, profile="smoke", eval_items=3))["key"] == "f30fecc527ac3bf2"
    assert _fingerprint(DemoConfig(model=MODEL, profile="quick", precision="fp32"))["key"] == "9e175cb429561e70"


def test_stored_spelling_maps_every_new_name_back():
    for where, names in RENAMED.items():
        new = {v: i for i, v in enumerate(names.values())}
        assert stored(new, where) == {k: new[v] for k, v in names.items()}
    grid = stored_grid(_custom(old=False))
    assert grid == _custom(old=True)


# ----------------------------------------------------------------------------- old names in the library


def test_old_names_in_dicts_and_constructors_work_and_warn_once_each():
    with pytest.warns(RenamedWarning) as w:
        tc = TrainConfig.from_dict({"out": "x", "limit": 5, "eval_limit": 2, "head_at_labels": False})
    assert (tc.train_rows, tc.eval_loss_items, tc.labelled_head) == (5, 2, False)
    assert len(w) == 3
    with pytest.warns(RenamedWarning, match=r"TrainConfig\(\): 'limit' is deprecated, use 'train_rows'"):
        assert TrainConfig(out="x", limit=4).train_rows == 4
    with pytest.warns(RenamedWarning, match=r"EvalConfig\(\): 'limit' is deprecated, use 'eval_items'"):
        assert EvalConfig(task="arith", limit=3).eval_items == 3
    from midblock.surgery.config import InterpolateConfig

    with pytest.warns(RenamedWarning, match=r"InterpolateConfig\(\): 'limit'"):  # a subclass: its base's names
        assert InterpolateConfig(base=MODEL, variant=MODEL, out="x", limit=2).eval_items == 2
    with pytest.warns(RenamedWarning, match="the grid: 'eval_limit'"):
        assert CompareConfig.from_dict(_custom(old=True)).eval_items == 7


def test_a_saved_train_config_of_an_older_version_reads_without_a_warning():
    """``train --resume`` of a run made before the rename: its train_config.json has the old names."""
    old = TrainConfig(out="x", train_rows=6).to_dict()
    old = {{"train_rows": "limit", "eval_loss_items": "eval_limit"}.get(k, k): v for k, v in old.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RenamedWarning)
        again = TrainConfig.from_dict(old, warn=False)
    assert again.fingerprint() == TrainConfig(out="x", train_rows=6).fingerprint()


@pytest.mark.parametrize(
    "make",
    [
        lambda: TrainConfig.from_dict({"out": "x", "limit": 5, "train_rows": 5}),
        lambda: TrainConfig(out="x", head_at_labels=False, labelled_head=False),
        lambda: CompareConfig.from_dict(_custom(old=False) | {"eval_limit": 3}),
        lambda: CompareConfig.from_dict(_custom(old=False) | {"train": {"train_rows": 3, "limit": 3}}),
        lambda: CompareConfig.from_dict(
            _custom(old=False) | {"lr_search": {"lrs": [1e-3], "eval_limit": 2, "eval_items": 2}}
        ),
    ],
    ids=["train dict", "constructor", "grid", "grid train", "lr_search"],
)
def test_the_old_and_the_new_name_together_is_one_line(make):
    with pytest.raises(MidblockError, match="has both|got both") as e:
        make()
    assert "\n" not in str(e.value) and ("keep only" in str(e.value) or "pass only" in str(e.value))


def test_renamed_keyword_arguments():
    @renamed_kwargs(out_dir="out")
    def write(rows, *, out=None):
        return out

    with pytest.warns(RenamedWarning, match=r"write\(\): 'out_dir' is deprecated, use 'out'"):
        assert write([], out_dir="d") == "d"
    with pytest.raises(MidblockError, match="got both 'out_dir' and 'out'"):
        write([], out_dir="d", out="e")
    # the public functions that took an old keyword still take it
    from midblock.evaluation.evaluate import evaluate, evaluate_model
    from midblock.reporting.plots import plot_profiles
    from midblock.surgery.interpolate import save_interpolation
    from midblock.tuning.loss import causal_lm_loss
    from midblock.tuning.trainers import MidBlockCallback

    for fn in (evaluate, evaluate_model, plot_profiles, save_interpolation, causal_lm_loss):
        assert hasattr(fn, "__wrapped__"), fn
    with pytest.warns(RenamedWarning, match=r"MidBlockCallback\(\): 'head_at_labels'"):
        assert MidBlockCallback(head_at_labels=False).labelled_head is False


def test_the_table_covers_subclasses_and_leaves_other_keys_alone():
    from midblock.surgery.config import SwapConfig

    assert table(SwapConfig) == {"limit": "eval_items"}
    assert renamed({"forgetting": {"limit": 3}, "seeds": [0]}, CompareConfig) == {
        "forgetting": {"limit": 3},
        "seeds": [0],
    }
