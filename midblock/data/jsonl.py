"""JSONL reading with errors that name the file and the line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from midblock.errors import MidblockError


def read_jsonl(
    path: str | os.PathLike, required: tuple[str, ...] | None = None, any_of: tuple[tuple[str, ...], ...] | None = None
) -> list[dict[str, Any]]:
    """Read a JSONL file strictly: every non-blank line must be a JSON object with the needed keys.

    ``required``: keys every row must have. ``any_of``: alternatives, e.g. ``(("prompt", "completion"),
    ("messages",))`` means a row needs all keys of at least one group.
    """
    path = Path(path)
    if not path.exists():
        raise MidblockError(f"data file {path} does not exist")
    if path.is_dir():
        raise MidblockError(f"{path} is a directory, expected a JSONL file")
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MidblockError(f"{path} is not UTF-8 text") from e
    for n, line in enumerate(text.splitlines(), start=1):
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
        rows.append(row)
    if not rows:
        raise MidblockError(f"data file {path} is empty")
    return rows
