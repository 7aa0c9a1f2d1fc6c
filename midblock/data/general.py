"""The bundled general-text corpora that measure forgetting (perplexity on text unlike the training task).

- ``general`` (``general-v2``, the default): 98 texts of 200-330 SmolLM2 tokens each, about 24,900 scored
  tokens, a third from each of three public-domain sources: Ambrose Bierce's *The Devil's Dictionary*
  (1911), *The Jargon File* 4.4.7 (2003) and essays of the SQLite documentation. Built by
  ``tools/build_general_corpus.py``; provenance and licences in ``docs/evaluation.md``. A test checks that
  it shares no sentence and no 8-word sequence with any training source (``arith``, GSM8K, ``general-v1``).
- ``general-v1``: the first corpus, 40 sentences of our own (791 scored tokens), kept so results made
  with it can be reproduced; too small to measure forgetting with an interval.

A corpus's name and the digest of its texts enter every fingerprint that uses it, so a result measured on
one version is never reused for another.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from midblock.errors import MidblockError

GENERAL = "general-v2"  # what the name ``general`` means
CORPORA = {"general-v1": "corpora/general.txt", "general-v2": "corpora/general-v2.jsonl"}


def corpus_name(name: str) -> str:
    """``general`` -> the current version's name; versioned names are returned as they are."""
    return GENERAL if name == "general" else name


def is_bundled(name: str) -> bool:
    return corpus_name(name) in CORPORA


def general_rows(name: str = "general") -> list[dict[str, Any]]:
    """The rows of a bundled corpus: ``{"id", "source", "text"}`` (``general-v1``: one row per sentence)."""
    name = corpus_name(name)
    if name not in CORPORA:
        raise MidblockError(f"unknown bundled corpus '{name}'", hint="use general, " + ", ".join(CORPORA))
    raw = resources.files("midblock.data").joinpath(CORPORA[name]).read_text(encoding="utf-8")
    if name == "general-v1":
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        return [{"id": f"v1-{i:03d}", "source": "own", "text": t} for i, t in enumerate(lines)]
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def general_texts(name: str = "general", limit: int | None = None) -> list[str]:
    """The texts of a bundled corpus, in file order; with ``limit``, that many spread evenly over the file.

    The file is grouped by source, so the first ``limit`` texts would all come from one work: an even spread
    keeps a subset (the quick demo's) drawn from every source."""
    texts = [r["text"] for r in general_rows(name)]
    return spread(texts, limit)


def spread(items: list, limit: int | None) -> list:
    """``limit`` items at evenly spaced positions (the middle of each of ``limit`` equal stretches), in order;
    all when ``limit`` is None or not smaller than the list."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[((2 * i + 1) * len(items)) // (2 * limit)] for i in range(limit)]
