"""JSONL reading with errors that name the file and the line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from midblock.errors import MidblockError

# Fields whose value becomes text the model reads or is scored against. Anything but a string (null, a
# number, a list) would be turned into text by str() somewhere downstream: "None" trained as a completion,
# or 42 never equal to the extracted "42". Every JSONL reader goes through read_jsonl, so checking here
# covers training, evaluation, perplexity corpora and analysis data alike.
TEXT_FIELDS = ("prompt", "completion", "question", "answer", "text")


def read_jsonl(
    path: str | os.PathLike, required: tuple[str, ...] | None = None, any_of: tuple[tuple[str, ...], ...] | None = None
) -> list[dict[str, Any]]:
    """Read a JSONL file strictly: every non-blank line must be a JSON object with the needed keys.

    ``required``: keys every row must have. ``any_of``: alternatives, e.g. ``(("prompt", "completion"),
    ("messages",))`` means a row needs all keys of at least one group.
    """
    path = Path(path)
    if path.is_dir():
        raise MidblockError(f"{path} is a directory, expected a JSONL file")
    check_data_file(path)
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MidblockError(f"{path} is not UTF-8 text") from e
    # JSONL separates records with "\n" only: str.splitlines() would also split at U+2028, U+0085 and
    # other characters that a JSON string may hold raw
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MidblockError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise MidblockError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        if required:
            missing = [k for k in required if k not in row]
            if missing:
                raise MidblockError(
                    f"{path}:{n}: missing key '{missing[0]}'", hint=f"each row needs {', '.join(required)}"
                )
        if any_of and not any(all(k in row for k in group) for group in any_of):
            want = " or ".join("+".join(g) for g in any_of)
            raise MidblockError(f"{path}:{n}: row has keys {sorted(row)[:5]}, needs {want}")
        _check_types(row, path, n)
        rows.append(row)
    if not rows:
        raise MidblockError(f"data file {path} is empty")
    return rows


def check_data_file(path: str | os.PathLike) -> Path:
    """``path`` as a data file that can be read to its end: it exists and is a regular file.

    A FIFO, a socket or a device would block forever or never end (``open`` on a FIFO waits for a writer),
    so anything but a regular file (or a link to one) is refused before it is opened.
    """
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise MidblockError(f"data file {path} does not exist") from None
    except OSError as e:
        raise MidblockError(f"cannot read data file {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise MidblockError(f"data file {path} is {kind}", hint="pass a regular file (copy a stream to a file first)")
    return path


def _check_types(row: dict[str, Any], path: Path, n: int) -> None:
    """Text fields must be strings; ``messages`` a non-empty list of ``{"role": str, "content": str}``."""
    for key in TEXT_FIELDS:
        if key in row and not isinstance(row[key], str):
            raise MidblockError(
                f"{path}:{n}: '{key}' must be a string, got {_json_type(row[key])}",
                hint="quote the value, or drop the row",
            )
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise MidblockError(
                f'{path}:{n}: \'messages\' must be a non-empty list of {{"role", "content"}} objects, '
                f"got {_json_type(msgs)}"
            )
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise MidblockError(
                    f"{path}:{n}: messages[{i}] must be an object with string 'role' and 'content', "
                    f"got {_json_type(m) if not isinstance(m, dict) else sorted(m)}"
                )


def _json_type(v: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"a number ({v})"
    if isinstance(v, list):
        return "an empty list" if not v else "a list"
    if isinstance(v, dict):
        return "an object"
    return f"a string ({v[:20]!r})" if isinstance(v, str) else type(v).__name__
