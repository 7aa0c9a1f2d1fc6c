"""Evaluation: GSM8K-style scoring under named protocols, perplexity, and side-by-side comparison."""

from midblock.evaluation.evaluate import PROTOCOLS, EvalConfig, evaluate, evaluate_model, format_summary
from midblock.evaluation.ppl import load_texts, token_loss

__all__ = ["PROTOCOLS", "EvalConfig", "evaluate", "evaluate_model", "format_summary", "load_texts", "token_loss"]
