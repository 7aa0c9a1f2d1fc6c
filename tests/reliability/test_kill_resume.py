"""kill -9 and SIGINT at several points of a tiny training run, then ``--resume``: the final weights are
bit-identical to an uninterrupted run (CPU, fp32, fixed seed)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli

ARGS = [
    "train",
    "--model",
    "random:llama-tiny",
    "--task",
    "arith",
    "--train-rows",
    "64",
    "--steps",
    "8",
    "--batch-size",
    "2",
    "--save-every",
    "1",
    "--seed",
    "3",
    "--no-progress",
]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def _steps_logged(run: Path) -> int:
    log = run / "train_log.jsonl"
    if not log.exists():
        return 0
    steps = []
    for line in log.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:
            pass
    return max(steps, default=0)


def _start(out: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "midblock.cli", *ARGS, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, timeout: float = 240) -> None:
    t0 = time.time()
    while _steps_logged(run) < step:
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {step}: {proc.stderr.read()[-1500:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"no step {step} within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    rc, _, err = run_cli(*ARGS, "--out", str(out))
    assert rc == 0, err
    return _adapter(out)


@pytest.mark.parametrize("kill_after", [0, 2, 5])
def test_kill_9_then_resume_gives_identical_weights(tmp_path, reference, kill_after):
    out = tmp_path / "run"
    proc = _start(out)
    if kill_after:
        _wait_for_step(proc, out, kill_after)
    else:  # during start-up, before any checkpoint exists
        t0 = time.time()
        while not out.exists() and time.time() - t0 < 120 and proc.poll() is None:
            time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "COMPLETED").exists()
    rc, _, err = run_cli(*ARGS, "--resume", "--out", str(out))  # the stale lock of the dead process is taken over
    assert rc == 0, err
    got = _adapter(out)
    assert got.keys() == reference.keys()
    for k in got:
        assert torch.equal(got[k], reference[k]), k


def test_sigint_stops_at_a_step_boundary_with_a_checkpoint(tmp_path, reference):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert rc != 0 and "Traceback" not in err
    assert not (out / "COMPLETED").exists() and any((out / "checkpoints").iterdir())
    rc, _, err = run_cli(*ARGS, "--resume", "--out", str(out))
    assert rc == 0, err
    got = _adapter(out)
    assert all(torch.equal(got[k], reference[k]) for k in reference)
