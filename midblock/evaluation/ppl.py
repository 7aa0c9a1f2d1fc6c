"""Forgetting check: token-level loss and perplexity of a model on a text corpus.

``token_loss`` is the mean negative log-likelihood over every predicted real token (padding masked), so the
result does not depend on how texts are batched; it also returns each text's summed NLL and token count
(``per_text``, in the input order), so a forgetting difference can be resampled over texts like accuracy
over test items. ``load_texts`` reads plain text (documents separated by
blank lines) or JSONL with ``text``, ``prompt``+``completion`` or ``question``+``answer`` fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from midblock.data import read_jsonl
from midblock.data.jsonl import check_data_file
from midblock.data.tasks import IGNORE_INDEX, encode_prompt
from midblock.errors import MidblockError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> tuple[list[int], bool]:
    """A text's ids (as prompts are encoded), cut at ``max_length``, and whether it was cut."""
    ids = encode_prompt(tokenizer, text)
    return ids[:max_length], len(ids) > max_length


def nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL over positions whose target is a real token, and how many there are."""
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return float(nll[valid].sum()), int(valid.sum())


def _batch_nll_rows(model, ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[float, int]]:
    """``(nll_sum, n_tokens)`` of each row of a right-padded batch, through the labelled-positions head: the
    hidden states are caught at the final norm and the head runs a chunk of rows at a time, so the batch x
    length x vocabulary logits never exist at once (4 GiB in float32 for 8 x 512 tokens of Gemma-3's 262k
    vocabulary)."""
    from midblock.tuning.loss import causal_lm_loss

    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)  # right padding: a real target has a real source
    stats: dict[str, torch.Tensor] = {}
    causal_lm_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, reduction="sum", stats=stats)
    keep = labels[:, 1:] != IGNORE_INDEX
    rows = keep.nonzero()[:, 0]  # the row of each labelled position, in the row-major order of row_loss
    sums = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
    if rows.numel():  # a batch of one-token texts predicts nothing (and the head fills no stats)
        sums.index_add_(0, rows, stats["row_loss"].to(torch.float64))
    return [(float(s), int(n)) for s, n in zip(sums.tolist(), keep.sum(dim=1).tolist())]


@torch.inference_mode()
def token_loss(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = False,
) -> dict[str, Any]:
    """``{"loss", "ppl", "n_tokens", "n_texts", "n_truncated", "per_text"}``: mean NLL per predicted token,
    exp of it, and ``per_text``: ``[nll_sum, n_tokens]`` of each text, in the order of ``texts``.

    Texts longer than ``max_length`` tokens are cut (and counted in ``n_truncated``); a text of one token
    predicts nothing and adds no tokens (its entry is ``[0.0, 0]``).
    """
    if batch_size < 1:
        raise MidblockError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise MidblockError(f"max_length must be >= 2, got {max_length}")
    if not texts:
        raise MidblockError("no texts to score")
    enc = [encode_text(tokenizer, t, max_length) for t in texts]
    truncated = sum(1 for _, cut in enc if cut)
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))  # similar lengths batch together
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    per_text: list[list[float | int]] = [[0.0, 0] for _ in enc]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(enc), unit="text", desc="loss")
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = [enc[i][0] for i in idx]
        T = max(1, max(len(x) for x in batch))
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for i, x in enumerate(batch):  # right padding: positions are 0..n-1 as in a single-text forward
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        ids, mask = ids.to(device), mask.to(device)
        for i, (s, n) in zip(idx, _batch_nll_rows(model, ids, mask)):  # back to the input order
            per_text[i] = [s, n]
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    total, count = sum(s for s, _ in per_text), sum(n for _, n in per_text)
    if count == 0:
        raise MidblockError("the texts hold no token to predict (each is a single token)")
    loss = total / count
    return {
        "loss": loss,
        "ppl": math.exp(loss),
        "n_tokens": count,
        "n_texts": len(enc),
        "n_truncated": truncated,
        "per_text": per_text,
    }


def load_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Texts of a corpus file: ``.jsonl`` rows (``text`` / ``prompt``+``completion`` / ``question``+``answer``)
    or plain text with documents separated by blank lines."""
    p = Path(path)
    if not p.exists():
        raise MidblockError(f"data file {p} does not exist")
    if p.is_dir():
        raise MidblockError(f"{p} is a directory", hint="pass a .txt or .jsonl file to --data")
    check_data_file(p)  # a FIFO would block forever
    if p.suffix == ".jsonl":
        rows = read_jsonl(p, any_of=(("text",), ("prompt", "completion"), ("question", "answer")))
        texts = [_row_text(r) for r in rows]
    else:
        try:
            raw = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise MidblockError(f"{p} is not UTF-8 text") from e
        texts = [d.strip() for d in raw.split("\n\n") if d.strip()]
        if not texts:
            raise MidblockError(f"data file {p} is empty")
    return texts[:limit] if limit is not None else texts


def _row_text(r: dict[str, Any]) -> str:
    if "text" in r:
        return str(r["text"])
    if "prompt" in r and "completion" in r:
        return str(r["prompt"]) + str(r["completion"])
    return f"Question: {r['question']}\nAnswer: {r['answer']}"  # the paper's analysis format
