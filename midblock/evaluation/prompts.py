"""Prompts of each protocol: lm-eval 5-shot, zero-shot, and chat-template wrapping.

The lm-eval format (harness task ``gsm8k``): each exemplar is ``"Question: {q}\\nAnswer: {a}"`` (the full
train solution), exemplars and the test item joined by ``"\\n\\n"``, the test item ``"Question: {q}\\nAnswer:"``.
Exemplars come from the train split through a seeded sampler (seed 1234 by default). Two modes:

- ``fixed`` (default): one draw of ``k`` exemplars shared by every test item. All prompts then share a
  token prefix whose KV cache is computed once, which makes 5-shot decoding several times faster, and
  every item (and every model in a comparison) sees the same context.
- ``per-item``: a different draw per item, like the harness (which advances one generator across the
  items in order); we seed one generator per item from ``(seed, item index)`` instead, so an item's
  prompt does not depend on ``--offset``, ``--limit`` or a resumed run.

The format is the harness's exactly; the exemplar identity is not (the protocol allows this).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from midblock.errors import MidblockError

FEWSHOT_SEED = 1234
NUM_FEWSHOT = 5
FEWSHOT_DELIMITER = "\n\n"
# Appended to the user turn when a chat template is used, so the scorers can find the answer.
CHAT_INSTRUCTION = (
    "Solve the problem step by step. End your answer with a final line of the form '#### N', "
    "where N is the final number."
)


def zero_shot(question: str) -> str:
    """``"Question: {question}\\nAnswer:"`` (the paper's prompt and the test item of the 5-shot prompt)."""
    return f"Question: {question}\nAnswer:"


def exemplar(row: dict[str, Any]) -> str:
    return f"{zero_shot(row['question'])} {row['answer']}"


SAMPLING = ("fixed", "per-item")


def sample_exemplars(
    train_rows: Sequence[dict[str, Any]], index: int | None, k: int = NUM_FEWSHOT, seed: int = FEWSHOT_SEED
) -> list[dict[str, Any]]:
    """``k`` distinct train rows for test item ``index`` (``None``: the fixed draw shared by all items),
    the same for every run with this seed."""
    if k < 0:
        raise MidblockError(f"number of few-shot exemplars must be >= 0, got {k}")
    if k > len(train_rows):
        raise MidblockError(f"{k}-shot needs at least {k} train rows, the train split has {len(train_rows)}")
    rng = random.Random(seed if index is None else seed * 1_000_003 + index)
    return rng.sample(list(train_rows), k)


def fewshot_prompt(question: str, exemplars: Sequence[dict[str, Any]]) -> str:
    """The harness's k-shot prompt: exemplars, blank lines, then the open test item."""
    parts = [exemplar(r) for r in exemplars] + [zero_shot(question)]
    return FEWSHOT_DELIMITER.join(parts)


def chat_user_turn(question: str) -> str:
    return f"{question}\n\n{CHAT_INSTRUCTION}"


def chat_prompt(tokenizer, question: str, exemplars: Sequence[dict[str, Any]] = ()) -> str:
    """The question as a user turn in the tokenizer's chat template (exemplars as earlier turns).

    Few-shot exemplars become user/assistant turn pairs (the harness's ``fewshot_as_multiturn``).
    """
    require_chat_template(tokenizer)
    messages: list[dict[str, str]] = []
    for r in exemplars:
        messages.append({"role": "user", "content": chat_user_turn(r["question"])})
        messages.append({"role": "assistant", "content": r["answer"]})
    messages.append({"role": "user", "content": chat_user_turn(question)})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise MidblockError(
            f"the tokenizer of {name} has no chat template", hint="drop --chat-template for a base model"
        )
