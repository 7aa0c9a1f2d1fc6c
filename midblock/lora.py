"""LoRA facts shared by tuning (what alpha a rank gets) and analysis (reading PEFT's layers)."""

from __future__ import annotations

import math


def lora_scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """LoRA's multiplier of BA (PEFT's ``scaling``): alpha / r, or alpha / sqrt(r) for rsLoRA."""
    return alpha / math.sqrt(r) if rslora else alpha / r
