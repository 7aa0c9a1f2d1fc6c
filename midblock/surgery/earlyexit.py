"""Early exit (logit lens): decode every layer's state with the model's own final norm and LM head.

Layer index 0 is the input of block 0 (the embedding output, position embeddings and scaling included);
index l = 1..L is block l-1's output *before* the final norm, captured with forward hooks. Hugging
Face's ``hidden_states[-1]`` is already normed, and decoding it would apply the norm twice, so hooks
are used instead. Each state is normed exactly once and projected by the LM head; decoding the last
layer therefore gives the model's own logits.

Three measurements, all on real tokens only (padding masked):

- ``layer_token_stats``: next-token cross-entropy and top-1 accuracy per layer on full texts;
- top-1 predictions per layer, kept so that base and variant can be compared position by position;
- ``gold_probe``: the probability of the gold answer's first token at the answer position, from a
  prompt that does NOT contain the answer (the paper's code fed the answer in and read it back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from midblock.data.tasks import encode_prompt
from midblock.models.introspect import get_layout

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _hidden(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@torch.no_grad()
def layer_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """The L + 1 pre-norm states (B, T, D): block 0's input, then every block's output."""
    layout = get_layout(model)
    states: list[torch.Tensor | None] = [None] * (layout.num_layers + 1)

    def pre_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        states[0] = _hidden(args[0] if args else kwargs["hidden_states"])

    def make_hook(i: int) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            states[i + 1] = _hidden(output)

        return hook

    handles = [layout.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [b.register_forward_hook(make_hook(i)) for i, b in enumerate(layout.blocks)]
    try:
        # The LM head's output is not needed: logits_to_keep=1 keeps the forward from projecting every position.
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    if any(s is None for s in states):
        raise RuntimeError("a decoder block did not run: cannot capture every layer")
    return states  # type: ignore[return-value]


def decode(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Final norm (once) and LM head, with the model's logit soft-capping where it has one."""
    layout = get_layout(model)
    if layout.final_norm is not None:
        h = layout.final_norm(h)
    logits = layout.lm_head(h)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def layer_token_stats(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[float, int, int, torch.Tensor]:
    """Pure: (sum of next-token NLL, #targets, #top-1 hits, top-1 ids at scored positions).

    Position t predicts token t+1; it is scored only when both are real tokens.
    """
    valid = (attention_mask[:, :-1] > 0) & (attention_mask[:, 1:] > 0)
    lg = logits[:, :-1][valid].float()
    tgt = input_ids[:, 1:][valid]
    nll = F.cross_entropy(lg, tgt, reduction="sum")
    top1 = lg.argmax(-1)
    return float(nll), int(tgt.numel()), int((top1 == tgt).sum()), top1


@dataclass
class EarlyExitResult:
    """Per-layer sums for one model, and the top-1 ids (layer x scored position) for agreement."""

    nll: list[float]
    n_tokens: int
    hits: list[int]
    top1: list[torch.Tensor] = field(default_factory=list)

    def rows(self, model_name: str) -> list[dict[str, Any]]:
        L = len(self.nll) - 1
        return [
            {
                "model": model_name,
                "layer": l,
                "depth": l / L,
                "loss": self.nll[l] / max(self.n_tokens, 1),
                "top1": self.hits[l] / max(self.n_tokens, 1),
                "n_tokens": self.n_tokens,
            }
            for l in range(L + 1)
        ]


def _batches(seqs: list[list[int]], batch_size: int, pad_id: int):
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s : s + batch_size]
        T = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for i, x in enumerate(chunk):  # right padding: positions 0..n-1 are real, as without padding
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        yield ids, mask


@torch.no_grad()
def early_exit(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 8,
    max_length: int = 256,
    progress: bool = True,
) -> EarlyExitResult:
    """Next-token loss and top-1 accuracy of every layer's early exit over ``texts``."""
    from tqdm.auto import tqdm

    L = get_layout(model).num_layers
    seqs = [encode_prompt(tokenizer, t)[:max_length] for t in texts]
    seqs = [s for s in seqs if len(s) >= 2]
    res = EarlyExitResult([0.0] * (L + 1), 0, [0] * (L + 1), [[] for _ in range(L + 1)])  # type: ignore[list-item]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    total = (len(seqs) + batch_size - 1) // batch_size
    for ids, mask in tqdm(_batches(seqs, batch_size, pad), total=total, desc="early exit", disable=not progress):
        ids, mask = ids.to(device), mask.to(device)
        states = layer_states(model, ids, mask)
        for l, h in enumerate(states):
            nll, n, hits, top1 = layer_token_stats(decode(model, h), ids, mask)
            res.nll[l] += nll
            res.hits[l] += hits
            res.top1[l].append(top1.cpu())  # type: ignore[union-attr]
        res.n_tokens += n
    res.top1 = [torch.cat(t) if t else torch.empty(0, dtype=torch.long) for t in res.top1]  # type: ignore[arg-type]
    return res


def top1_agreement(a: EarlyExitResult, b: EarlyExitResult) -> list[float]:
    """Per layer, the fraction of scored positions where both models' early exits predict the same token."""
    out = []
    for x, y in zip(a.top1, b.top1):
        if x.shape != y.shape:
            raise ValueError("agreement needs both models scored on the same token ids")
        out.append(float((x == y).float().mean()) if x.numel() else float("nan"))
    return out


# --------------------------------------------------------------------------- gold-answer probe


def probe_inputs(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> tuple[list[int], int]:
    """(probe ids, gold first-token id). The probe ids never contain any token of the answer.

    The continuation ``prompt + ' ' + answer`` is tokenised once (so BPE word boundaries are respected);
    tokens of the continuation that decode to whitespace only (many tokenizers, SmolLM2's included,
    emit the space before a number as its own token) are separators, not the answer: they join the
    probe input, and the gold token is the first token that carries answer text.
    """
    answer = str(answer).strip()
    if not answer:
        raise ValueError("the gold answer is empty")
    p_ids = encode_prompt(tokenizer, prompt)
    joined = prompt + ("" if prompt[-1:].isspace() else " ") + answer
    f_ids = encode_prompt(tokenizer, joined)
    if not (len(f_ids) > len(p_ids) and f_ids[: len(p_ids)] == p_ids):
        # The prompt's last token merged with the answer: fall back to the answer tokenised on its own.
        f_ids = p_ids + tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    k = len(p_ids)
    while k < len(f_ids) - 1 and not tokenizer.decode([f_ids[k]]).strip():
        k += 1
    return f_ids[:k], f_ids[k]


@torch.no_grad()
def answer_position_logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L + 1, V) log-probabilities of the next token at each row's last real position, per layer."""
    last = mask.sum(1) - 1
    rows = torch.arange(ids.shape[0], device=ids.device)
    states = layer_states(model, ids, mask)
    per_layer = [F.log_softmax(decode(model, h[rows, last]).float(), -1) for h in states]
    return torch.stack(per_layer, 1)


@torch.no_grad()
def gold_probe(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], answers: list[str], batch_size: int = 8
) -> torch.Tensor:
    """(N, L + 1) probability of each item's gold first token at its answer position, per layer."""
    inputs = [probe_inputs(tokenizer, p, a) for p, a in zip(prompts, answers)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = []
    for s, (ids, mask) in enumerate(_batches([x[0] for x in inputs], batch_size, pad)):
        lp = answer_position_logprobs(model, ids.to(device), mask.to(device))
        gold = torch.tensor([g for _, g in inputs[s * batch_size : s * batch_size + ids.shape[0]]], device=device)
        out.append(lp.gather(2, gold[:, None, None].expand(-1, lp.shape[1], 1)).squeeze(2).exp().cpu())
    L = get_layout(model).num_layers
    return torch.cat(out) if out else torch.empty(0, L + 1)
