"""What ``midblock export`` does, as a config (no heavy imports: the command line is built from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from midblock.errors import MidblockError

ExportMode = Literal["raw", "state", "derive"]
EXPORT_MODES = ("raw", "state", "derive")


@dataclass
class ExportConfig:
    """Raw results of a finished comparison, their re-derived table, or a resumable state."""

    dest: str = field(
        metadata={"help": "the export directory: written by raw and state, read by derive", "flag": "--dest"}
    )
    mode: ExportMode = field(
        default="raw",
        metadata={
            "help": "raw: cells.jsonl + items.csv + the tables, small enough to commit; derive: the table "
            "re-computed from an export; state: what a partly finished comparison needs to resume elsewhere"
        },
    )
    compare_dir: str | None = field(
        default=None, metadata={"help": "a `midblock compare --out` directory (raw, state)", "flag": "--from"}
    )
    baseline: str | None = field(
        default=None, metadata={"help": "derive: the arm the differences are taken against (default: the grid's)"}
    )

    def __post_init__(self) -> None:
        if self.mode not in EXPORT_MODES:
            raise MidblockError(f"unknown export mode '{self.mode}'", hint="use " + ", ".join(EXPORT_MODES))
        if self.mode == "derive" and self.compare_dir:
            raise MidblockError("--mode derive reads an export, not a comparison", hint="drop --from")
        if self.mode != "derive" and not self.compare_dir:
            raise MidblockError(f"--mode {self.mode} needs the comparison", hint="pass --from COMPARE_DIR")
        if self.baseline and self.mode != "derive":
            raise MidblockError("--baseline applies to --mode derive only", hint="drop --baseline")
