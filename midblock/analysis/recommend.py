"""A recommended tuning band from a per-block change profile (rule and parameters: ``docs/metrics.md``).

Signals are per block (block b's value is read at layer index b + 1). Each signal is divided by its
maximum over the blocks (so signals of different units weigh the same) and the available signals are
averaged into one change score c_b in [0, 1]. Then:

1. **Sensitive tail**: the longest run of blocks at the end whose score is >= ``tau`` (of the maximum,
   which is 1 after normalisation). The paper's finding is that the last blocks change most.
2. **Head**: the first ``head_frac`` of the blocks, extended over any leading blocks that are also
   sensitive (score >= ``tau``): the early blocks build general features that tuning should not move.
3. **Band** = the blocks between the head and the tail. If it holds fewer than ``min_blocks`` blocks, the
   paper's default ``seg2-4/5`` is returned instead and the evidence says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from midblock.errors import MidblockError
from midblock.layers import PAPER_BAND, format_indices, resolve_layers
from midblock.validation import check_float_fields, check_number

FALLBACK = PAPER_BAND


@dataclass
class RecommendConfig:
    """Parameters of the band rule."""

    tau: float = field(default=0.5, metadata={"help": "a block is sensitive when its change score >= tau"})
    head_frac: float = field(default=0.2, metadata={"help": "fraction of the first blocks always left out"})
    min_blocks: int = field(default=2, metadata={"help": "smaller bands fall back to seg2-4/5"})
    noise_floor: float = field(
        default=1e-9, metadata={"help": "a signal whose largest value is below this carries no change (round-off)"}
    )

    def __post_init__(self) -> None:
        check_number("tau", self.tau, low=0, low_open=True, high=1)
        check_number("head_frac", self.head_frac, low=0, high=1, high_open=True)
        if self.min_blocks < 1:
            raise MidblockError(f"min_blocks must be >= 1, got {self.min_blocks}")
        check_number("noise_floor", self.noise_floor, low=0)
        check_float_fields(self)


def _normalise(values: list[float], floor: float) -> list[float] | None:
    clean = [0.0 if (v is None or not math.isfinite(v)) else max(float(v), 0.0) for v in values]
    top = max(clean) if clean else 0.0
    # below the floor the "profile" is float round-off (e.g. 1 - CKA of identical models): no information
    return [v / top for v in clean] if top > floor else None


def _score(signals: dict[str, list[float]], L: int, cfg: RecommendConfig) -> tuple[list[float] | None, list, list]:
    used, skipped = {}, []
    for name, vals in signals.items():
        if len(vals) != L:
            raise ValueError(f"signal {name} has {len(vals)} values for {L} blocks")
        n = _normalise(vals, cfg.noise_floor)
        if n is None:
            skipped.append(name)  # all zero or missing: carries no information about where change is
        else:
            used[name] = n
    if not used:
        return None, [], skipped
    return [sum(used[k][b] for k in used) / len(used) for b in range(L)], list(used), skipped


def recommend_band(
    signals: dict[str, list[float]] | dict[str, dict[str, list[float]]],
    num_blocks: int,
    config: RecommendConfig | None = None,
    mode: str = "variant",
) -> dict:
    """Recommend a band from named per-block signals (each a list of ``num_blocks`` values, bigger = more change).

    ``signals`` may also map profile names (one per variant) to such dicts: each profile is scored on its
    own and a block's score is the largest over the profiles, so a block any variant found sensitive stays
    out of the band. Returns ``{"spec", "indices", "rule", "evidence"}``; ``spec`` is a ``resolve_layers`` spec.
    """
    cfg = config or RecommendConfig()
    L = num_blocks
    profiles = signals if signals and all(isinstance(v, dict) for v in signals.values()) else {"profile": signals}
    scores, used, skipped, per_profile = [], [], [], {}
    for pname, sig in profiles.items():
        sc, u, sk = _score(sig, L, cfg)  # type: ignore[arg-type]
        used += [x for x in u if x not in used]
        skipped += [f"{pname}:{x}" if len(profiles) > 1 else x for x in sk]
        if sc is not None:
            scores.append(sc)
            per_profile[pname] = [round(s, 6) for s in sc]
    rule = (
        f"score = mean of max-normalised signals ({', '.join(used) or 'none'}), max over variants; tail = trailing "
        f"blocks with score >= {cfg.tau}; head = first {cfg.head_frac:g} of depth plus leading blocks with score >= "
        f"{cfg.tau}; band = blocks between; fallback {FALLBACK} if < {cfg.min_blocks} blocks ({mode} profile)"
    )
    evidence: dict = {"mode": mode, "params": asdict(cfg), "signals_used": used, "signals_skipped": skipped}
    if not scores:
        idx = resolve_layers(FALLBACK, L)
        evidence["fallback"] = "no signal shows any change"
        return {"spec": format_indices(idx), "indices": idx, "rule": rule, "evidence": evidence}
    score = [max(sc[b] for sc in scores) for b in range(L)]
    if len(per_profile) > 1:
        evidence["profile_scores"] = per_profile
    idx, head_end, tail_start, fallback = band_at(score, cfg.tau, cfg.head_frac, cfg.min_blocks)
    evidence.update(
        score=[round(s, 6) for s in score],
        tail=list(range(tail_start, L)),
        head=list(range(0, min(head_end, L))),
        peak_block=max(range(L), key=lambda b: score[b]),
        stable_tau=stable_range(score, cfg.tau, cfg.head_frac, cfg.min_blocks),
        sensitivity=sensitivity(score, cfg.head_frac, cfg.min_blocks),
    )
    if fallback:
        evidence["fallback"] = fallback
    return {"spec": format_indices(idx), "indices": idx, "rule": rule, "evidence": evidence}


SENSITIVITY_TAUS = tuple(round(0.3 + 0.05 * k, 2) for k in range(9))  # 0.3, 0.35, ..., 0.7


def band_at(score: list[float], tau: float, head_frac: float, min_blocks: int) -> tuple[list[int], int, int, str]:
    """The rule on a per-block score at threshold ``tau``: (band, head end, tail start, fallback reason or '')."""
    L = len(score)
    sensitive = [s >= tau for s in score]
    tail_start = L
    while tail_start > 0 and sensitive[tail_start - 1]:
        tail_start -= 1
    head_end = math.ceil(head_frac * L - 1e-9)
    lead = 0
    while lead < L and sensitive[lead]:
        lead += 1
    if lead < tail_start:  # a leading sensitive run that is not the tail itself
        head_end = max(head_end, lead)
    idx = list(range(head_end, tail_start))
    if len(idx) < min_blocks:
        return resolve_layers(FALLBACK, L), head_end, tail_start, f"band between head and tail had {len(idx)} blocks"
    return idx, head_end, tail_start, ""


def sensitivity(score: list[float], head_frac: float, min_blocks: int) -> list[dict]:
    """The band the rule returns at each threshold of :data:`SENSITIVITY_TAUS`, so a choice that hangs on
    the threshold is visible: ``[{"tau", "spec", "blocks", "fallback"}]``."""
    out = []
    for tau in SENSITIVITY_TAUS:
        idx, _, _, fallback = band_at(score, tau, head_frac, min_blocks)
        out.append({"tau": tau, "spec": format_indices(idx), "blocks": len(idx), "fallback": bool(fallback)})
    return out


def stable_range(score: list[float], tau: float, head_frac: float, min_blocks: int) -> list[float]:
    """``[lo, hi]``: the band is the same for every threshold in (lo, hi] (a block is sensitive when its
    score >= tau, so the band can change only where tau crosses a block's score). A narrow range around
    ``tau`` means a knife-edge choice."""
    cuts = sorted(set(score))

    def band(t: float) -> list[int]:
        return band_at(score, t, head_frac, min_blocks)[0]

    here = band(tau)
    above = [u for u in cuts if u >= tau]  # the cell (lo, hi] holding tau ends at the first score >= tau
    below = [u for u in cuts if u < tau]
    hi = above[0] if above else 1.0
    for nxt in above[1:]:  # the next cell (hi, nxt] has the band of tau = nxt
        if band(nxt) != here:
            break
        hi = nxt
    else:
        if above and band(1.0) == here and above[-1] < 1.0:
            hi = 1.0
    lo = below[-1] if below else 0.0
    while below and band(lo) == here:  # the cell below (prev, lo] has the band of tau = lo
        below.pop()
        lo = below[-1] if below else 0.0
    return [round(lo, 6), round(hi, 6)]
