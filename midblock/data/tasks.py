"""Tasks as lists of prompt/completion examples, and SFT tokenisation with completion-only labels."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.data.arith import ARITH_VERSION, generate_arith
from midblock.data.gsm8k import gold_answer, load_gsm8k
from midblock.data.jsonl import read_jsonl
from midblock.errors import MidblockError
from midblock.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
OVERLONG = ("drop", "error", "truncate")  # what tokenize_sft does with an example over max_length
DEFAULT_DEV_SIZE = 200  # rows carved from train when a grid needs a dev split and the task has none
_DEV_SALT = "midblock-dev-split-v1"


@dataclass(frozen=True)
class Task:
    """A task ``--task`` names: where its rows come from and what they hold."""

    name: str
    load: Callable[[str, str | None, int], list[dict[str, Any]]]  # (split, data, dev_size) -> the split's rows
    # The version of the task's data and splits, part of every fingerprint of its rows. arith 2: dev and test
    # redrawn without near-duplicates of train rows; gsm8k and jsonl 2: a dev split carved from train.
    version: int
    scored: bool  # question/answer rows with a '#### N' gold answer: `midblock eval` scores them
    own_dev: bool = False  # a dev split of its own; otherwise dev rows are carved from train (dev_size)
    needs_data: bool = False  # --data is required; otherwise the task finds its rows by itself
    doc: str = field(default="", repr=False)


# name -> Task, in the order error messages list them
TASKS: Registry[Task] = Registry("task")


_Loader = Callable[[str, str | None, int], list[dict[str, Any]]]  # a task's load(split, data, dev_size)


def register_task(
    name: str, *, version: int, scored: bool, own_dev: bool = False, needs_data: bool = False
) -> Callable[[_Loader], _Loader]:
    """Register the decorated ``load(split, data, dev_size)`` as task ``name``; its docstring describes it."""

    def add(load: _Loader) -> _Loader:
        TASKS.register(name, Task(name, load, version, scored, own_dev, needs_data, load.__doc__ or ""))
        return load

    return add


@dataclass
class Example:
    """One supervised example: the model sees ``prompt`` and learns ``completion``."""

    prompt: str
    completion: str
    answer: str | None = None  # the gold final answer for tasks that have one
    question: str | None = None
    messages: list[dict[str, str]] | None = None  # chat rows keep their messages for the chat template

    @property
    def text(self) -> str:
        """The paper's analysis format: question plus gold solution."""
        return self.prompt + self.completion


def qa_example(row: dict[str, Any]) -> Example:
    """GSM8K-format row -> ``"Question: {q}\\nAnswer:"`` + ``" {answer}"``."""
    return Example(
        prompt=f"Question: {row['question']}\nAnswer:",
        completion=f" {row['answer']}",
        answer=gold_answer(row["answer"]),
        question=row["question"],
    )


def resolve_task(task: str | None, data: str | None) -> str:
    """Pick the task from ``--task``/``--data``: a ``.jsonl`` data file with no task means ``jsonl``."""
    if task is None:
        if data and (data.endswith(".jsonl") and "gsm8k" not in Path(data).name.lower()):
            return "jsonl"
        return "gsm8k" if data else "arith"
    TASKS.lookup(task)
    return task


def data_version(task: str) -> str:
    """``arith-v2`` etc.: enters the fingerprints of results made from a task's rows."""
    return f"{task}-v{TASKS[task].version if task in TASKS else 1}"


def has_own_dev(task: str) -> bool:
    """Whether ``task`` has a dev split of its own (arith); the others carve theirs from train (``dev_size``)."""
    t = TASKS.get(task)
    return bool(t and t.own_dev)


def builtin_tasks() -> list[str]:
    """The tasks that find their rows without ``--data`` (a name a ``--data`` option may give instead of a file)."""
    return [n for n, t in TASKS.items() if not t.needs_data]


def carve_dev(rows: list[dict[str, Any]], dev_size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split train rows into (train, dev): dev holds the ``dev_size`` rows whose salted content hash is
    smallest, in file order; train keeps every other row except exact copies of a dev row.

    Chosen by content, not position: the same rows are dev whatever their order in the file, and rows
    appended to the file later never move an existing row between the two splits."""
    if dev_size >= len(rows):
        raise MidblockError(
            f"dev_size {dev_size} would leave no training rows (the train split has {len(rows)})",
            hint="choose a smaller dev_size",
        )
    hashes = [_row_hash(r) for r in rows]
    chosen: set[str] = set()
    for h in sorted(set(hashes)):
        if len(chosen) == dev_size:
            break
        chosen.add(h)
    dev, train, seen = [], [], set()
    for r, h in zip(rows, hashes):
        if h not in chosen:
            train.append(r)
        elif h not in seen:  # a row twice in the file is one dev item
            seen.add(h)
            dev.append(r)
    return train, dev


def _row_hash(row: dict[str, Any]) -> str:
    import hashlib
    import json

    text = json.dumps(row, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(f"{_DEV_SALT}\n{text}".encode()).hexdigest()


def check_dev_disjoint(train_rows: list[dict[str, Any]], dev_rows: list[dict[str, Any]], what: str = "dev") -> None:
    """Refuse (one line) when a dev item's question or prompt appears in any training row's text."""
    texts = "\x00".join(" ".join(to_example(r).text.split()) for r in train_rows)
    leaked = []
    for r in dev_rows:
        ex = to_example(r)
        probe = " ".join((ex.question or ex.prompt or ex.completion).split())
        if probe and probe in texts:
            leaked.append(probe)
    if leaked:
        raise MidblockError(
            f"{len(leaked)} of {len(dev_rows)} {what} items appear in the training data, e.g. {leaked[0][:60]!r}",
            hint="carve the dev split from the training data itself (the same task and data), or remove those rows",
        )


def load_rows(
    task: str,
    split: str = "train",
    data: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    dev_size: int = 0,
) -> list[dict[str, Any]]:
    """Raw rows of a task split (``question``/``answer`` for gsm8k and arith), from the task's registered loader.

    ``dev_size`` (gsm8k, jsonl): that many rows of the train split form the dev split (:func:`carve_dev`)
    and leave the train split; arith has a dev split of its own and ignores it."""
    if dev_size < 0:
        raise MidblockError(f"dev_size must be >= 0, got {dev_size}")
    rows = TASKS.lookup(task).load(split, data, dev_size)
    if offset:
        rows = rows[offset:]
    if limit is not None:
        rows = rows[:limit]
    return rows


def _carved(read, task: str, split: str, dev_size: int) -> list[dict[str, Any]]:
    if split == "dev":
        if dev_size < 1:
            raise MidblockError(
                f"{task} has no dev split of its own", hint="set dev_size: rows carved from train (e.g. 200)"
            )
        return carve_dev(read("train"), dev_size)[1]
    rows = read(split)
    return carve_dev(rows, dev_size)[0] if split == "train" and dev_size else rows


def _jsonl_split(data: str, split: str) -> list[dict[str, Any]]:
    path = Path(data)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    return read_jsonl(path, any_of=(("prompt", "completion"), ("messages",), ("question", "answer"), ("text",)))


@register_task("gsm8k", version=2, scored=True)
def _gsm8k(split: str, data: str | None, dev_size: int) -> list[dict[str, Any]]:
    """GSM8K grade-school math word problems (a local copy: --data or $MIDBLOCK_GSM8K); its dev split is
    ``dev_size`` rows carved from train."""
    return _carved(lambda s: load_gsm8k(s, data), "gsm8k", split, dev_size)


@register_task("arith", version=ARITH_VERSION, scored=True, own_dev=True)
def _arith(split: str, data: str | None, dev_size: int) -> list[dict[str, Any]]:
    """Built-in GSM8K-style arithmetic word problems (2-3 operations, worked ``#### N`` solutions) from fixed
    seeds: train, dev and test splits of their own, nothing to download."""
    return generate_arith(split)


@register_task("jsonl", version=2, scored=False, needs_data=True)
def _jsonl(split: str, data: str | None, dev_size: int) -> list[dict[str, Any]]:
    """Your own rows from --data FILE.jsonl (or a directory of SPLIT.jsonl files): prompt/completion,
    question/answer, chat messages or plain text; its dev split is ``dev_size`` rows carved from train."""
    if not data:
        raise MidblockError("task jsonl needs --data FILE.jsonl")
    return _carved(lambda s: _jsonl_split(data, s), "jsonl", split, dev_size)


def to_example(row: dict[str, Any]) -> Example:
    if "question" in row and "answer" in row:
        return qa_example(row)
    if "prompt" in row and "completion" in row:
        return Example(prompt=str(row["prompt"]), completion=str(row["completion"]), answer=row.get("answer"))
    if "messages" in row:
        msgs = row["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise MidblockError("a chat row must end with an assistant message")
        return Example(prompt="", completion=str(msgs[-1]["content"]), messages=msgs)
    if "text" in row:
        return Example(prompt="", completion=str(row["text"]))
    raise MidblockError(f"cannot use a row with keys {sorted(row)}")


def load_examples(
    task: str,
    split: str = "train",
    data: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    dev_size: int = 0,
) -> list[Example]:
    return [to_example(r) for r in load_rows(task, split, data, limit, offset, dev_size)]


# --------------------------------------------------------------------------- tokenisation


@dataclass
class TokenizedSet:
    """Tokenised SFT examples plus what was dropped or cut, so nothing is truncated silently."""

    items: list[dict[str, list[int]]]
    overlong: list[int] = field(default_factory=list)  # indices of examples dropped for length
    max_length: int = 0
    truncated: list[int] = field(default_factory=list)  # indices of examples cut at max_length

    def report(self) -> dict[str, Any]:
        return {
            "kept": len(self.items),
            "dropped_overlong": len(self.overlong),
            "truncated": len(self.truncated),
            "max_length": self.max_length,
            "overlong_indices": self.overlong[:50],
        }


def _chat_prompt(ex: Example, tokenizer: PreTrainedTokenizerBase) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise MidblockError("chat rows need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(ex.messages[:-1], tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The one prompt encoder (training, decoding, perplexity, early exit): token ids without special tokens,
    plus BOS where the tokenizer's own encoding starts with one (Gemma: a Gemma model fed no BOS is badly off;
    lm-evaluation-harness and TRL use the tokenizer's default encoding, which adds it). A prompt that already
    begins with BOS (a chat template that writes it) gets no second one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    bos = tokenizer.bos_token_id
    if bos is not None and adds_bos(tokenizer) and ids[:1] != [bos]:
        ids = [bos] + ids
    return ids


_ADDS_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` puts BOS in front of a text by default: its ``add_bos_token`` flag, or what its
    post-processor does (a tokenizer converted from a GGUF may carry the template but not the flag)."""
    try:
        return _ADDS_BOS[tokenizer]
    except (KeyError, TypeError):
        pass
    bos = tokenizer.bos_token_id
    answer = False
    if bos is not None:
        if getattr(tokenizer, "add_bos_token", False):
            answer = True
        else:
            with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
            plain = tokenizer("a", add_special_tokens=False)["input_ids"]
            answer = with_special[:1] == [bos] and plain[:1] != [bos]
    try:
        _ADDS_BOS[tokenizer] = answer
    except TypeError:  # an object that cannot be weakly referenced: ask again next time
        pass
    return answer


def tokenize_example(
    ex: Example, tokenizer: PreTrainedTokenizerBase, completion_only: bool = True, add_eos: bool = True
) -> dict[str, list[int]]:
    prompt = _chat_prompt(ex, tokenizer) if ex.messages else ex.prompt
    p_ids = encode_prompt(tokenizer, prompt)
    c_ids = tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        c_ids = c_ids + [tokenizer.eos_token_id]
    ids = p_ids + c_ids
    labels = ([IGNORE_INDEX] * len(p_ids) if completion_only else list(p_ids)) + list(c_ids)
    return {"input_ids": ids, "labels": labels}


def tokenize_sft(
    examples: list[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 512,
    completion_only: bool = True,
    on_overlong: str = "drop",
) -> TokenizedSet:
    """Tokenise for SFT: prompt labels -100 (unless ``completion_only=False``), EOS appended.

    Over-long examples are dropped and reported (``on_overlong='drop'``), refused (``'error'``) or cut at
    ``max_length`` and counted (``'truncate'``, the paper's protocol; cutting a GSM8K solution removes its
    ``#### N``, so midblock's own protocol drops instead). A cut example with no labelled token left is dropped.
    """
    if on_overlong not in OVERLONG:
        raise MidblockError(f"on_overlong must be one of {', '.join(OVERLONG)}, got '{on_overlong}'")
    out = TokenizedSet([], [], max_length)
    for i, ex in enumerate(examples):
        t = tokenize_example(ex, tokenizer, completion_only)
        if len(t["input_ids"]) > max_length:
            if on_overlong == "error":
                raise MidblockError(f"example {i} has {len(t['input_ids'])} tokens > --max-length {max_length}")
            if on_overlong == "drop" or all(x == IGNORE_INDEX for x in t["labels"][1:max_length]):
                out.overlong.append(i)
                continue
            t = {k: v[:max_length] for k, v in t.items()}
            out.truncated.append(i)
        out.items.append(t)
    if not out.items:
        raise MidblockError(f"every example is longer than --max-length {max_length}", hint="raise --max-length")
    return out


def collate(batch: list[dict[str, list[int]]], pad_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad a batch of tokenised examples; labels are padded with -100, attention mask marks real tokens."""
    import torch

    T = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        sl = slice(T - n, T) if padding_side == "left" else slice(0, n)
        ids[i, sl] = torch.tensor(b["input_ids"])
        labels[i, sl] = torch.tensor(b.get("labels", b["input_ids"]))
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
