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
    # the holder owns the directory through RunDir; its lock is an OS lock that dies with it
    code = (
        "import sys, time; from midblock.io import RunDir; RunDir(sys.argv[1]).acquire(); "
        "print('ok', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(MidblockError, match=f"in use by process {holder.pid}"):
            io.RunDir(run).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, RUNNING.lock stays behind with the dead pid
        holder.wait()
    assert (run / "RUNNING.lock").read_text().split()[0] == str(holder.pid)
    with io.RunDir(run) as rd:  # the owner is dead: its lock went with it
        assert (run / "RUNNING.lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(MidblockError, match="in use by"):  # a second writer, even in this process
            io.RunDir(run).acquire()
        rd.mark_completed()
    assert not (run / "RUNNING.lock").exists() and io.RunDir(run).completed


def test_run_dir_lock_file_contents_do_not_decide(tmp_path):
    """An empty or garbled RUNNING.lock (the old pid-file scheme read it as pid 0, "stale") decides nothing:
    only the OS lock does."""
    run = tmp_path / "run"
    run.mkdir()
    for text in ("", "garbage\n", f"{os.getpid()}\n"):
        (run / "RUNNING.lock").write_text(text)
        with io.RunDir(run):
            pass
    with io.RunDir(run):
        (run / "RUNNING.lock").write_text("")  # a held lock whose text was wiped is still held
        with pytest.raises(MidblockError, match="in use by another process"):
            io.RunDir(run).acquire()


def test_run_dir_lock_without_fcntl_uses_filelock(tmp_path, monkeypatch):
    """Where fcntl is missing (Windows) the lock is filelock's, which also dies with its process."""
    pytest.importorskip("filelock")
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    run = tmp_path / "run"
    with io.RunDir(run) as rd:
        assert rd._fallback is not None and (run / "RUNNING.lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(MidblockError, match=f"in use by process {os.getpid()}"):
            io.RunDir(run).acquire()
    assert not (run / "RUNNING.lock").exists()
    with io.RunDir(run):  # released: the next owner gets it
        pass


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
