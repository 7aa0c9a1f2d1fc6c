"""Prompts of each protocol: lm-eval 5-shot, zero-shot, and chat-template wrapping.

The lm-eval format (harness task ``gsm8k``): each exemplar is ``"Question: {q}\\nAnswer: {a}"`` (the full
train solution), exemplars and the test item joined by ``"\\n\\n"``, the test item ``"Question: {q}\\nAnswer:"``.
Exemplars come from the train split; three ways to pick them (``SAMPLING``):

- ``lm-eval`` (default): lm-evaluation-harness's own draws. The harness (0.4.x, ``gsm8k``) seeds one
  generator ``random.Random(1234)`` per run and, visiting the test documents in order, takes
  ``rng.sample(train_docs, 5)`` for each: document ``k`` gets the ``(k+1)``-th draw. Here the ``k``-th
  draw is computed by advancing the same generator ``k`` times (cached), so item ``k``'s prompt is the
  one a single-process lm-eval run over the test split builds for document ``k``, whatever ``--offset``,
  ``--eval-items``, batching or resume. ``tests/evaluation/test_lm_eval_prompts.py`` compares the prompts with
  the real harness's, byte for byte.
- ``fixed``: one draw of ``k`` exemplars shared by every test item (the harness's draw for item 0). All
  prompts then share a token prefix whose KV cache is computed once, which makes 5-shot decoding several
  times faster, and every item sees the same context; the exemplars differ from the harness's from item 1.
- ``per-item``: a draw per item from a generator seeded by ``(seed, item index)`` (midblock's own; not the
  harness's exemplars).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from midblock.errors import MidblockError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


SAMPLING = ("lm-eval", "fixed", "per-item")
DEFAULT_SAMPLING = "lm-eval"

# (population size, shots, seed) -> the harness's successive draws so far, as train-row indices
_DRAWS: dict[tuple[int, int, int], tuple[random.Random, list[tuple[int, ...]]]] = {}
_DRAWS_LOCK = threading.Lock()


def harness_draw(n_train: int, index: int, k: int = NUM_FEWSHOT, seed: int = FEWSHOT_SEED) -> tuple[int, ...]:
    """The train-row indices lm-eval draws for test document ``index``: the ``(index+1)``-th successive
    ``random.Random(seed).sample(train_docs, k)``. ``sample`` picks the same positions from any population
    of ``n_train`` items, so drawing from ``range(n_train)`` gives the harness's rows by index."""
    if index < 0:
        raise MidblockError(f"test item index must be >= 0, got {index}")
    with _DRAWS_LOCK:
        rng, draws = _DRAWS.setdefault((n_train, k, seed), (random.Random(seed), []))
        population = range(n_train)
        while len(draws) <= index:
            draws.append(tuple(rng.sample(population, k)))
        return draws[index]


def sample_exemplars(
    train_rows: Sequence[dict[str, Any]],
    index: int | None,
    k: int = NUM_FEWSHOT,
    seed: int = FEWSHOT_SEED,
    sampling: str = DEFAULT_SAMPLING,
) -> list[dict[str, Any]]:
    """``k`` distinct train rows for test item ``index`` under ``sampling`` (see the module docstring);
    ``index=None`` or ``sampling="fixed"``: the one draw shared by all items. The same for every run with
    this seed."""
    if sampling not in SAMPLING:
        raise MidblockError(f"unknown few-shot sampling '{sampling}'", hint="use one of " + ", ".join(SAMPLING))
    if k < 0:
        raise MidblockError(f"number of few-shot exemplars must be >= 0, got {k}")
    if k > len(train_rows):
        raise MidblockError(f"{k}-shot needs at least {k} train rows, the train split has {len(train_rows)}")
    if index is None or sampling == "fixed":
        return random.Random(seed).sample(list(train_rows), k)
    if sampling == "lm-eval":
        return [train_rows[i] for i in harness_draw(len(train_rows), index, k, seed)]
    return random.Random(seed * 1_000_003 + index).sample(list(train_rows), k)


def fewshot_prompt(question: str, exemplars: Sequence[dict[str, Any]]) -> str:
    """The harness's k-shot prompt: exemplars, blank lines, then the open test item."""
    parts = [exemplar(r) for r in exemplars] + [zero_shot(question)]
    return FEWSHOT_DELIMITER.join(parts)


def chat_user_turn(question: str) -> str:
    return f"{question}\n\n{CHAT_INSTRUCTION}"


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str, exemplars: Sequence[dict[str, Any]] = ()) -> str:
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


def require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise MidblockError(
            f"the tokenizer of {name} has no chat template", hint="drop --chat-template for a base model"
        )
