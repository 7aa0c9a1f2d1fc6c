"""The one error type for user mistakes.

Raised anywhere a user's input is wrong (a bad band, a missing file, an unknown model); the CLI catches it
once and prints a single line with exit status 2. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MidblockError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.problem = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def one_line(self) -> str:
        return " ".join(str(self).split())
