"""GSM8K from a local copy (directory or JSONL file) or from the hub (``openai/gsm8k``, config ``main``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from midblock.data.jsonl import read_jsonl
from midblock.errors import MidblockError

HUB_ID = "openai/gsm8k"
ENV_VAR = "MIDBLOCK_GSM8K"


def resolve_gsm8k_source(source: str | None = None) -> str:
    """A local path (argument, then ``$MIDBLOCK_GSM8K``) or the hub id."""
    if source in (None, "", "gsm8k"):
        source = os.environ.get(ENV_VAR) or HUB_ID
    return source


def load_gsm8k(split: str = "test", source: str | None = None) -> list[dict[str, Any]]:
    """Rows ``{"question", "answer"}`` of one split."""
    if split not in ("train", "test"):
        raise MidblockError(f"GSM8K has splits train and test, not '{split}'")
    src = resolve_gsm8k_source(source)
    p = Path(src)
    if p.is_dir():
        f = p / f"{split}.jsonl"
        if not f.exists():
            raise MidblockError(
                f"{p} has no {split}.jsonl", hint="point --data at a directory with train.jsonl and test.jsonl"
            )
        return read_jsonl(f, required=("question", "answer"))
    if p.suffix == ".jsonl" or p.exists():
        return read_jsonl(p, required=("question", "answer"))
    if src != HUB_ID:
        raise MidblockError(f"GSM8K source '{src}' does not exist", hint=f"use a directory, a .jsonl file or {HUB_ID}")
    return _from_hub(split)


def _from_hub(split: str) -> list[dict[str, Any]]:
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        import datasets

        ds = datasets.load_dataset(HUB_ID, "main", split=split)
    except Exception as e:
        why = "offline and not in the local cache" if offline else str(e).splitlines()[0][:120]
        raise MidblockError(
            f"cannot load GSM8K from the hub ({why})",
            hint=f"pass --data DIR (with train.jsonl/test.jsonl) or set {ENV_VAR}",
        ) from e
    return [{"question": r["question"], "answer": r["answer"]} for r in ds]


def gold_answer(answer: str) -> str:
    """The ``#### N`` value of a worked solution, commas removed."""
    if "####" not in answer:
        raise MidblockError("GSM8K answer has no '#### N' line")
    return answer.split("####")[-1].strip().replace(",", "")
