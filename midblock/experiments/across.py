"""Does an effect differ between two studies? An export's arms against its baseline, set against the same
arms in another export (another model, protocol or task version).

For each arm both exports ran, each study's difference (arm minus baseline, per training seed and test item)
and the difference between the two with a two-level bootstrap interval
(:func:`midblock.evaluation.stats.difference_between`): each study's seeds are resampled on their own; the
test items are resampled jointly when both studies scored the same items the same way (the same evaluation
fingerprint: same task data, split, protocol and scorer), else each study's on its own. Several arms are
corrected for multiplicity (Holm p, Bonferroni simultaneous intervals). Accuracy only: perplexity changes are
relative to each study's own base model.

``midblock export --mode across --dest EXPORT --other OTHER_EXPORT [--arm ARM]`` (or ``--other
OTHER_EXPORT,ITS_ARM,ITS_BASELINE --arm ARM`` where the other export names them differently) writes
``across-OTHER.json`` and ``across-OTHER.md`` (OTHER: the other export's directory name) into EXPORT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from midblock.errors import MidblockError
from midblock.evaluation.stats import difference_between, holm, paired_two_level
from midblock.experiments.export import read_export
from midblock.experiments.replay import arm_items
from midblock.io import RunDir, write_json, write_text


def shared_arms(one: tuple, two: tuple, baseline: str | None, other_baseline: str | None) -> list[str]:
    """The arms of the first export's table (in its order) that the second ran too, the baselines left out
    (``one``, ``two``: what ``read_export`` returned for each)."""
    (cfg, _, _, order), (ocfg, _, _, oorder) = one, two
    skip = {baseline or cfg.get("baseline"), other_baseline or ocfg.get("baseline")}
    return [a for a in order if a in oorder and a not in skip]


def _aligned(one: tuple, two: tuple) -> tuple[np.ndarray, np.ndarray, bool]:
    """The two studies' (seeds x items) differences; on the items both scored, in the same order, when both
    evaluated them the same way (shared items), else each on its own items."""
    (a1, b1, m1, i1), (a2, b2, m2, i2) = one, two
    d1, d2 = a1 - b1, a2 - b2
    if len(m1["evaluation"]) != 1 or m1["evaluation"] != m2["evaluation"]:
        return d1, d2, False
    at1, at2 = {i: k for k, i in enumerate(i1)}, {i: k for k, i in enumerate(i2)}
    common = sorted(at1.keys() & at2.keys())
    if not common:
        return d1, d2, False
    return d1[:, [at1[i] for i in common]], d2[:, [at2[i] for i in common]], True


def across(
    dest: str | Path,
    other: str | Path,
    arms: list[str] | None = None,
    baseline: str | None = None,
    other_baseline: str | None = None,
    other_arms: list[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Each arm's difference against the baseline in ``dest`` and in ``other``, and the difference between
    them (see the module); writes nothing. ``other_arms``: the arms' names in ``other`` (default: the same)."""
    ex1, ex2 = read_export(dest), read_export(other)  # each export read once, for every arm
    arms = arms or shared_arms(ex1, ex2, baseline, other_baseline)
    if not arms:
        raise MidblockError(f"{dest} and {other} share no arm besides their baselines", hint="pass --arm ARM")
    other_arms = other_arms or arms
    if len(other_arms) != len(arms):
        raise MidblockError(f"{len(arms)} arm(s) here but {len(other_arms)} in the other export")
    names = _names(dest, other, ex1[0].get("model"), ex2[0].get("model"))
    rows = []
    for arm, its in zip(arms, other_arms):
        one, two = arm_items(dest, arm, baseline, ex1), arm_items(other, its, other_baseline, ex2)
        d1, d2, shared = _aligned(one, two)
        rows.append(
            {
                "arm": arm,
                "this": one[2] | {"pooled": paired_two_level(one[0], one[1], seed=seed)},
                "other": two[2] | {"pooled": paired_two_level(two[0], two[1], seed=seed)},
                "difference": difference_between(d1, d2, shared, seed=seed, n_comparisons=len(arms)),
            }
        )
    for row, p in zip(rows, holm([r["difference"]["p"] for r in rows])):
        row["difference"]["p_holm"] = p
    # the exports by directory name: the results name no path of the machine they were made on
    here, there = Path(dest).resolve().name, Path(other).resolve().name
    return {"this": {"export": here, "name": names[0]}, "other": {"export": there, "name": names[1]}, "rows": rows}


def _names(dest: str | Path, other: str | Path, m1: str | None, m2: str | None) -> tuple[str, str]:
    """Each export's model, or its directory name where both ran the same model."""
    if m1 and m2 and m1 != m2:
        return str(m1), str(m2)
    return Path(dest).resolve().name, Path(other).resolve().name


def _pts(d: dict[str, Any], lo: str = "lo", hi: str = "hi") -> str:
    return f"{100 * d['estimate']:+.1f} [{100 * d[lo]:+.1f}, {100 * d[hi]:+.1f}]"


def render(res: dict[str, Any]) -> str:
    """``across-OTHER.md``: per arm, both studies' differences and the difference between them."""
    n1, n2 = res["this"]["name"], res["other"]["name"]
    first = res["rows"][0]
    lines = [
        f"# Each arm minus its baseline: {n1} against {n2}",
        "",
        f"| arm | {n1}: minus {first['this']['baseline']}, points [95% CI] | {n2}: minus "
        f"{first['other']['baseline']}, points [95% CI] | {n1} minus {n2}, points [95% CI] | Holm p "
        "| simultaneous 95% CI |",
        "|---|---|---|---|---:|---|",
    ]
    for r in res["rows"]:
        d = r["difference"]
        arm = r["arm"] if r["other"]["arm"] == r["arm"] else f"{r['arm']} ({n2}: {r['other']['arm']})"
        lines.append(
            f"| {arm} | {_pts(r['this']['pooled'])} | {_pts(r['other']['pooled'])} | {_pts(d)} "
            f"| {_p(d['p_holm'])} | {_pts(d, 'sim_lo', 'sim_hi')} |"
        )
    d, t, o = first["difference"], first["this"], first["other"]
    lines += [
        "",
        f"Accuracy differences in points under each export's metric ({n1}: `{t['metric']}`, {len(t['seeds'])} "
        f"seeds x {t['items']} items; {n2}: `{o['metric']}`, {len(o['seeds'])} seeds x {o['items']} items). "
        f"Each study's interval covers {t['pooled']['covers']} of that study; the difference's interval covers "
        f"{d['covers']}"
        + (" (both scored the same test items the same way)" if d["shared_items"] else "")
        + (", approximate with fewer than 5 seeds in a study" if d["approximate"] else "")
        + (
            f". Holm p and the simultaneous intervals correct for the {len(res['rows'])} arms compared."
            if len(res["rows"]) > 1
            else ". One arm compared: its Holm p is its bootstrap p."
        ),
    ]
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def write_across(dest: str | Path, res: dict[str, Any]) -> Path:
    """Write ``across-OTHER.json`` and ``across-OTHER.md`` into the export ``dest``; returns the markdown's path."""
    dest = Path(dest)
    stem = f"across-{res['other']['export']}"
    with RunDir(dest):
        write_json(dest / f"{stem}.json", res)
        write_text(dest / f"{stem}.md", render(res))
    return dest / f"{stem}.md"
