"""Answer extractors and the comparison rule, reproducing each protocol's scoring exactly.

- ``strict-match`` / ``flexible-extract``: lm-evaluation-harness task ``gsm8k`` (v3) filters; both are
  compared with the harness's ``exact_match`` (``ignore_case=True`` plus four ``regexes_to_ignore``).
- ``paper``: the reference code of the paper (last number, compared as a float).
- ``original``: openai/grade-school-math (first ``#### N``, commas removed, exact string).

Each extractor is a pure function ``str -> str`` (``"[invalid]"`` when nothing is found) and each scorer a
pure function ``(completion, gold_solution) -> bool``; each pair is registered by name in ``EXTRACTORS`` (what a
comparison's ``metric`` names).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from midblock.registry import Registry

INVALID = "[invalid]"

# The harness's filters (gsm8k.yaml, filter_list).
STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# The harness's exact_match arguments for gsm8k: regexes_to_ignore, applied in this order, then lower case.
IGNORE_RES = (",", "\\$", "(?s).*#### ", "\\.$")
# The paper's reference code.
PAPER_RE = re.compile(r"-?[\d,]+\.?\d*")
PAPER_TOL = 1e-3


def _regex_filter(text: str, regex: re.Pattern, group_select: int) -> str:
    """The harness's ``RegexFilter``: findall, pick a match, first non-empty group of a tuple, strip."""
    matches = regex.findall(text)
    if not matches:
        return INVALID
    m = matches[group_select]
    if isinstance(m, tuple):
        m = [g for g in m if g]
        if not m:
            return INVALID
        m = m[0]
    return m.strip()


def strict_match(completion: str) -> str:
    """The first ``#### N`` in the completion (harness ``strict-match``)."""
    return _regex_filter(completion, STRICT_RE, 0)


def flexible_extract(completion: str) -> str:
    """The last number-like token in the completion (harness ``flexible-extract``)."""
    return _regex_filter(completion, FLEXIBLE_RE, -1)


def harness_normalize(s: str) -> str:
    """What the harness's ``exact_match`` compares: the four regexes removed in order, lower-cased."""
    for pat in IGNORE_RES:
        s = re.sub(pat, "", s)
    return s.lower()


def harness_exact_match(prediction: str, reference: str) -> bool:
    """``exact_match`` with gsm8k's settings; ``reference`` may be the full solution or just ``N``."""
    return harness_normalize(prediction) == harness_normalize(reference)


def paper_extract(completion: str) -> float | None:
    """The paper's prediction: the last ``-?[\\d,]+\\.?\\d*`` match, ``,``/``$`` removed, as a float."""
    matches = PAPER_RE.findall(completion)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", "").replace("$", ""))
    except ValueError:  # e.g. the last match was a lone comma
        return None


def original_extract(text: str) -> str:
    """openai/grade-school-math ``extract_answer``: first ``#### N``, stripped, commas removed."""
    m = STRICT_RE.search(text)
    if not m:
        return INVALID
    return m.group(1).strip().replace(",", "")


def gold_number(solution: str) -> str:
    """The gold ``N`` of a worked solution as the harness's normalisation leaves it."""
    return harness_normalize(solution)


def _paper_gold(solution: str) -> float | None:
    try:
        return float(solution.split("####")[-1].strip().replace(",", "").replace("$", ""))
    except ValueError:
        return None


def score_strict(completion: str, solution: str) -> bool:
    return harness_exact_match(strict_match(completion), solution)


def score_flexible(completion: str, solution: str) -> bool:
    return harness_exact_match(flexible_extract(completion), solution)


def score_paper(completion: str, solution: str) -> bool:
    pred, gold = paper_extract(completion), _paper_gold(solution)
    return pred is not None and gold is not None and abs(pred - gold) < PAPER_TOL


def score_original(completion: str, solution: str) -> bool:
    gold = original_extract(solution)
    return gold != INVALID and original_extract(completion) == gold


@dataclass(frozen=True)
class Extractor:
    """One way to read an answer: ``extract`` gives the recorded prediction, ``score`` the correctness."""

    extract: Callable[[str], object]
    score: Callable[[str, str], bool]
    doc: str = field(default="", compare=False, repr=False)


# name -> Extractor (a comparison's ``metric``); every one is applied to every completion and recorded
EXTRACTORS: Registry[Extractor] = Registry("metric")
EXTRACTORS.register("strict-match", Extractor(strict_match, score_strict, strict_match.__doc__ or ""))
EXTRACTORS.register("flexible-extract", Extractor(flexible_extract, score_flexible, flexible_extract.__doc__ or ""))
EXTRACTORS.register("paper", Extractor(paper_extract, score_paper, paper_extract.__doc__ or ""))
EXTRACTORS.register("original", Extractor(original_extract, score_original, original_extract.__doc__ or ""))


def score_all(completion: str, solution: str) -> dict[str, dict[str, object]]:
    """Every extractor's prediction and correctness for one completion."""
    return {
        name: {"pred": e.extract(completion), "correct": bool(e.score(completion, solution))}
        for name, e in EXTRACTORS.items()
    }
