"""The bundled forgetting probe: big enough to measure, diverse, and disjoint from every training source."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from midblock.data.arith import DEFAULT_SIZES, generate_arith
from midblock.data.general import GENERAL, general_rows, general_texts

NGRAM = 8  # a shared run of 8 words would be a copied passage, not a common phrase


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def _sentences(text: str) -> set[tuple[str, ...]]:
    """Sentences of four words or more, as word tuples (shorter ones, 'See also.', are not evidence)."""
    out = set()
    for s in re.split(r"(?<=[.!?])\s+|\n", text):
        w = tuple(_words(s))
        if len(w) >= 4:
            out.add(w)
    return out


def _assert_disjoint(sources: list[str]) -> None:
    probe = general_texts()
    probe_grams = set().union(*(_ngrams(t) for t in probe))
    probe_sents = set().union(*(_sentences(t) for t in probe))
    shared_grams = [g for t in sources for g in _ngrams(t) if g in probe_grams]
    shared_sents = [s for t in sources for s in _sentences(t) if s in probe_sents]
    assert not shared_grams, f"{len(shared_grams)} shared {NGRAM}-word sequences, e.g. {' '.join(shared_grams[0])}"
    assert not shared_sents, f"{len(shared_sents)} shared sentences, e.g. {' '.join(shared_sents[0])}"


@pytest.fixture(scope="module")
def smol_tokenizer():
    from midblock.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m")  # the GGUF's tokenizer (converted once, cached afterwards)


def test_probe_has_20k_scored_tokens_in_texts_of_a_few_hundred(smol_tokenizer):
    from midblock.data.tasks import encode_prompt

    lengths = [len(encode_prompt(smol_tokenizer, t)) for t in general_texts()]
    scored = sum(n - 1 for n in lengths)  # the first token of a text is never predicted
    assert scored >= 20_000
    assert 150 <= min(lengths) and max(lengths) <= 400  # never cut at the presets' 512 tokens


def test_probe_is_diverse_and_versioned():
    rows = general_rows()
    assert GENERAL == "general-v2" and general_rows("general") == general_rows("general-v2")
    share = Counter(r["source"] for r in rows)
    assert set(share) == {"devil", "jargon", "sqlite"}
    assert all(n >= len(rows) / 4 for n in share.values())  # no source dominates
    assert len({r["id"] for r in rows}) == len(rows)
    assert len(set(general_texts())) == len(rows)  # no text twice
    assert len(general_texts("general-v1")) == 40  # the old corpus, kept for reproduction


def test_probe_disjoint_from_arith_and_the_old_corpus():
    sources = [r["question"] + "\n" + r["answer"] for s in DEFAULT_SIZES for r in generate_arith(s)]
    _assert_disjoint(sources + general_texts("general-v1"))


def test_probe_disjoint_from_gsm8k(gsm8k_path):
    rows = []
    for split in ("train", "test"):
        rows += [json.loads(line) for line in (gsm8k_path / f"{split}.jsonl").read_text().splitlines() if line]
    assert len(rows) > 8000
    _assert_disjoint([r["question"] + "\n" + r["answer"] for r in rows])


def test_disjointness_check_can_fail():
    """The check itself finds a copied passage (so the tests above could fail)."""
    copied = " ".join(general_texts()[10].split()[20:32])
    with pytest.raises(AssertionError, match="shared"):
        _assert_disjoint([f"Question: {copied}?"])
