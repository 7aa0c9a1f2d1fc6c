"""Race harness for the run-directory lock: many processes acquire one directory at the same instant,
1,000 times, and no two ever hold it together.

The old pid-file lock had two owners in 3 of 150 trials with six processes (an empty lock file read as
pid 0, i.e. stale, and removed under a live owner). Overlap is detected directly: an owner creates a
marker with O_EXCL while it holds the lock, so a second concurrent owner finds the marker there.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import pytest

from midblock.errors import MidblockError
from midblock.io import RunDir

PROCESSES = 6
ROUNDS = 1000  # trials: every process tries once per round, all released by one barrier


class _NoLock:
    """A lock that does not lock: the harness must catch its double owners (the test can fail)."""

    def __init__(self, path):
        self.path = Path(path)

    def acquire(self):
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def release(self):
        pass


def _worker(lock_cls, run: str, barrier, rounds: int, results) -> None:
    owned = overlaps = 0
    owned_rounds = []
    for r in range(rounds):
        barrier.wait()
        try:
            lock = lock_cls(run).acquire()
        except MidblockError:
            continue
        try:
            try:
                fd = os.open(os.path.join(run, "OWNER"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                overlaps += 1  # another process holds the directory right now
            else:
                owned += 1
                owned_rounds.append(r)
                time.sleep(0.0002)  # hold it a moment, so a wrongly admitted second owner overlaps
                os.close(fd)
                os.unlink(os.path.join(run, "OWNER"))
        finally:
            lock.release()
    results.put((owned, overlaps, owned_rounds))


def _race(tmp_path: Path, lock_cls, rounds: int) -> tuple[int, int, set[int]]:
    ctx = mp.get_context("fork")
    run = str(tmp_path / "run")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(lock_cls, run, barrier, rounds, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    owned = sum(g[0] for g in got)
    overlaps = sum(g[1] for g in got)
    rounds_with_owner = {r for g in got for r in g[2]}
    return owned, overlaps, rounds_with_owner


pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork start method")


def test_no_double_owner_in_a_thousand_simultaneous_acquisitions(tmp_path):
    owned, overlaps, rounds_with_owner = _race(tmp_path, RunDir, ROUNDS)
    assert overlaps == 0
    assert len(rounds_with_owner) == ROUNDS  # and the lock is live: every round somebody got it
    assert owned >= ROUNDS
    assert not (tmp_path / "run" / "RUNNING.lock").exists()  # the last owner cleaned up


def test_the_harness_catches_a_lock_that_does_not_lock(tmp_path):
    _, overlaps, _ = _race(tmp_path, _NoLock, 50)
    assert overlaps > 0
