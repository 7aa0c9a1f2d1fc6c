"""What ``midblock export`` does, as a config (no heavy imports: the command line is built from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from midblock.errors import MidblockError
from midblock.validation import check_number

ExportMode = Literal["raw", "state", "derive", "replay", "across"]
EXPORT_MODES = ("raw", "state", "derive", "replay", "across")
DERIVE_FORMATS = ("tsv", "markdown")


@dataclass
class ExportConfig:
    """Raw results of a finished comparison, their re-derived table, or a resumable state."""

    dest: str = field(
        metadata={
            "help": "the export directory: written by raw and state; read by derive, replay and across (these "
            "two add their tables to it)",
            "flag": "--dest",
        }
    )
    mode: ExportMode = field(
        default="raw",
        metadata={
            "help": "raw: cells.jsonl + items.csv + the tables, small enough to commit; derive: the table "
            "re-computed from an export; state: what a partly finished comparison needs to resume elsewhere; "
            "replay: an export's arm against its baseline replayed as many one-seed, small-test studies; across: "
            "each arm's difference against the baseline set against the same in another export (--other), with "
            "an interval of the difference between the two"
        },
    )
    compare_dir: str | None = field(
        default=None, metadata={"help": "a `midblock compare --out` directory (raw, state)", "flag": "--from"}
    )
    baseline: str | None = field(
        default=None,
        metadata={"help": "derive, replay, across: the arm the differences are taken against (default: the grid's)"},
    )
    format: Literal["tsv", "markdown"] = field(
        default="tsv",
        metadata={
            "help": "derive: tsv (every pooled column, four decimals) or markdown (the short table a report "
            "quotes: accuracy, differences with Holm p and simultaneous intervals, forgetting and its differences "
            "with Holm p, each interval's coverage)"
        },
    )
    arm: str | None = field(
        default=None,
        metadata={
            "help": "replay: the arm replayed against the baseline; across: the one arm compared (default: "
            "every arm both exports ran)"
        },
    )
    replay_items: int = field(default=100, metadata={"help": "replay: test items each one-seed replay scores"})
    draws: int = field(default=200, metadata={"help": "replay: item draws per training seed"})
    reported: float | None = field(
        default=None, metadata={"help": "replay: a reported difference (fraction, e.g. 0.102) to locate"}
    )
    controlled: str | None = field(
        default=None,
        metadata={
            "help": "replay: another export shown beside, as EXPORT_DIR or EXPORT_DIR,ARM,BASELINE (default: the "
            "same arm names)"
        },
    )
    adapters: bool = field(
        default=False,
        metadata={
            "help": "state: also keep the trained LoRA adapter of each finished cell evaluated on a split other than "
            "dev (the cells a table reports), so that analyses of them can run in a later session or on another "
            "machine (a few MB each; full-parameter runs are never kept)"
        },
    )

    other: str | None = field(
        default=None,
        metadata={
            "help": "across: the other export, as EXPORT_DIR or EXPORT_DIR,ARM,BASELINE (its names for --arm and "
            "the baseline; default: the same arm names, its grid's baseline)"
        },
    )

    def __post_init__(self) -> None:
        if self.mode not in EXPORT_MODES:
            raise MidblockError(f"unknown export mode '{self.mode}'", hint="use " + ", ".join(EXPORT_MODES))
        if self.mode == "derive" and self.compare_dir:
            raise MidblockError("--mode derive reads an export, not a comparison", hint="drop --from")
        if self.mode in ("raw", "state") and not self.compare_dir:
            raise MidblockError(f"--mode {self.mode} needs the comparison", hint="pass --from COMPARE_DIR")
        if self.format not in DERIVE_FORMATS:
            raise MidblockError(f"unknown --format '{self.format}'", hint="use " + " or ".join(DERIVE_FORMATS))
        if self.format != "tsv" and self.mode != "derive":
            raise MidblockError("--format applies to --mode derive only", hint="drop --format")
        if self.baseline and self.mode not in ("derive", "replay", "across"):
            raise MidblockError("--baseline applies to --mode derive, replay and across only", hint="drop --baseline")
        if (self.other is not None) != (self.mode == "across"):
            raise MidblockError(
                "--mode across needs --other EXPORT_DIR"
                if self.mode == "across"
                else "--other applies to --mode across only",
                hint="pass --other EXPORT_DIR" if self.mode == "across" else "drop --other",
            )
        if self.other is not None and self.other.count(",") not in (0, 2):
            raise MidblockError(f"--other '{self.other}' is not EXPORT_DIR or EXPORT_DIR,ARM,BASELINE")
        if self.other is not None and self.other.count(",") == 2 and not self.arm:
            raise MidblockError("--other names the other export's arm", hint="pass --arm ARM: the arm of this export")
        if self.adapters and self.mode != "state":
            raise MidblockError("--adapters applies to --mode state only", hint="drop --adapters")
        if self.mode == "across" and self.compare_dir:
            raise MidblockError("--mode across reads exports, not a comparison", hint="drop --from")
        if self.mode == "replay":
            if self.compare_dir:
                raise MidblockError("--mode replay reads an export, not a comparison", hint="drop --from")
            if not self.arm:
                raise MidblockError("--mode replay needs the arm to replay", hint="pass --arm ARM")
            if self.replay_items < 1 or self.draws < 1:
                raise MidblockError("--replay-items and --draws must be >= 1")
            if self.reported is not None:
                check_number("--reported", self.reported, low=-1, high=1, hint="a difference as a fraction, e.g. 0.102")
        elif self.controlled or self.reported is not None or (self.arm and self.mode != "across"):
            raise MidblockError(
                "--controlled and --reported apply to --mode replay only, --arm to replay and across", hint="drop them"
            )
