"""Data: GSM8K, generic JSONL, the built-in ``arith`` task, and SFT tokenisation."""

from midblock.data.arith import generate_arith
from midblock.data.gsm8k import gold_answer, load_gsm8k
from midblock.data.jsonl import read_jsonl
from midblock.data.tasks import (
    IGNORE_INDEX,
    TASKS,
    Example,
    TokenizedSet,
    collate,
    load_examples,
    load_rows,
    qa_example,
    resolve_task,
    to_example,
    tokenize_sft,
)

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "Example",
    "TokenizedSet",
    "collate",
    "generate_arith",
    "gold_answer",
    "load_examples",
    "load_gsm8k",
    "load_rows",
    "qa_example",
    "read_jsonl",
    "resolve_task",
    "to_example",
    "tokenize_sft",
]
