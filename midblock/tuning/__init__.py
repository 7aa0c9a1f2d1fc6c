"""Mid-Block Efficient Tuning: configs, budgets, model preparation and the training loop."""

from midblock.tuning.config import MidBlockConfig

__all__ = ["MidBlockConfig"]
