"""Evaluation: GSM8K-style scoring under named protocols, perplexity, statistics.

The public names load lazily, so ``midblock.evaluation.config`` (what the command line needs) does not pull
in torch through the package. The ``evaluate`` function is ``midblock.evaluate`` (or
``midblock.evaluation.evaluate.evaluate``): here ``evaluate`` is the submodule of that name.
"""

from __future__ import annotations

from midblock._lazy import lazy_getattr

_LAZY = {
    "PROTOCOLS": "midblock.evaluation.config",
    "EvalConfig": "midblock.evaluation.config",
    "evaluate_model": "midblock.evaluation.evaluate",
    "format_summary": "midblock.evaluation.evaluate",
    "load_texts": "midblock.evaluation.ppl",
    "token_loss": "midblock.evaluation.ppl",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
