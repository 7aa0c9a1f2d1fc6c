"""Build ``midblock/data/corpora/general-v2.jsonl``, the forgetting probe, from three public-domain texts.

The sources are Debian packages (fetch them with ``apt-get download dict-devil dict-jargon sqlite3-doc``
and unpack each with ``dpkg-deb -x FILE DIR``):

- ``dict-devil``: Ambrose Bierce, *The Devil's Dictionary* (1911; public domain, copyright expired);
- ``dict-jargon``: *The Jargon File* 4.4.7 (2003; placed in the public domain by its editors);
- ``sqlite3-doc``: essays of the SQLite documentation (placed in the public domain by its authors).

Each source is cut into texts of about 200-330 SmolLM2 tokens along entry or paragraph boundaries, and a
spread of them (evenly spaced through the source, so every part of the alphabet or every essay is sampled)
is kept until the source reaches its share of the token target. Usage::

    python tools/build_general_corpus.py --devil DIR --jargon DIR --sqlite DIR [--out FILE]

The probe is versioned: changing it means writing ``general-v3.jsonl`` and pointing
``midblock.data.corpora.GENERAL`` at it, so stored results of the old probe are never mixed with new ones.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
SQLITE_ESSAYS = (
    "about",
    "whentouse",
    "testing",
    "howtocorrupt",
    "quirks",
    "assert",
    "atomiccommit",
    "isolation",
    "queryplanner",
    "lockingv3",
    "wal",
    "datatype3",
)
MIN_TOKENS, MAX_TOKENS = 200, 330
TARGET_TOKENS = 24_000  # the probe's total; each source gets a third


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + B64.index(ch)
    return n


def dict_entries(root: Path, name: str) -> Iterator[str]:
    """The entries of a dictd database (``name.index`` + ``name.dict.dz``), header entries left out."""
    data = gzip.decompress((root / "usr/share/dictd" / f"{name}.dict.dz").read_bytes())
    seen = set()
    for line in (root / "usr/share/dictd" / f"{name}.index").read_text(encoding="utf-8").splitlines():
        head, off, size = line.split("\t")[:3]
        if head.startswith("00database") or (off, size) in seen:
            continue
        seen.add((off, size))
        start = _b64(off)
        yield data[start : start + _b64(size)].decode("utf-8")


def clean_entry(raw: str) -> str:
    """Paragraphs of an entry with their line breaks and indentation folded; dictd's ``{link}`` braces gone."""
    raw = raw.replace("{", "").replace("}", "")
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw)]
    return "\n".join(p for p in paras if p)


class _Text(HTMLParser):
    """Paragraph text of an HTML page: scripts, styles, tables of code and navigation left out."""

    SKIP = {"script", "style", "pre", "code", "table", "tt", "blockquote"}
    BLOCK = {"p", "li", "h1", "h2", "h3", "h4", "dd", "dt", "div", "br"}

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.paras: list[str] = []
        self.cur: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.depth += 1
        elif tag in self.BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth:
            self.depth -= 1
            if tag in ("pre", "table", "blockquote"):
                self.cur = []  # a paragraph that leads into a code listing is cut mid-sentence: drop it
        elif tag in self.BLOCK:
            self._flush()

    def handle_data(self, data):
        if not self.depth:
            self.cur.append(data)

    def _flush(self):
        text = " ".join(html.unescape("".join(self.cur)).split())
        self.cur = []
        # prose only: a sentence-like paragraph of 12+ words ending in punctuation
        if len(text.split()) >= 12 and text[-1] in ".?!:)\"'":
            self.paras.append(text)


def sqlite_paragraphs(root: Path, page: str) -> list[str]:
    parser = _Text()
    parser.feed((root / "usr/share/doc/sqlite3" / f"{page}.html").read_text(encoding="utf-8"))
    parser._flush()
    return parser.paras


def prose_like(text: str) -> bool:
    """Mostly letters (no ASCII art or tables)."""
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / max(1, len(text)) > 0.9


def chunks(pieces: list[str], count) -> Iterator[str]:
    """Consecutive pieces joined until a text has MIN_TOKENS; a piece longer than MAX_TOKENS is split at
    sentence ends; a text never exceeds MAX_TOKENS."""
    cur: list[str] = []
    for piece in pieces:
        for part in _split_long(piece, count):
            if cur and count("\n".join([*cur, part])) > MAX_TOKENS:
                if count("\n".join(cur)) >= MIN_TOKENS:
                    yield "\n".join(cur)
                cur = []
            cur.append(part)
            if count("\n".join(cur)) >= MIN_TOKENS:
                yield "\n".join(cur)
                cur = []


def _split_long(piece: str, count) -> Iterator[str]:
    if count(piece) <= MAX_TOKENS:
        yield piece
        return
    cur = ""
    for sent in re.split(r"(?<=[.!?])\s+", piece):
        if cur and count(cur + " " + sent) > MAX_TOKENS:
            yield cur
            cur = sent
        else:
            cur = f"{cur} {sent}".strip()
    if cur and count(cur) <= MAX_TOKENS:
        yield cur


def spread(texts: list[str], count, budget: int) -> list[str]:
    """Evenly spaced texts of a source, in source order, until their tokens reach ``budget``."""
    mean = sum(count(t) for t in texts) / len(texts)
    k = min(len(texts), int(budget / mean) + 1)
    while True:
        picked = [texts[round(i * (len(texts) - 1) / max(1, k - 1))] for i in range(k)]
        if sum(count(t) for t in picked) >= budget or k == len(texts):
            return picked
        k += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devil", type=Path, required=True, help="unpacked dict-devil package")
    ap.add_argument("--jargon", type=Path, required=True, help="unpacked dict-jargon package")
    ap.add_argument("--sqlite", type=Path, required=True, help="unpacked sqlite3-doc package")
    ap.add_argument("--out", type=Path, default=Path("midblock/data/corpora/general-v2.jsonl"))
    args = ap.parse_args()

    from midblock.models.loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m")

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    sources = {
        "devil": [clean_entry(e) for e in dict_entries(args.devil, "devil")],
        "jargon": [clean_entry(e) for e in dict_entries(args.jargon, "jargon")],
        "sqlite": [p for page in SQLITE_ESSAYS for p in sqlite_paragraphs(args.sqlite, page)],
    }
    rows = []
    for name, pieces in sources.items():
        texts = [t for t in chunks([p for p in pieces if prose_like(p)], count) if prose_like(t)]
        for i, text in enumerate(spread(texts, count, TARGET_TOKENS // len(sources))):
            rows.append({"id": f"{name}-{i:03d}", "source": name, "text": text})
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    total = sum(count(r["text"]) - 1 for r in rows)
    print(f"{args.out}: {len(rows)} texts, {total} scored tokens, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
