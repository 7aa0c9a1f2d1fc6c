"""``studies/session.sh``, the script the long studies run under, on fake studies: a stand-in ``midblock``
that sleeps as ``compare`` and records ``export``, so the lanes, the stop and the publish checks run in
seconds. The real commands the studies call are tested in tests/experiments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not (shutil.which("pgrep") and shutil.which("ps")),
    reason="session.sh finds its processes with pgrep and ps (procps) under /proc",
)

# compare --out DIR [--reuse-only]: DIR/seconds long (SIGTERM: exit 130, as midblock after a checkpoint), then
# DIR/done; with --reuse-only, exit 2 unless done. export, profiles: one line of its arguments in $FAKE_LOG.
FAKE = r"""#!/bin/bash
cmd=$1; shift
if [ "$cmd" = export ] || [ "$cmd" = profiles ]; then echo "$cmd $*" >>"$FAKE_LOG"; exit 0; fi
out=; reuse=
while [ $# -gt 0 ]; do case $1 in --out) out=$2; shift;; --reuse-only) reuse=1;; esac; shift; done
[ -f "$out/done" ] && exit 0
[ -z "$reuse" ] || { echo "--reuse-only: $out is not finished" >&2; exit 2; }
trap 'exit 130' TERM
end=$(( $(date +%s%N) + $(cat "$out/seconds") * 1000000 ))
while [ "$(date +%s%N)" -lt "$end" ]; do sleep 0.05; done
touch "$out/done"
"""
RUN = """#!/bin/bash
set -e
cd "$(dirname "$0")/../.."
echo "$THREADS" >"$OUT/threads"
echo "$GRID" >"$OUT/grid"
"$MIDBLOCK" compare --out "$OUT" ${REUSE_ONLY:+--reuse-only}
"""
STUDIES = {"paper-protocol-replay": 1.5, "selection-landscape": 0.3, "gemma-base": 0.3}  # seconds as compare


@pytest.fixture
def tree(tmp_path):
    """A checkout with session.sh and the three studies as fakes; returns (root, env)."""
    (tmp_path / "studies").mkdir()
    shutil.copy(REPO / "studies" / "session.sh", tmp_path / "studies" / "session.sh")
    fake = tmp_path / "bin" / "midblock"
    fake.parent.mkdir()
    fake.write_text(FAKE)
    fake.chmod(0o755)
    for name, seconds in STUDIES.items():
        d = tmp_path / "studies" / name
        d.mkdir()
        (d / "run.sh").write_text(RUN)
        (d / "state").mkdir()
        _set_seconds(tmp_path, name, seconds)  # restored into runs/NAME by start
    env = os.environ | {"MIDBLOCK": str(fake), "PYTHON": sys.executable, "FORCE": "1"}
    return tmp_path, env | {"FAKE_LOG": str(tmp_path / "fake.log")}


def _set_seconds(root, name, seconds):
    (root / "studies" / name / "state" / "seconds").write_text(str(int(seconds * 1000)))


def _session(root, env, *args):
    return subprocess.run(["bash", "studies/session.sh", *args], cwd=root, env=env, capture_output=True, text=True)


def _wait(cond, timeout=30.0):
    t = time.monotonic()
    while not cond():
        assert time.monotonic() - t < timeout, "timed out"
        time.sleep(0.05)


def _started(root, name):
    log = root / "runs" / f"{name}.log"
    return log.exists() and "starts" in log.read_text()


def test_lanes_run_part1_beside_part2_then_gemma(tree):
    root, env = tree
    r = _session(root, env, "start")
    assert r.returncode == 0, r.stderr
    assert "started paper-protocol-replay" in r.stdout and "started selection-landscape, then gemma-base" in r.stdout
    _wait(lambda: all((root / "runs" / n / "done").exists() for n in STUDIES))
    done = {n: (root / "runs" / n / "done").stat().st_mtime for n in STUDIES}
    gemma_log = (root / "runs" / "gemma-base.log").stat().st_mtime
    assert done["selection-landscape"] <= gemma_log  # Gemma started after part 2 finished ...
    assert done["paper-protocol-replay"] > done["selection-landscape"]  # ... while part 1 still ran beside it


def test_a_published_study_is_not_started_again(tree):
    """Part 2 published (its export in docs/results/): the default lanes are part 1 and Gemma, side by side."""
    root, env = tree
    (root / "docs" / "results" / "selection-landscape").mkdir(parents=True)
    (root / "docs" / "results" / "selection-landscape" / "compare.json").write_text("{}")
    r = _session(root, env, "start")
    assert r.returncode == 0, r.stderr
    assert "started paper-protocol-replay" in r.stdout and "started gemma-base at 1 thread(s)" in r.stdout
    _wait(lambda: (root / "runs" / "gemma-base" / "done").exists())
    assert not (root / "runs" / "selection-landscape").exists()
    _wait(lambda: (root / "runs" / "paper-protocol-replay" / "done").exists())


def test_threads_reach_every_study_of_a_lane(tree):
    """THREADS=2: one lane alone on the machine runs each of its studies at two torch threads (default 1)."""
    root, env = tree
    r = _session(root, env | {"THREADS": "2"}, "start", "paper-protocol-replay+gemma-base")
    assert r.returncode == 0, r.stderr
    assert "started paper-protocol-replay, then gemma-base at 2 thread(s)" in r.stdout
    _wait(lambda: (root / "runs" / "gemma-base" / "done").exists())
    assert [(root / "runs" / n / "threads").read_text() for n in ("paper-protocol-replay", "gemma-base")] == ["2\n"] * 2
    r = _session(root, env, "start", "selection-landscape")
    _wait(lambda: (root / "runs" / "selection-landscape" / "done").exists())
    assert (root / "runs" / "selection-landscape" / "threads").read_text() == "1\n"


def test_stop_ends_every_lane_and_no_later_study_starts(tree):
    root, env = tree
    for name in STUDIES:  # long enough that the stop comes first, whatever the load
        _set_seconds(root, name, 30)
    assert _session(root, env, "start").returncode == 0
    _wait(lambda: _started(root, "selection-landscape") and _started(root, "paper-protocol-replay"))
    time.sleep(0.1)  # both fakes are in compare now
    r = _session(root, env, "stop")
    assert r.returncode == 0 and "stopped: 2 process(es)" in r.stdout, r.stdout + r.stderr
    time.sleep(0.5)  # a lane that survived the stop would start Gemma as soon as part 2 ends: it ends now
    assert not _started(root, "gemma-base") and not (root / "runs" / "gemma-base" / "done").exists()
    assert not (root / "runs" / "selection-landscape" / "done").exists()
    assert "no study" in _session(root, env, "stop").stdout
    assert not _processes_in(root)  # the lanes and run.sh went with their studies


def _processes_in(root: Path) -> list[int]:
    """The processes whose working directory is ``root`` (the lanes, run.sh and the fake compare run there)."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and Path(os.readlink(p / "cwd")) == root.resolve():
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def test_publish_refuses_an_unfinished_study_and_part1_before_part2(tree):
    root, env = tree
    (root / "runs" / "selection-landscape").mkdir(parents=True)
    r = _session(root, env, "publish", "selection-landscape")
    assert r.returncode == 1 and "rerun check failed" in r.stderr and "not finished" in r.stderr
    for study in ("paper-protocol-replay", "gemma-base"):  # both are set against part 2's export
        r = _session(root, env, "publish", study)
        assert r.returncode == 2 and "publish selection-landscape first" in r.stderr
    assert not (root / "fake.log").exists()  # nothing exported


def test_save_keeps_each_study_here_with_the_adapters_its_analyses_load(tree):
    root, env = tree
    (root / "runs" / "gemma-base" / "cells").mkdir(parents=True)  # the one study with cells here
    r = _session(root, env, "save")
    assert r.returncode == 0, r.stderr
    dest = root / "studies" / "gemma-base" / "state"
    assert (root / "fake.log").read_text() == f"export --mode state --from runs/gemma-base --dest {dest} --adapters\n"


def test_a_frozen_tree_is_started_from_the_state_save_wrote_here(tree, tmp_path_factory):
    """RUN_FROM: the studies run in another tree, but their state comes from this checkout, where `save` puts
    it; the frozen tree's own state/ is as old as the commit it was checked out at."""
    root, env = tree
    frozen = tmp_path_factory.mktemp("frozen")
    shutil.copytree(root / "studies", frozen / "studies")
    (frozen / "studies" / "gemma-base" / "state" / "seconds").write_text("600000")  # an old state: 10 minutes
    _set_seconds(root, "gemma-base", 0.2)  # the state saved here since
    r = _session(root, env | {"RUN_FROM": str(frozen)}, "start", "gemma-base")
    assert r.returncode == 0, r.stderr
    _wait(lambda: (frozen / "runs" / "gemma-base" / "done").exists())
    assert (frozen / "runs" / "gemma-base" / "seconds").read_text() == "200"
    assert not (root / "runs").exists()


def test_a_second_lane_runs_a_studys_other_grid_into_its_own_directory_and_is_saved_with_it(tree):
    root, env = tree
    (root / "studies" / "gemma-base" / "lane2.yaml").write_text("methods: []\n")
    r = _session(root, env, "start", "gemma-base@nope")
    assert r.returncode == 2 and "no grid studies/gemma-base/nope.yaml" in r.stderr
    r = _session(root, env, "start", "gemma-base", "gemma-base@lane2")
    assert r.returncode == 0, r.stderr
    assert "started gemma-base@lane2 at 1 thread(s)" in r.stdout and "runs/gemma-base-lane2, logs" in r.stdout
    main, lane = root / "runs" / "gemma-base", root / "runs" / "gemma-base-lane2"
    _wait(lambda: (main / "done").exists() and (lane / "done").exists())
    assert (main / "grid").read_text() == "\n" and (lane / "grid").read_text() == "studies/gemma-base/lane2.yaml\n"
    assert (lane / "seconds").exists()  # the study's state, restored into the lane's directory too
    assert "gemma-base@lane2 starts" in (root / "runs" / "gemma-base-lane2.log").read_text()
    for d in (main, lane):
        (d / "cells").mkdir()
    r = _session(root, env, "status")
    assert "gemma-base: 0 evaluated cells" in r.stdout and "gemma-base-lane2: 0 evaluated cells" in r.stdout
    assert _session(root, env, "save").returncode == 0
    dest = root / "studies" / "gemma-base" / "state"
    assert (root / "fake.log").read_text().splitlines() == [
        f"export --mode state --from runs/{d.name} --dest {dest} --adapters" for d in (main, lane)
    ]


def test_publish_a_finished_study_exports_it(tree):
    root, env = tree
    out = root / "runs" / "selection-landscape"
    out.mkdir(parents=True)
    (out / "done").touch()
    (out / "compare.md").write_text("table\n")
    r = _session(root, env, "publish", "selection-landscape")
    assert r.returncode == 0, r.stderr
    assert "1 tables byte-identical" in r.stdout
    dest = root / "docs" / "results" / "selection-landscape"
    assert (root / "fake.log").read_text() == f"export --from runs/selection-landscape --dest {dest}\n"


def test_publish_the_base_model_study_sets_its_bands_against_the_instruct_models(tree):
    root, env = tree
    out = root / "runs" / "gemma-base"
    out.mkdir(parents=True)
    (out / "done").touch()
    part2 = root / "docs" / "results" / "selection-landscape"
    part2.mkdir(parents=True)
    (part2 / "compare.json").write_text("{}")
    script = Path("studies") / "gemma-base" / "instruct-vs-base.sh"
    shutil.copy(REPO / script, root / script)
    r = _session(root, env, "publish", "gemma-base")
    assert r.returncode == 2 and "no analyses of uniform in docs/results/selection-landscape" in r.stderr
    dest = root / "docs" / "results" / "gemma-base"
    for study in ("selection-landscape", "gemma-base"):  # what the exports hold: each arm's analyses
        (root / "docs" / "results" / study / "analyses").mkdir(parents=True, exist_ok=True)
        for arm in ("uniform", "paper", "auto", "lisa"):
            (root / "docs" / "results" / study / "analyses" / f"analysis-{arm}-s0.metrics.csv").touch()
    (root / "fake.log").unlink()
    r = _session(root, env, "publish", "gemma-base")
    assert r.returncode == 0, r.stderr
    runs = [
        f"{m} {a}=docs/results/{s}/analyses/analysis-{a}-s0.metrics.csv"
        for a in ("uniform", "paper", "auto")
        for m, s in (("instruct", "selection-landscape"), ("base", "gemma-base"))
    ]
    assert (root / "fake.log").read_text().splitlines() == [
        f"export --from runs/gemma-base --dest {dest}",
        f"export --mode across --dest {dest} --other {part2}",
        "profiles " + " ".join(runs) + " --out docs/results/gemma-base/instruct-vs-base",
    ]


def test_publish_goes_on_beside_another_study_but_not_the_running_one(tree):
    """Gemma running does not hold up part 1's publish; part 2 running holds up its own."""
    root, env = tree
    for name in ("gemma-base", "selection-landscape"):
        _set_seconds(root, name, 30)
    out = root / "runs" / "paper-protocol-replay"
    out.mkdir(parents=True)
    (out / "done").touch()
    (root / "docs" / "results" / "selection-landscape").mkdir(parents=True)
    (root / "docs" / "results" / "selection-landscape" / "compare.json").write_text("{}")
    assert _session(root, env, "start", "gemma-base").returncode == 0
    _wait(lambda: _started(root, "gemma-base"))
    time.sleep(0.1)
    r = _session(root, env, "publish", "paper-protocol-replay")
    assert r.returncode == 0 and "published" in r.stdout, r.stderr
    assert _session(root, env, "start", "selection-landscape").returncode == 0
    _wait(lambda: _started(root, "selection-landscape"))
    time.sleep(0.1)
    r = _session(root, env, "publish", "selection-landscape")
    assert r.returncode == 2 and "selection-landscape is running" in r.stderr
    assert "stopped: 2 process(es)" in _session(root, env, "stop").stdout


def test_status_shows_finished_cells_and_where_the_grid_stands(tree):
    root, env = tree
    cell = root / "runs" / "gemma-base" / "cells" / "uniform__s0-abc" / "eval-def"
    cell.mkdir(parents=True)
    record = {"label": "uniform", "lr": 0.001, "seed": 0, "ppl": {"ppl": 103.4}}
    record["eval"] = {"n": 200, "primary": "original", "scores": {"original": {"correct": 82}}}
    (cell / "cell.json").write_text(json.dumps(record))
    (root / "runs" / "gemma-base.log").write_text(
        "INFO midblock.experiments.runner: learning-rate search 2/12: uniform at lr 0.002 (seed 0, dev split)\n"
        "INFO midblock.experiments.runner: learning-rate search 3/12: uniform at lr 0.004 (seed 0, dev split)\n"
    )
    r = _session(root, env, "status")
    assert r.returncode == 0, r.stderr
    assert "gemma-base: 1 evaluated cells" in r.stdout and "82/200 =  41.0%  ppl 103.4" in r.stdout
    assert "last started: learning-rate search 3/12: uniform at lr 0.004" in r.stdout
    assert "selection-landscape: not started here" in r.stdout
