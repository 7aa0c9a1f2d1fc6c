"""What a surgery configuration is measured with: ``midblock eval``'s own functions, nothing re-implemented.

Task accuracy with Wilson intervals comes from ``midblock.evaluation.evaluate.evaluate_model`` (the test
items are loaded and validated once, then scored for every configuration); token loss and perplexity
on a corpus from ``midblock.evaluation.ppl.token_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from midblock.errors import MidblockError
from midblock.evaluation.config import PROTOCOLS
from midblock.evaluation.evaluate import EvalConfig, evaluate_model, load_test_items
from midblock.evaluation.ppl import load_texts, token_loss

if TYPE_CHECKING:
    from midblock.surgery.config import SurgeryConfig


@dataclass
class Measurer:
    """Callable ``model -> flat metrics`` (``loss``, ``ppl``, ``acc_<extractor>`` with ``_lo``/``_hi``)."""

    tokenizer: Any
    eval_cfg: Any | None = None  # midblock.evaluation.evaluate.EvalConfig
    items: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    batch_size: int = 8
    max_length: int = 512

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.texts:
            r = token_loss(model, self.tokenizer, self.texts, batch_size=self.batch_size, max_length=self.max_length)
            out.update(loss=r["loss"], ppl=r["ppl"], n_tokens=r["n_tokens"])
        if self.eval_cfg is not None:
            s = evaluate_model(model, self.tokenizer, self.eval_cfg, items=self.items, progress=False)
            out["n_items"] = s["n"]
            for name in s["primary"]:
                sc = s["scores"][name]
                out[f"acc_{name}"] = sc["accuracy"]
                out[f"acc_{name}_lo"] = sc["ci_low"]
                out[f"acc_{name}_hi"] = sc["ci_high"]
        return out

    @property
    def metric_names(self) -> list[str]:
        names = ["loss"] if self.texts else []
        if self.eval_cfg is not None:
            names += [f"acc_{n}" for n in PROTOCOLS[self.eval_cfg.protocol].primary]
        return names


def build_measurer(cfg: SurgeryConfig) -> Measurer:
    """Validate and load everything a measurement needs, before any model is loaded (tokenizer set later).

    ``cfg`` carries the surgery settings (``SurgeryConfig``): task, protocol, eval_items, data, corpus,
    corpus_limit, batch_size, max_length, max_new_tokens."""
    task, corpus = cfg.task, cfg.corpus
    if task is None and corpus is None:
        raise MidblockError("nothing to measure", hint="give --task arith|gsm8k and/or --corpus FILE")
    texts: list[str] = []
    if corpus is not None:
        texts = load_texts(corpus, limit=cfg.corpus_limit)
        if not texts:
            raise MidblockError(f"corpus file {corpus} holds no text", hint="pass a non-empty .txt or .jsonl")
    eval_cfg, items = None, []
    if task is not None:
        eval_cfg = EvalConfig(
            task=task,
            protocol=cfg.protocol,
            eval_items=cfg.eval_items,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            data=cfg.data,
        )
        items = load_test_items(eval_cfg)
    return Measurer(None, eval_cfg, items, texts, cfg.batch_size, cfg.max_length)
