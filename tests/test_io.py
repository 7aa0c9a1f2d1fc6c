import errno
import os
import subprocess
import sys

import pytest

from midblock import io
from midblock.errors import MidblockError


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    io.write_json(target, {"v": 1})

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(MidblockError, match="No space left"):
        io.write_json(target, {"v": 2})
    monkeypatch.undo()
    assert io.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind


def test_atomic_dir_replaces_whole(tmp_path):
    d = tmp_path / "adapter"
    with io.atomic_path(d) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_path(d) as tmp:
            tmp.mkdir()
            (tmp / "b").write_text("2")
            raise RuntimeError("crash mid-save")
    assert sorted(p.name for p in d.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_torn_last_jsonl_line_is_dropped(tmp_path):
    p = tmp_path / "items.jsonl"
    io.append_jsonl(p, {"i": 0})
    io.append_jsonl(p, {"i": 1})
    with open(p, "a") as f:
        f.write('{"i": 2, "comp')
    assert io.read_jsonl_tolerant(p) == [{"i": 0}, {"i": 1}]
    p.write_text('{"i": 0}\nBROKEN\n{"i": 2}\n')
    with pytest.raises(MidblockError, match="corrupted"):
        io.read_jsonl_tolerant(p)


def test_run_dir_lock_refuses_live_owner_and_takes_over_stale(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        (run / "RUNNING.lock").write_text(f"{holder.pid}\n{__import__('socket').gethostname()}\n")
        with pytest.raises(MidblockError, match=f"in use by process {holder.pid}"):
            io.RunDir(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    with io.RunDir(run) as rd:  # the owner is dead: stale lock taken over
        assert (run / "RUNNING.lock").read_text().split()[0] == str(os.getpid())
        rd.mark_completed()
    assert not (run / "RUNNING.lock").exists() and io.RunDir(run).completed


def test_provenance_records_versions_and_hardware():
    p = io.provenance({"lr": 1e-3}, seed=7)
    assert p["seed"] == 7 and p["config"] == {"lr": 1e-3}
    assert {"torch", "transformers", "peft", "python"} <= set(p["versions"])
    assert p["hardware"]["cpu_count"] >= 1


def test_unwritable_output_dir_is_refused(tmp_path):
    # A path below a regular file cannot be created by anyone, root included (chmod does not stop root).
    (tmp_path / "file").write_text("x")
    with pytest.raises(MidblockError, match="cannot create output directory"):
        io.RunDir(tmp_path / "file" / "run").acquire()
    with pytest.raises(MidblockError, match="is a file"):
        io.fresh_output_dir(tmp_path / "file")
