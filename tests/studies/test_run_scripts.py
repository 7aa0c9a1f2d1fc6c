"""Each study's ``run.sh`` as its README runs it: alone, with the defaults (no MIDBLOCK or PYTHON in the
environment: ``.venv/bin/`` of the checkout), on a stand-in ``midblock`` that records its calls and writes the
minimal compare.json the scripts read. Checks the order of the commands, the arguments that key the grids and
the rerun check's ``--reuse-only``; the commands themselves are tested in tests/experiments and tests/cli."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUDIES = sorted(p.parent.name for p in (REPO / "studies").glob("*/run.sh"))
pytestmark = pytest.mark.skipif(
    os.name == "nt" or not shutil.which("bash"),
    reason="runs the studies' bash scripts against a POSIX .venv/bin layout: needs bash on a POSIX system",
)

# compare: one main cell in DIR/compare.json (and the chosen rate a search reads); its cell.json names a run_dir
# elsewhere (analyze-arms.sh analyses the train/ beside it). export: copies compare.json. Every call: one line
# in $FAKE_LOG.
FAKE = r"""#!/bin/bash
echo "$*" >>"$FAKE_LOG"
cmd=$1; shift
out=; from=; dest=
while [ $# -gt 0 ]; do
  case $1 in --out) out=$2; shift;; --from) from=$2; shift;; --dest) dest=$2; shift;; --estimate) exit 0;; esac
  shift
done
case $cmd in
compare)
  mkdir -p "$out/cells/uniform__s0-k/eval-e"
  echo '{"label": "uniform", "seed": 0, "run_dir": "RUN"}' >"$out/cells/uniform__s0-k/eval-e/cell.json"
  echo '{"table_cells": [{"dir": "cells/uniform__s0-k/eval-e", "phase": "main"}],
         "lr_search": [{"lr": 0.001, "chosen": false}, {"lr": 0.0016, "chosen": true}]}' >"$out/compare.json";;
export) mkdir -p "$dest" && cp "$from/compare.json" "$dest/";;
esac
"""


@pytest.fixture
def tree(tmp_path):
    """A checkout holding the real studies/ and a .venv/bin with the stand-in midblock and this Python."""
    shutil.copytree(REPO / "studies", tmp_path / "studies", ignore=shutil.ignore_patterns("state"))
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "midblock").write_text(FAKE)
    (bin_ / "midblock").chmod(0o755)
    (bin_ / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("MIDBLOCK", "PYTHON", "OUT", "REUSE_ONLY", "THREADS")}
    return tmp_path, env | {"FAKE_LOG": str(tmp_path / "calls.log")}


def _run(root, env, study):
    """The script's result and the stand-in's calls so far, one list of arguments each."""
    r = subprocess.run(["bash", f"studies/{study}/run.sh"], cwd=root, env=env, capture_output=True, text=True)
    return r, [line.split() for line in (root / "calls.log").read_text().splitlines()]


@pytest.mark.parametrize("study", STUDIES)
def test_run_sh_runs_alone_with_its_defaults(tree, study):
    root, env = tree
    r, calls = _run(root, env, study)
    assert r.returncode == 0, r.stderr
    commands = [c[0] for c in calls]
    analyses = "analyze-arms.sh" in (REPO / "studies" / study / "run.sh").read_text()
    assert commands[-2:] == ["analyze", "profiles"] if analyses else commands[-1] == "compare"
    main = [c for c in calls if c[0] == "compare" and "--estimate" not in c][-1]
    assert main[main.index("--out") + 1] == f"runs/{study}"
    if analyses:  # the analyses read the main grid's runs, each into its own directory
        analyze = calls[commands.index("analyze")]
        run = f"runs/{study}/cells/uniform__s0-k/train"  # beside the evaluation, not cell.json's run_dir
        assert analyze[analyze.index("--variant") + 1] == run and f"runs/{study}/analysis-uniform-s0" in analyze
        assert calls[-1] == ["profiles", f"uniform=runs/{study}/analysis-uniform-s0", "--out", f"runs/{study}/profiles"]
    if study == "paper-protocol-replay":  # the main grid trains at the rate the search chose
        assert main[main.index("--lr") + 1] == "0.0016" and "--seeds" in main
    if (REPO / "studies" / study / "cost_estimate.json").exists():
        assert not any("--estimate" in c for c in calls)  # the committed estimate is the one the design quotes
    # fp32 pinned (or in the grid's config): `auto` would key a different grid on a CPU with native bf16
    config = [c[c.index("--config") + 1] for c in calls if "--config" in c]
    pinned = [c[c.index("--precision") + 1] for c in calls if "--precision" in c]
    assert pinned == ["fp32"] * len(pinned) and (pinned or "precision: fp32" in (root / config[0]).read_text())


@pytest.mark.parametrize("study", STUDIES)
def test_the_rerun_check_computes_nothing(tree, study):
    """REUSE_ONLY=1: every compare gets --reuse-only, and an analysis not finished stops the script (exit 2)."""
    root, env = tree
    env = env | {"REUSE_ONLY": "1"}
    r, calls = _run(root, env, study)
    assert all("--reuse-only" in c for c in calls if c[0] == "compare")
    assert "analyze" not in [c[0] for c in calls]
    if "analyze-arms.sh" in (REPO / "studies" / study / "run.sh").read_text():
        assert r.returncode == 2 and "analysis-uniform-s0 is not finished" in r.stderr
        (root / "runs" / study / "analysis-uniform-s0").mkdir(parents=True)
        (root / "runs" / study / "analysis-uniform-s0" / "COMPLETED").touch()
        r, _ = _run(root, env, study)
    assert r.returncode == 0, r.stderr
    assert json.loads((root / "runs" / study / "compare.json").read_text())["table_cells"]
