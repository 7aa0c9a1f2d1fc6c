import json
import math

import pytest
import torch

from midblock.errors import MidblockError
from midblock.evaluation.ppl import load_texts, token_loss

TEXTS = ["Question: 2+2?\nAnswer: 4", "a", "The quick brown fox jumps over the lazy dog.", "x" * 40, "Hello there"]


def _direct(model, tok, texts):
    """Token NLL computed one text at a time, no padding anywhere."""
    total, n = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"]])
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        n += ids.shape[1] - 1
    return total / n, n


def test_token_loss_equals_direct_computation_and_ignores_batching(tiny):
    model, tok = tiny("llama-tiny")
    ref, n = _direct(model, tok, TEXTS)
    r1 = token_loss(model, tok, TEXTS, batch_size=1)
    r5 = token_loss(model, tok, TEXTS, batch_size=5)
    r2 = token_loss(model, tok, list(reversed(TEXTS)), batch_size=2)
    assert r1["n_tokens"] == r5["n_tokens"] == r2["n_tokens"] == n
    for r in (r1, r5, r2):
        assert r["loss"] == pytest.approx(ref, abs=1e-5)
        assert r["ppl"] == pytest.approx(math.exp(ref), rel=1e-5)
    # a random byte-level model is close to uniform over its 272 tokens
    assert 4.0 < ref < 7.0


def test_token_loss_truncates_and_counts(tiny):
    model, tok = tiny("llama-tiny")
    r = token_loss(model, tok, ["y" * 50, "short"], max_length=10)
    assert r["n_truncated"] == 1 and r["n_tokens"] == 9 + 4
    with pytest.raises(MidblockError):
        token_loss(model, tok, ["a"])


def test_load_texts_formats(tmp_path):
    j = tmp_path / "c.jsonl"
    rows = [{"text": "t1"}, {"prompt": "P", "completion": " C"}, {"question": "Q", "answer": "A"}]
    j.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_texts(j) == ["t1", "P C", "Question: Q\nAnswer: A"]
    t = tmp_path / "c.txt"
    t.write_text("doc one\nline two\n\n\ndoc two\n")
    assert load_texts(t) == ["doc one\nline two", "doc two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(MidblockError, match="needs text"):
        load_texts(bad)


def test_token_loss_per_text_is_in_input_order_and_sums_to_the_total(tiny):
    model, tok = tiny("llama-tiny")
    for bs in (1, 2, 5):  # batches sort texts by length; per_text must come back in the input order
        r = token_loss(model, tok, TEXTS, batch_size=bs)
        assert len(r["per_text"]) == len(TEXTS)
        for text, (s, n) in zip(TEXTS, r["per_text"]):
            if len(text) < 2:  # one byte token: nothing to predict
                assert (s, n) == (0.0, 0)
                continue
            ref, ref_n = _direct(model, tok, [text])
            assert n == ref_n and s == pytest.approx(ref * ref_n, rel=1e-5)
        assert sum(n for _, n in r["per_text"]) == r["n_tokens"]
        assert sum(s for s, _ in r["per_text"]) / r["n_tokens"] == pytest.approx(r["loss"], rel=1e-9)


@pytest.mark.parametrize("preset", ["llama-tiny", "gemma3-tiny"])
def test_token_loss_never_runs_the_head_on_every_position(tiny, preset, monkeypatch):
    """The head runs a chunk of rows at a time off the caught hidden states (Gemma-3's 262k vocabulary would
    need 4 GiB of float32 logits for 8 x 512 tokens); the model's own head module sees one position per row.
    gemma3-tiny: tied head, scaled embedding, and a tokenizer that starts texts with BOS (counted as a source,
    never as a target)."""
    model, tok = tiny(preset)
    seen = []
    head = model.get_output_embeddings()
    real = head.forward  # a spy on the instance, not a hook (a hooked head is not used directly: loss.plain_linear)
    monkeypatch.setattr(head, "forward", lambda x: seen.append(tuple(x.shape)) or real(x))
    r = token_loss(model, tok, TEXTS, batch_size=3)
    assert seen and {s[-2] for s in seen} == {1}  # [batch, 1, hidden]
    total, n = 0.0, 0
    for t in TEXTS:  # direct: one text at a time, as the tokenizer encodes it by default (BOS for Gemma)
        ids = torch.tensor([tok(t)["input_ids"]])
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        n += ids.shape[1] - 1
    assert r["n_tokens"] == n and r["loss"] == pytest.approx(total / n, abs=1e-5)
