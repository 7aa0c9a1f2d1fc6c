"""Batched greedy decoding: KV cache, left padding, length-sorted batches, per-row stop strings.

``generate_completions`` returns, for each prompt, the text the model continues it with, cut at the first
stop string exactly as lm-evaluation-harness does (``for s in stops: text = text.split(s)[0]``). A row is
finished as soon as a stop string (or EOS) appears in its own continuation; the default engine then drops it
from the batch and the KV cache, the ``generate`` engine marks it with the ``StopOnStrings`` criterion. The
token prefix every prompt shares (few-shot exemplars) is computed once. Greedy, so the result equals
decoding each prompt alone with ``transformers``' ``generate``, which the tests check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicCache, DynamicLayer

from midblock.data.tasks import encode_prompt
from midblock.errors import MidblockError
from midblock.evaluation.config import DecodeConfig
from midblock.evaluation.prefix_attention import shared_prefix_attention
from midblock.models.loading import check_remote_code, trust_remote_code
from midblock.tuning.slow_run import (
    GENERATE_GFLOPS_PER_CORE,
    TIMED_UNITS,
    WARMUP_UNITS,
    expected_seconds,
    machine_facts,
    note_if_slow,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class StopOnStrings(StoppingCriteria):
    """Marks a row finished once any stop string (or an EOS token) appears in its generated part.

    Only the last ``window`` generated tokens of unfinished rows are decoded each step: a stop string that
    just appeared ends inside that window, and finished rows cost nothing more.
    """

    def __init__(self, tokenizer, stops: Sequence[str], prompt_len: int, eos_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.prompt_len = prompt_len
        self.eos_ids = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        self.window = 2 * max((len(s) for s in self.stops), default=0) + 4
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1]
        if len(self.eos_ids):
            self.done |= torch.isin(last, self.eos_ids.to(last.device))
        if self.stops:
            start = max(self.prompt_len, input_ids.shape[1] - self.window)
            for i in (~self.done).nonzero().flatten().tolist():
                tail = self.tokenizer.decode(input_ids[i, start:], skip_special_tokens=False)
                if any(s in tail for s in self.stops):
                    self.done[i] = True
        return self.done.clone()


def eos_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: set[int] = set()
    for src in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return sorted(ids)


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """The harness's post-processing: keep what comes before each stop string in turn."""
    for s in stops:
        if s:
            text = text.split(s)[0]
    return text


def decode_completion(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], eos_ids: Sequence[int], stops: Sequence[str]
) -> str:
    ids = list(ids)
    for j, t in enumerate(ids):
        if t in eos_ids:
            ids = ids[:j]
            break
    return truncate_at_stops(tokenizer.decode(ids, skip_special_tokens=True), stops)


def shared_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving every sequence at least one token of its own."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return max(k, 0)


@dataclass
class _Prefix:
    ids: list[int]
    cache: object  # a transformers Cache holding the prefix's keys and values, batch 1


class _PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in one buffer sized for the whole decode.

    transformers' layer appends a token by concatenation, which copies the entire cache every step: with a
    1,000-token few-shot prompt that copy was two thirds of a decode step on CPU. Here a token is written in
    place and the layer exposes views of the filled part, so each step touches only the new token.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def allocate(self, like_k: torch.Tensor, like_v: torch.Tensor, batch: int) -> None:
        _, heads, _, dim = like_k.shape
        self.device = like_k.device
        self._k = like_k.new_empty((batch, heads, self.capacity, dim))
        self._v = like_v.new_empty((batch, heads, self.capacity, like_v.shape[-1]))
        self.is_initialized = True
        self._expose()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states, value_states, key_states.shape[0])

    def _expose(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:  # never expected (capacity covers prompt + max_new_tokens); stay correct anyway
            grow = end - self.capacity
            self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:2], grow, self._k.shape[-1])], dim=2)
            self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:2], grow, self._v.shape[-1])], dim=2)
            self.capacity = end
        self._k[:, :, self.length : end] = key_states  # a batch-1 prefix broadcasts to every row
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        self.length = max(0, self.length - abs(tokens_to_remove))
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("allocate the preallocated cache for the full batch instead")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._expose()


def _preallocated_cache(model, batch: int, capacity: int, prefix: _Prefix | None) -> DynamicCache | None:
    """A cache of ``_PreallocatedLayer`` for ``batch`` rows holding ``prefix``'s keys and values in every row,
    or None where the model's cache has other layer types (sliding windows, linear attention...)."""
    cache = DynamicCache(config=model.config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    layers = [_PreallocatedLayer(capacity) for _ in cache.layers]
    if prefix is not None:
        src = prefix.cache.layers
        if len(src) != len(layers) or any(not layer.is_initialized for layer in src):
            return None
        for mine, theirs in zip(layers, src):
            mine.allocate(theirs.keys, theirs.values, batch)
            mine.update(theirs.keys, theirs.values)
    cache.layers = layers
    return cache


def _has_sliding_window(model) -> bool:
    """Sliding-window attention counts padded positions too, so a padded gap would change what rows see."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    return bool(getattr(cfg, "sliding_window", None)) and bool(
        getattr(cfg, "use_sliding_window", True) or "sliding_attention" in (getattr(cfg, "layer_types", None) or [])
    )


def _cache_kwarg(model) -> str:
    """The forward argument that takes a cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _last_logits_only(model) -> dict[str, int]:
    """``logits_to_keep=1`` where the model takes it: the LM head runs on the last position only."""
    import inspect

    try:
        ok = "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        ok = False
    return {"logits_to_keep": 1} if ok else {}


@torch.inference_mode()
def _prefix_cache(model, ids: list[int]) -> _Prefix:
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, **_last_logits_only(model))
    cache = out["cache"] if "cache" in out else out["past_key_values"]  # the output's name for it varies too
    return _Prefix(ids, cache)


@torch.inference_mode()
def _generate_batch(
    model, tokenizer, batch: list[list[int]], cfg: DecodeConfig, eos: list[int], prefix: _Prefix | None = None
) -> list[str]:
    """One batch, left padded. With a shared ``prefix`` the rows are ``[prefix][pads][own tokens]``: the
    prefix's cache is reused and the padding masked, positions counted over real tokens only, so each row
    sees exactly the sequence it would see alone."""
    import copy

    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    P = len(prefix.ids) if prefix is not None else 0
    own = [x[P:] for x in batch]
    S = max(len(x) for x in own)
    T = P + S
    device = next(model.parameters()).device
    ids = torch.full((len(batch), T), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    if P:
        ids[:, :P] = torch.tensor(prefix.ids)
        mask[:, :P] = 1
    for i, x in enumerate(own):  # left padding of each row's own part: every prompt ends at position T
        ids[i, T - len(x) :] = torch.tensor(x)
        mask[i, T - len(x) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    if cfg.engine == "loop":
        gen = _greedy_loop(model, tokenizer, ids, mask, cfg, eos, prefix if P else None)
        return [decode_completion(tokenizer, g, eos, cfg.stop) for g in gen]
    extra = {}
    if P:
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(len(batch))
        extra[_cache_kwarg(model)] = cache
    gcfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=pad,
        eos_token_id=eos or None,
        use_cache=True,
    )
    stopper = StopOnStrings(tokenizer, cfg.stop, T, eos)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_config=gcfg,
        stopping_criteria=StoppingCriteriaList([stopper]),
        **extra,
    )
    return [decode_completion(tokenizer, row[T:].tolist(), eos, cfg.stop) for row in out]


@torch.inference_mode()
def _greedy_loop(
    model, tokenizer, ids, mask, cfg: DecodeConfig, eos: list[int], prefix: _Prefix | None
) -> list[list[int]]:
    """Greedy decoding that removes a row from the batch (and from the KV cache) the step it finishes.

    Same arithmetic per row as ``generate`` (positions counted over real tokens, padding masked), so the
    tokens equal those of decoding the row alone; finished rows cost nothing afterwards.
    """
    import copy

    B = ids.shape[0]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = {}
    start = len(prefix.ids) if prefix is not None else 0
    cache = _preallocated_cache(model, B, ids.shape[1] + cfg.max_new_tokens, prefix)
    if cache is None and prefix is not None:  # other cache layouts: transformers' cache, prefix per row
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(B)
    if cache is not None:
        kw[_cache_kwarg(model)] = cache
    kw |= _last_logits_only(model)
    # with the prefix held once per row at the same positions, attention can read it once for all rows
    shared = start if prefix is not None and isinstance(getattr(cache, "layers", [None])[0], _PreallocatedLayer) else 0
    with shared_prefix_attention(model, shared):
        return _decode(model, tokenizer, (ids, mask, pos), start, kw, cfg, eos)


def _decode(model, tokenizer, batch: tuple, start: int, kw: dict, cfg: DecodeConfig, eos: list[int]):
    """Greedy decoding from position ``start`` of ``batch`` = (ids, mask, positions), prefix already cached."""
    ids, mask, pos = batch
    B = ids.shape[0]
    out = model(input_ids=ids[:, start:], attention_mask=mask, position_ids=pos[:, start:], use_cache=True, **kw)
    out_key = "cache" if "cache" in out else "past_key_values"  # where outputs put it
    key = _cache_kwarg(model)  # what forward takes
    cache = out[out_key]
    nxt = out.logits[:, -1].argmax(-1)
    last = pos[:, -1]
    active = list(range(B))
    gen: list[list[int]] = [[] for _ in range(B)]
    eos_set = set(eos)
    window = 2 * max((len(s) for s in cfg.stop), default=0) + 4
    for step in range(cfg.max_new_tokens):
        keep = []
        for j, row in enumerate(active):
            t = int(nxt[j])
            gen[row].append(t)
            done = t in eos_set
            if not done and cfg.stop:
                tail = tokenizer.decode(gen[row][-window:], skip_special_tokens=False)
                done = any(s in tail for s in cfg.stop)
            if not done:
                keep.append(j)
        if not keep or step == cfg.max_new_tokens - 1:
            break
        if len(keep) < len(active):  # drop finished rows everywhere, cache included
            idx = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(idx)
            mask, nxt, last = mask[idx], nxt[idx], last[idx]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        last = last + 1
        out = model(
            input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], use_cache=True, **{key: cache}
        )
        cache = out[out_key]
        nxt = out.logits[:, -1].argmax(-1)
    return gen


def generate_completions(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: DecodeConfig | None = None,
    on_result: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Greedy completions of ``prompts`` (in their order), decoded in length-sorted batches.

    ``on_result(i, completion)`` is called as soon as prompt ``i``'s batch finishes, so callers can write
    results as they go.
    """
    cfg = cfg or DecodeConfig()
    eos = eos_token_ids(model, tokenizer)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    _warn_if_too_long(model, encoded, cfg.max_new_tokens)
    # longest first: similar lengths share a batch (little padding) and memory peaks at the start
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[str | None] = [None] * len(prompts)
    prefix = None
    if cfg.prefix_cache and len(encoded) > 1 and not _has_sliding_window(model):
        P = shared_prefix_len(encoded)
        if P >= cfg.min_prefix:
            prefix = _prefix_cache(model, encoded[order[0]][:P])
            log.debug("caching a shared prefix of %d tokens", P)
    bar = _progress(len(prompts), cfg.progress)
    t0 = time.perf_counter()
    batch_s: list[float] = []
    try:
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            tb = time.perf_counter()
            texts = _generate_batch(model, tokenizer, [encoded[i] for i in idx], cfg, eos, prefix)
            batch_s.append(time.perf_counter() - tb)
            if len(batch_s) == WARMUP_UNITS + TIMED_UNITS:  # once, early: will this evaluation be slow?
                _note_pace(model, encoded, cfg, batch_s)
            for i, text in zip(idx, texts):
                results[i] = text
                if on_result is not None:
                    on_result(i, text)
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(items_per_s=f"{(b + len(idx)) / (time.perf_counter() - t0):.2f}")
    finally:
        if bar is not None:
            bar.close()
    return [r if r is not None else "" for r in results]


def _note_pace(model, encoded: list[list[int]], cfg: DecodeConfig, batch_s: list[float]) -> None:
    """Say once if decoding runs far slower than this machine should (see :mod:`midblock.tuning.slow_run`):
    the expected batch costs 2 FLOP per parameter per token, prompt and every allowed new token counted."""
    p = next(model.parameters(), None)
    if p is None:
        return
    n_params = sum(x.numel() for x in model.parameters())
    mean_len = sum(len(x) for x in encoded) / len(encoded)
    gflop = 2 * n_params * (mean_len + cfg.max_new_tokens) * cfg.batch_size / 1e9
    facts = machine_facts(p.device.type, "bf16" if p.dtype == torch.bfloat16 else "fp32")
    expected = expected_seconds(gflop, GENERATE_GFLOPS_PER_CORE, facts)
    total = -(-len(encoded) // cfg.batch_size)
    note_if_slow("generation", f"batch of {cfg.batch_size}", batch_s, total, expected, facts)


def _warn_if_too_long(model, encoded: list[list[int]], max_new: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit or not encoded:
        return
    over = sum(1 for x in encoded if len(x) + max_new > limit)
    if over:
        log.warning(
            "%d of %d prompts plus %d new tokens exceed the model's %d positions; results may be meaningless",
            over,
            len(encoded),
            max_new,
            limit,
        )


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", desc="generate", dynamic_ncols=True)


def generate_vllm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: DecodeConfig,
    adapter: str | None = None,
) -> list[str]:
    """The same greedy decoding through vLLM (GPU users): same prompt token ids, same stop-string cut."""
    try:
        import vllm
    except ImportError as e:
        raise MidblockError("--backend vllm needs vLLM", hint="pip install vllm, or use --backend hf") from e

    check_remote_code(model_path)
    llm = vllm.LLM(model=model_path, enable_lora=adapter is not None, seed=0, trust_remote_code=trust_remote_code())
    params = vllm.SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens, stop=list(cfg.stop) or None)
    lora = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("adapter", 1, adapter)
    token_prompts = [{"prompt_token_ids": encode_prompt(tokenizer, p)} for p in prompts]
    outs = llm.generate(token_prompts, params, lora_request=lora)
    return [truncate_at_stops(o.outputs[0].text, cfg.stop) for o in outs]
