"""Atomic writes, run directories with locks, and the provenance every result file carries."""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import io as _io
import json
import os
import platform
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midblock.errors import MidblockError


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it over ``path`` only if the block succeeds.

    Works for files and directories (e.g. ``save_pretrained`` into the yielded path). A failure,
    including a full disk, leaves the previous ``path`` intact and removes the temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise MidblockError(f"cannot write {path}: {e.strerror}", hint="free space or choose another --out") from e
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], fieldnames: list[str] | None = None) -> None:
    buf = _io.StringIO()
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def read_json(path: str | os.PathLike, expect: type | None = None) -> Any:
    """A JSON file's value; ``expect`` (e.g. ``dict``) is the type the caller indexes into, so a file of
    another shape (edited by hand, or from elsewhere) is one line instead of an AttributeError later."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise MidblockError(f"{path} does not exist") from e
    except json.JSONDecodeError as e:
        raise MidblockError(f"{path} is not valid JSON (line {e.lineno}): {e.msg}", hint="delete it and rerun") from e
    except UnicodeDecodeError as e:
        raise MidblockError(f"{path} is not UTF-8 text", hint="delete it and rerun") from e
    if expect is not None and not isinstance(obj, expect):
        want = {dict: "an object", list: "a list"}.get(expect, expect.__name__)
        raise MidblockError(f"{path} holds {type(obj).__name__}, not {want}", hint="delete it and rerun")
    return obj


def save_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write a ``.safetensors`` file atomically, byte-identical for identical inputs.

    safetensors serialises ``metadata`` from a Rust HashMap, whose order changes from process to process,
    so two identical runs gave files with different bytes (and checksums). The header is rewritten with
    sorted keys: the same JSON, the same length (padded with spaces, as the format allows), the same
    tensor offsets; any safetensors reader loads it unchanged.
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    ordered = {k: header[k] for k in sorted(header, key=lambda k: (k != "__metadata__", k))}
    if "__metadata__" in ordered:
        ordered["__metadata__"] = dict(sorted(ordered["__metadata__"].items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen (same content, compact form); never write a file that would not load
        raise RuntimeError(f"safetensors header grew from {n} to {len(text)} bytes when sorted")
    write_bytes(path, data[:8] + text + b" " * (n - len(text)) + data[8 + n :])


def read_torch_state(path: str | os.PathLike, what: str = "cache") -> Any:
    """A file written with ``torch.save``, read without running code (``weights_only=True``).

    Tensors, numbers, strings and plain containers come back; anything else in the pickle (a class, a
    function call: what a planted file would use to run code) is refused, as is a truncated file, with a
    one-line ``MidblockError`` naming the file.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise MidblockError(f"{what} {path} does not exist") from e
    except Exception as e:  # UnpicklingError, RuntimeError (a cut zip), EOFError: the file is unusable
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise MidblockError(
            f"cannot read {what} {path}: {first}", hint="it is damaged or was not written by midblock; delete it"
        ) from e


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one line and flush it to disk: used for logs and per-item results that resume."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file written by ``append_jsonl``; a torn last line (killed mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")  # "\n" only: a JSON string may hold U+2028 and the like raw
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise MidblockError(f"{path}:{i + 1} is corrupted", hint="delete the file to start over") from None
    return rows


# --------------------------------------------------------------------------- provenance


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("midblock", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "trl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        from midblock.tuning.precision import cpu_capability

        info["cpu"] = cpu_capability()  # what CPU timings depend on: native bf16 or not, torch's ISA level
        if torch.cuda.is_available():
            info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def provenance(config: Any = None, seed: int | None = None) -> dict[str, Any]:
    """What every result file records: config, seed, versions, hardware and time."""
    return {
        "config": config,
        "seed": seed,
        "versions": package_versions(),
        "hardware": hardware_info(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- run directories


class RunDir:
    """A run directory owned by one process at a time.

    ``RUNNING.lock`` is held with an OS lock (``flock``) for as long as the owner lives: the kernel drops
    it when the process dies, however it dies, so there is no pid to misread and no stale lock to judge.
    The file's text (the owner's pid and host) only feeds the refusal message. ``COMPLETED`` is written
    last, so a directory without it is an interrupted run.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock: Path | None = None
        self._fd: int | None = None
        self._fallback: Any = None  # a filelock.FileLock where fcntl is missing (Windows)

    @property
    def completed(self) -> bool:
        return (self.path / "COMPLETED").exists()

    def acquire(self) -> RunDir:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MidblockError(f"cannot create output directory {self.path}: {e.strerror}") from e
        if not os.access(self.path, os.W_OK):
            raise MidblockError(f"output directory {self.path} is not writable", hint="choose another --out")
        lock = self.path / "RUNNING.lock"
        try:
            import fcntl
        except ImportError:  # Windows: filelock's msvcrt lock also dies with its process
            return self._acquire_filelock(lock)
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise MidblockError(f"cannot write to {self.path}: {e.strerror}", hint="choose another --out") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held by a live process
                os.close(fd)
                raise MidblockError(
                    f"{self.path} is in use by {_lock_owner(lock)}",
                    hint="wait for it to finish or choose another --out",
                ) from None
            except OSError as e:  # e.g. a network filesystem without locks: say so, never claim "in use"
                os.close(fd)
                raise MidblockError(
                    f"cannot lock {lock}: {e.strerror}", hint="choose an --out on a filesystem with file locks"
                ) from e
            # The previous owner unlinks the file on release: a lock won on that unlinked inode (opened just
            # before the unlink) guards nothing, since the next process creates and locks a new file. Only
            # the inode the path names now counts; otherwise try again.
            try:
                current = os.stat(lock)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is None or (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{socket.gethostname()}\n".encode())
            self._lock, self._fd = lock, fd
            return self

    def _acquire_filelock(self, lock: Path) -> RunDir:
        import filelock

        fl = filelock.FileLock(str(lock) + ".os", timeout=0)
        try:
            fl.acquire()
        except filelock.Timeout:
            raise MidblockError(
                f"{self.path} is in use by {_lock_owner(lock)}", hint="wait for it to finish or choose another --out"
            ) from None
        write_text(lock, f"{os.getpid()}\n{socket.gethostname()}\n")
        self._lock, self._fallback = lock, fl
        return self

    def mark_completed(self) -> None:
        write_text(self.path / "COMPLETED", _dt.datetime.now(_dt.timezone.utc).isoformat() + "\n")

    def release(self) -> None:
        if self._lock is None:
            return
        # Unlink while still holding the lock (see acquire); closing the descriptor then releases it.
        self._lock.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
        if self._fallback is not None:
            self._fallback.release()
        self._lock, self._fd, self._fallback = None, None, None

    def __enter__(self) -> RunDir:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _lock_owner(lock: Path) -> str:
    """'process PID on HOST' from a held lock's text, for the refusal message (it may not be written yet)."""
    try:
        lines = lock.read_text().split()
    except OSError:
        lines = []
    if not lines or not lines[0].isdigit():
        return "another process"
    host = f" on {lines[1]}" if len(lines) > 1 and lines[1] != socket.gethostname() else ""
    return f"process {lines[0]}{host}"


def fresh_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Validate that ``path`` can hold outputs before any expensive work starts.

    ``flag`` is the option the user gave the path with (``--out``, ``--save``...): the error names it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MidblockError(f"{flag} {path} is a file, not a directory")
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():  # a path below a regular file can never be created
        raise MidblockError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise MidblockError(f"cannot write to {parent}", hint=f"choose a writable {flag}")
    return path
