"""``MonitorConfig``: the per-layer training monitor's settings (light: no torch, for the command line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from midblock.errors import MidblockError
from midblock.validation import check_number


@dataclass
class MonitorConfig:
    """The per-layer monitor's settings (off unless ``every`` > 0)."""

    every: int = field(
        default=0,
        metadata={
            "help": "record per-block CKA change, weight change and gradient share every N steps (0 = off)",
            "flag": "--monitor-every",
        },
    )
    rows: int = field(
        default=32, metadata={"help": "held-out sequences in the monitor's probe batch", "flag": "--monitor-rows"}
    )
    max_length: int = field(
        default=128,
        metadata={
            "help": "tokens per probe row; longer rows are cut (as analyze's --max-length)",
            "flag": "--monitor-max-length",
        },
    )
    alarm_outside: float | None = field(
        default=None,
        metadata={
            "help": "warn when more than this fraction of the representation change arises in blocks outside the "
            "trained band (docs/tuning.md; off by default)",
            "flag": "--monitor-alarm-outside",
        },
    )
    alarm_jump: float | None = field(
        default=None,
        metadata={
            "help": "warn when a block's CKA change rises by more than this between two readings (off by default)",
            "flag": "--monitor-alarm-jump",
        },
    )

    def __post_init__(self) -> None:
        check_number("--monitor-every", self.every, low=0)
        check_number("--monitor-rows", self.rows, low=4, hint="CKA needs a few rows; 32 is the default")
        check_number("--monitor-max-length", self.max_length, low=2)
        if self.alarm_outside is not None:
            check_number("--monitor-alarm-outside", self.alarm_outside, low=0, high=1, low_open=True)
        if self.alarm_jump is not None:
            check_number("--monitor-alarm-jump", self.alarm_jump, low=0, low_open=True)

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MonitorConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise MidblockError(
                f"unknown monitor setting '{unknown[0]}'", hint="use " + ", ".join(cls.__dataclass_fields__)
            )
        return cls(**d)
