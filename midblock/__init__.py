"""midblock: where fine-tuning changes a model, layer by layer, and tuning only the middle block.

The public API is importable from here; heavy modules load lazily so ``import midblock`` stays fast.
"""

from __future__ import annotations

from midblock._lazy import lazy_getattr
from midblock.errors import MidblockError
from midblock.layers import resolve_layers

__version__ = "0.2.0"

_LAZY = {
    "load_model": "midblock.models.loading",
    "load_tokenizer": "midblock.models.loading",
    "get_layout": "midblock.models.introspect",
    "MidBlockConfig": "midblock.tuning.config",
    "prepare_model": "midblock.tuning.prepare",
    "keep_truncation": "midblock.tuning.prepare",
    "check_truncated_backward": "midblock.tuning.prepare",
    "MidBlockCallback": "midblock.tuning.trainers",
    "band_lora_config": "midblock.tuning.trainers",
    "MidBlockMonitor": "midblock.tuning.monitor",
    "match_budget": "midblock.tuning.budget",
    "train": "midblock.tuning.train",
    "evaluate": "midblock.evaluation.evaluate",
    "compare": "midblock.experiments.runner",
    "CompareConfig": "midblock.experiments.grid",
    "run_demo": "midblock.experiments.demo",
    "DemoConfig": "midblock.experiments.demo",
    "analyze": "midblock.analysis.analyze",
    "AnalyzeConfig": "midblock.analysis.config",
    "EvalConfig": "midblock.evaluation.config",
    "TrainConfig": "midblock.tuning.trainconfig",
}

__all__ = ["MidblockError", "resolve_layers", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
