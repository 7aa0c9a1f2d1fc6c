import pytest
import torch

from midblock.evaluation.generate import (
    DecodeConfig,
    StopOnStrings,
    generate_completions,
    truncate_at_stops,
)

PROMPTS = [f"Question: what is {i} plus {3 * i}?{' Think.' * (i % 4)}\nAnswer:" for i in range(7)]


@pytest.fixture
def lively(tiny):
    """A tiny random model with larger weights, so greedy outputs vary instead of repeating one byte."""
    model, tok = tiny("llama-tiny", seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model, tok


def _count_forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_batched_equals_one_at_a_time(lively):
    model, tok = lively
    cfg = dict(max_new_tokens=24, stop=("Question:", "\n\n"), progress=False)
    batched = generate_completions(model, tok, PROMPTS, DecodeConfig(batch_size=4, **cfg))
    single = generate_completions(model, tok, PROMPTS, DecodeConfig(batch_size=1, prefix_cache=False, **cfg))
    assert batched == single
    assert len(set(batched)) > 3  # the outputs differ per prompt: the comparison means something


def test_row_dropping_loop_equals_transformers_generate(lively):
    model, tok = lively
    cfg = dict(max_new_tokens=16, stop=("Question:", "\n\n"), progress=False)
    loop = generate_completions(model, tok, PROMPTS, DecodeConfig(batch_size=4, engine="loop", **cfg))
    hf = generate_completions(
        model, tok, PROMPTS, DecodeConfig(batch_size=1, engine="generate", prefix_cache=False, **cfg)
    )
    hf_batched = generate_completions(model, tok, PROMPTS, DecodeConfig(batch_size=4, engine="generate", **cfg))
    assert loop == hf == hf_batched


def test_stop_string_truncates_like_the_harness_and_stops_early(lively):
    model, tok = lively
    free = generate_completions(model, tok, PROMPTS, DecodeConfig(max_new_tokens=30, batch_size=7, progress=False))
    # a stop string taken from inside the first completion: that row must end there, the others not change
    stop = free[0][6:8]
    assert stop and stop in free[0]
    calls, h = _count_forwards(model)
    stopped = generate_completions(
        model, tok, PROMPTS, DecodeConfig(max_new_tokens=30, stop=(stop,), batch_size=1, progress=False)
    )
    h.remove()
    for f, s in zip(free, stopped):
        assert s == truncate_at_stops(f, (stop,))
    assert stopped[0] == free[0].split(stop)[0]
    # prompt 0 stopped after ~8 of 30 tokens: fewer forward passes than 7 x 30
    assert len(calls) < 7 * 30


def test_finished_rows_leave_the_batch(lively):
    model, tok = lively
    free = generate_completions(model, tok, PROMPTS, DecodeConfig(max_new_tokens=20, batch_size=7, progress=False))
    stop = free[0][3:5]
    sizes = []
    h = model.register_forward_hook(
        lambda m, args, kwargs, out: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    out = generate_completions(
        model, tok, PROMPTS, DecodeConfig(max_new_tokens=20, stop=(stop,), batch_size=7, progress=False)
    )
    h.remove()
    assert out == [truncate_at_stops(f, (stop,)) for f in free]
    batch = sizes[sizes.index(7) :]  # (a batch-1 forward may come first: the shared prefix's cache)
    assert batch[-1] < 7  # the stopped row(s) were dropped, not decoded to the end
    assert batch == sorted(batch, reverse=True)


def test_stop_criterion_marks_rows_and_ignores_the_prompt(tokenizer):
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = enc("Question: 1\nAnswer:")
    rows = [prompt + enc(" 5 Question:"), prompt + enc(" 5 and 6 ...")]
    ids = torch.tensor(rows)
    crit = StopOnStrings(tokenizer, ["Question:"], prompt_len=len(prompt), eos_ids=[tokenizer.eos_token_id])
    assert crit(ids, None).tolist() == [True, False]
    # the prompt itself contains the stop string: it must not count
    crit2 = StopOnStrings(tokenizer, ["Question:"], prompt_len=len(prompt), eos_ids=[])
    assert crit2(torch.tensor([prompt + enc(" 7")]), None).tolist() == [False]
    # an EOS token finishes a row; once finished a row stays finished
    eos_row = torch.tensor([prompt + enc(" 7") + [tokenizer.eos_token_id]])
    assert crit2(eos_row, None).tolist() == [False]  # crit2 has no EOS ids
    crit3 = StopOnStrings(tokenizer, [], prompt_len=len(prompt), eos_ids=[tokenizer.eos_token_id])
    assert crit3(eos_row, None).tolist() == [True]
    assert crit3(torch.tensor([prompt + enc(" 7") + enc("x")]), None).tolist() == [True]


def test_truncate_at_stops():
    assert truncate_at_stops(" 4 apples.\n#### 4\n\nQuestion: next", ("Question:", "</s>")) == " 4 apples.\n#### 4\n\n"
    assert truncate_at_stops("a</s>bQuestion:", ("Question:", "</s>")) == "a"
    assert truncate_at_stops("none", ()) == "none"


def test_on_result_reports_every_item_in_prompt_order(lively):
    model, tok = lively
    seen = {}
    out = generate_completions(
        model,
        tok,
        PROMPTS[:5],
        DecodeConfig(max_new_tokens=5, batch_size=2, progress=False),
        on_result=lambda i, t: seen.__setitem__(i, t),
    )
    assert seen == dict(enumerate(out))


@pytest.mark.slow
def test_batched_with_prefix_cache_equals_one_at_a_time_on_smollm2(gsm8k_path):
    from midblock.data import load_rows
    from midblock.evaluation.prompts import fewshot_prompt
    from midblock.models import load_model

    model, tok = load_model("smollm2-135m")
    rows = load_rows("gsm8k", "test", str(gsm8k_path), limit=3)
    shot = load_rows("gsm8k", "train", str(gsm8k_path), limit=1)  # a 1-shot prompt: a shared prefix to cache
    prompts = [fewshot_prompt(r["question"], shot) for r in rows]
    cfg = dict(max_new_tokens=32, stop=("Question:", "</s>", "<|im_end|>"), progress=False)
    batched = generate_completions(model, tok, prompts, DecodeConfig(batch_size=3, **cfg))
    single = generate_completions(model, tok, prompts, DecodeConfig(batch_size=1, prefix_cache=False, **cfg))
    assert batched == single


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_shared_prefix_cache_equals_plain_decoding(tiny, preset):
    from midblock.evaluation.generate import encode_prompt, shared_prefix_len

    model, tok = tiny(preset, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    pre = "Question: a shared exemplar, long enough to be cached.\nAnswer: 42\n\n"
    prompts = [pre + p for p in PROMPTS]
    assert shared_prefix_len([encode_prompt(tok, p) for p in prompts]) >= len(pre)
    cached = generate_completions(model, tok, prompts, DecodeConfig(max_new_tokens=16, batch_size=4, progress=False))
    plain = generate_completions(
        model, tok, prompts, DecodeConfig(max_new_tokens=16, batch_size=1, progress=False, prefix_cache=False)
    )
    assert cached == plain and len(set(plain)) > 3


def test_shared_prefix_len_leaves_each_row_a_token():
    from midblock.evaluation.generate import shared_prefix_len

    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_len([[7, 8], [9]]) == 0


def test_preallocated_layer_holds_what_a_dynamic_layer_holds():
    """In-place writes into one buffer give the same keys/values as transformers' concatenating layer,
    through a broadcast batch-1 prefix, multi-token and one-token updates, and row dropping."""
    from transformers.cache_utils import DynamicLayer

    from midblock.evaluation.generate import _PreallocatedLayer

    g = torch.Generator().manual_seed(0)
    B, H, D = 3, 2, 4
    pk, pv = torch.randn(1, H, 5, D, generator=g), torch.randn(1, H, 5, D, generator=g)
    mine, ref = _PreallocatedLayer(capacity=5 + 4 + 3 + 1), DynamicLayer()
    mine.allocate(pk, pv, B)
    mine.update(pk, pv)
    ref.update(pk.expand(B, -1, -1, -1).clone(), pv.expand(B, -1, -1, -1).clone())
    steps = [torch.randn(B, H, 4, D, generator=g)] + [torch.randn(B, H, 1, D, generator=g) for _ in range(3)]
    for i, k in enumerate(steps):
        if i == 2:
            keep = torch.tensor([0, 2])
            mine.batch_select_indices(keep)
            ref.batch_select_indices(keep)
            k = k[keep]
        elif i == 3:
            k = k[torch.tensor([0, 2])]
        km, vm = mine.update(k, 2 * k)
        kr, vr = ref.update(k, 2 * k)
        assert torch.equal(km, kr) and torch.equal(vm, vr)
        assert mine.get_seq_length() == ref.get_seq_length()
    assert mine.get_seq_length() == 5 + 4 + 3 == mine.capacity - 1  # one slot left: nothing reallocated


def test_decode_writes_the_cache_in_place(lively, monkeypatch):
    """The greedy loop uses the preallocated cache (no whole-cache copy per token) on a plain-attention model."""
    import midblock.evaluation.generate as gen

    seen = []
    real = gen._preallocated_cache
    monkeypatch.setattr(gen, "_preallocated_cache", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    model, tok = lively
    generate_completions(model, tok, PROMPTS[:3], DecodeConfig(max_new_tokens=8, batch_size=3, progress=False))
    assert seen and all(c is not None for c in seen)
    assert all(isinstance(layer, gen._PreallocatedLayer) for layer in seen[0].layers)


@pytest.mark.parametrize("preset", ["gemma3-tiny", "mistral-tiny"])
def test_loop_equals_transformers_generate_on_other_cache_layouts(tiny, preset):
    """Sliding-window layers fall back to transformers' own cache; grouped-query heads use the in-place one."""
    model, tok = tiny(preset, seed=0)
    with torch.no_grad():  # scaled so greedy outputs differ between prompts (gemma3 scales its embeddings itself)
        for p in model.parameters():
            p.mul_(1.0 if preset == "gemma3-tiny" else 3.0)
    cfg = dict(max_new_tokens=16, stop=("\n\n",), progress=False)
    loop = generate_completions(model, tok, PROMPTS, DecodeConfig(batch_size=4, engine="loop", **cfg))
    ref = generate_completions(
        model, tok, PROMPTS, DecodeConfig(batch_size=1, engine="generate", prefix_cache=False, **cfg)
    )
    assert loop == ref and len(set(ref)) > 3
