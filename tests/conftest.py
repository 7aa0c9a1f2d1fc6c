"""Shared fixtures: tiny random models (built once per session), the byte tokenizer, GSM8K location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `auto` precision trains in fp32 in the tests, on every CPU: their numbers and run time must not depend on
# whether the machine has bf16 instructions (tests that check bf16 ask for it; test_precision.py simulates both)
os.environ["MIDBLOCK_CPU_BF16"] = "0"

REPO = Path(__file__).resolve().parents[1]
LOCAL_GSM8K = REPO.parent / "shared" / "data" / "gsm8k"


def gsm8k_dir() -> Path | None:
    env = os.environ.get("MIDBLOCK_GSM8K")
    for p in (Path(env) if env else None, LOCAL_GSM8K):
        if p is not None and (p / "test.jsonl").exists():
            return p
    return None


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    p = gsm8k_dir()
    if p is None:
        pytest.skip("no local GSM8K copy (set MIDBLOCK_GSM8K)")
    return p


@pytest.fixture
def tokenizer():
    from midblock.models.presets import byte_tokenizer

    return byte_tokenizer()


@pytest.fixture
def tiny():
    """A factory: tiny(preset='llama-tiny', seed=0) -> fresh (model, tokenizer), fp32, eval mode."""
    from midblock.models import load_model

    def make(preset: str = "llama-tiny", seed: int = 0):
        return load_model(f"random:{preset}", seed=seed)

    return make


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process, returning (exit status, stdout, stderr)."""
    import contextlib
    import io

    from midblock.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()
