"""The repository stands alone: nothing a reader gets names a file outside it.

The project's machines keep data and notes beside the checkout; code, docs and recorded bench commands must say
what they rely on in their own words and write the GSM8K copy as ``$GSM8K_DIR`` (or ``--data DIR``). The one
allowed mention is the Makefile's default ``GSM8K_DIR``, where CI's machines keep GSM8K: it is a setting, not a
citation, and every command takes another."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = ("../shared", "/work/shared", "shared/spec", "shared/seed")
THIS = "tests/test_standalone.py"  # names the strings it looks for
READ = (".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".cfg", ".txt")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to list the repository's files")
    # studies/*/state holds raw results, whose provenance records the paths a study ran under
    return [REPO / f for f in out.splitlines() if f.endswith(READ) and "/state/" not in f and f != THIS]


def test_no_file_cites_a_path_outside_the_repository():
    hits = []
    for path in _tracked():
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(s in line for s in OUTSIDE):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_bench_records_write_the_gsm8k_copy_as_a_variable(monkeypatch):
    """bench/machine.py's ``shown_argv``: what a bench script records as its command names no local path."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from machine import shown_argv

    argv = ["--data", "/home/me/gsm8k", "--steps", "3"]
    assert shown_argv(argv, "/home/me/gsm8k") == ["--data", "$GSM8K_DIR", "--steps", "3"]
    assert shown_argv(argv, None) == argv
