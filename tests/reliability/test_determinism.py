"""Same command and seed -> identical numbers on the CPU; the seed covers data order, dropout and the
adapter's initialisation (a different seed changes them)."""

import json

import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

TRAIN = [
    "train",
    "--model",
    "random:llama-tiny",
    "--task",
    "arith",
    "--train-rows",
    "32",
    "--steps",
    "3",
    "--batch-size",
    "2",
    "--dropout",
    "0.1",
    "--no-progress",
]


def _train(out, seed):
    rc, _, err = run_cli(*TRAIN, "--seed", str(seed), "--out", str(out))
    assert rc == 0, err
    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_training_is_deterministic_and_seeded(tmp_path):
    a, b, c = _train(tmp_path / "a", 1), _train(tmp_path / "b", 1), _train(tmp_path / "c", 2)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert la == lb


def test_evaluation_and_analysis_are_deterministic(tmp_path):
    outs = []
    for name in ("e1", "e2"):
        rc, _, err = run_cli(
            "eval",
            "--model",
            "random:llama-tiny",
            "--task",
            "arith",
            "--protocol",
            "lm-eval",
            "--eval-items",
            "3",
            "--max-new-tokens",
            "12",
            "--no-progress",
            "--out",
            str(tmp_path / name),
        )
        assert rc == 0, err
        outs.append([(r["prompt"], r["completion"]) for r in map(json.loads, open(tmp_path / name / "items.jsonl"))])
    assert outs[0] == outs[1]
    csvs = []
    for name in ("a1", "a2"):
        rc, _, err = run_cli(
            "analyze",
            "--base",
            "random:llama-tiny",
            "--variant",
            "random:llama-tiny",
            "--data",
            "arith",
            "--samples",
            "6",
            "--out",
            str(tmp_path / name),
        )
        assert rc == 0, err
        csvs.append((tmp_path / name / "metrics.csv").read_text())
    assert csvs[0] == csvs[1]
