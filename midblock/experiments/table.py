"""The comparison table: one statistic per question, used by ``compare`` and the demo alike.

The pooling rule (one, everywhere; the method and its justification: ``docs/evaluation.md``):

- **One seed** (each seed's row): accuracy ``k/n`` with its Wilson 95% interval; the difference against
  the baseline arm of the same seed is paired over the same test items (bootstrap of the items). These
  intervals cover the test items only (``covers``: ``items``).
- **Several seeds** (the ``mean(S)`` row): the arm's per-item results form a (seeds x items) matrix; its
  accuracy is the mean over seeds and items, with a two-level bootstrap interval that resamples the seeds
  and the items (the same items for every seed), so it covers both (``seeds x items``); with fewer than 5
  seeds it is marked approximate. The difference against the baseline is paired over the seeds both arms
  ran and the items both evaluated, by the same two-level bootstrap, with the per-seed differences beside
  it. Several arms compared with one baseline get Holm-adjusted p-values and Bonferroni simultaneous
  intervals over the arms. With one seed the pooled row equals the seed's row (its intervals cover items).
- **Forgetting**: the perplexity change against the base model (%), and its difference from the baseline
  arm's (points), with two-level intervals over seeds x texts when the cells carry per-text
  log-likelihoods (``ppl.per_text``: one ``[nll_sum, n_tokens]`` per text, same texts in every cell);
  older cells give the point value only.

The baseline's own difference cells stay empty. Reporting (``reporting/``) renders these rows and computes
nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from midblock.errors import MidblockError
from midblock.evaluation.stats import (
    compare_to_baseline,
    holm,
    paired_two_level,
    ppl_change_interval,
    two_level_interval,
    wilson_interval,
)
from midblock.layers import format_indices

_TRAIN_MEANS = ("median_step_s", "peak_mem_gib", "train_wall_s", "final_loss", "eval_wall_s", "ppl", "ppl_delta")
N_BOOT, BOOT_SEED = 10_000, 0  # every bootstrap of the table: fixed, so a table re-derives exactly


def correctness(rec: dict[str, Any], metric: str) -> dict[int, float]:
    """Test item index -> 1.0 / 0.0 for one evaluated cell."""
    return {int(it["index"]): float(bool(it["scores"][metric]["correct"])) for it in rec["items"]}


def pooled_scores(recs: list[dict[str, Any]], metric: str) -> dict[int, float]:
    """Per item, correctness averaged over the seeds (the items every seed evaluated)."""
    per_seed = [correctness(r, metric) for r in recs]
    items = sorted(set.intersection(*(set(c) for c in per_seed)))
    return {i: sum(c[i] for c in per_seed) / len(per_seed) for i in items}


def seed_matrix(per_seed: list[dict[int, float]], items: list[int] | None = None) -> np.ndarray:
    """(seeds x items) results over ``items`` (default: the items every seed has), in item order."""
    if items is None:
        items = sorted(set.intersection(*(set(c) for c in per_seed)))
    return np.array([[c[i] for i in items] for c in per_seed], dtype=float)


def accuracy_row(scores: dict[int, float]) -> dict[str, Any]:
    """Accuracy and Wilson 95% interval of per-item scores (0/1, or seed averages in [0, 1])."""
    n = len(scores)
    k = sum(scores.values())
    lo, hi = wilson_interval(k, n)
    return {"n": n, "accuracy": k / n if n else 0.0, "ci_low": lo, "ci_high": hi}


def paired_difference(mine: dict[int, float], theirs: dict[int, float]) -> dict[str, Any] | None:
    """``mine - theirs`` of one seed over the items both have, with the paired bootstrap interval of the items."""
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    d = paired_two_level([[mine[i] for i in common]], [[theirs[i] for i in common]], N_BOOT, BOOT_SEED)
    return {"diff_vs_baseline": d["estimate"], "diff_low": d["lo"], "diff_high": d["hi"], "diff_covers": d["covers"]}


def _band_text(band: list[int] | None) -> str | None:
    if not band:
        return None

    return format_indices(band)


def selection_text(sel: dict[str, Any] | None) -> str | None:
    """What a selection strategy trained, for the table: the spec, and for Spectrum / LISA the LoRA form or
    whether the full form trained the embeddings and head, and LISA's mean backward depth (the band language
    needs no text)."""
    if not sel or sel.get("strategy") == "band":
        return None
    text = "auto" if sel.get("strategy") == "auto" else str(sel.get("spec"))
    if sel.get("form") == "lora":
        text += " LoRA"  # adapters only: the embeddings and head never train in the LoRA form
    elif "embeddings_and_head" in sel and not text.endswith(":blocks"):  # the spec may say so already
        text += " +emb/head" if sel["embeddings_and_head"] else " blocks only"
    switches = (sel.get("lisa") or {}).get("switches")
    if switches:
        text += f" (depth {sum(s['backward_depth'] for s in switches) / len(switches):.3g}/switch)"
    return text


def _train_cols(rec: dict[str, Any]) -> dict[str, Any]:
    tr = rec.get("train")
    if not tr:
        return {}
    mem = tr.get("peak_mem_bytes")
    return {
        "band": _band_text(rec.get("band")),
        "selection": selection_text(tr.get("selection")),
        "lr": rec.get("lr"),
        "precision": tr.get("precision"),
        "trainable_params": tr.get("trainable_params"),
        "rank_units": tr.get("rank_units") or None,  # full-parameter arms have none (0), not a budget of 0
        "alpha_over_r": tr.get("scaling"),
        "backward_depth": tr.get("backward_depth"),
        "median_step_s": tr.get("median_step_s"),
        "peak_mem_gib": round(mem / 2**30, 3) if mem else None,
        "train_wall_s": tr.get("wall_s"),
        "final_loss": tr.get("final_loss"),
    }


def _ppl_cols(rec: dict[str, Any], base_ppl: float | None) -> dict[str, Any]:
    if not rec.get("ppl"):
        return {}
    ppl = rec["ppl"]["ppl"]
    return {
        "ppl": ppl,
        "ppl_delta": ppl - base_ppl if base_ppl else None,
        "ppl_change_pct": 100 * (ppl / base_ppl - 1) if base_ppl else None,
    }


def _mean(vals: list[Any]) -> Any:
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(vals) / len(vals) if vals else None


# ----------------------------------------------------------------------------- forgetting over texts


def per_text(rec: dict[str, Any] | None) -> np.ndarray | None:
    """A cell's (texts x 2) array of [summed NLL, scored tokens], or None where the cell has none."""
    pt = ((rec or {}).get("ppl") or {}).get("per_text")
    if not pt:
        return None
    arr = np.asarray(pt, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise MidblockError(
            f"ppl.per_text of {rec.get('label')} seed {rec.get('seed')} is not a list of [nll_sum, n_tokens]",
            hint="re-measure the cell's perplexity",
        )
    return arr


def _texts(arrays: list[np.ndarray], what: str) -> np.ndarray:
    """The texts every array scored at least one token of (a one-token text predicts nothing)."""
    if len({a.shape[0] for a in arrays}) > 1:
        raise MidblockError(
            f"{what}: the cells scored different numbers of general texts ({sorted({a.shape[0] for a in arrays})})",
            hint="compare cells measured on the same forgetting corpus",
        )
    return np.all([a[:, 1] > 0 for a in arrays], axis=0)


def _forgetting(recs, base, bl_recs, m: int) -> dict[str, Any]:
    """Two-level intervals (seeds x texts) of the perplexity change and of its difference from the baseline's."""
    base_pt = per_text(base)
    arms = [per_text(r) for r in recs]
    if base_pt is None or any(a is None for a in arms):
        return {}
    keep = _texts([base_pt, *arms], "forgetting")
    arm = (np.array([a[keep, 0] for a in arms]), np.array([a[keep, 1] for a in arms]))
    b = (base_pt[keep, 0], base_pt[keep, 1])
    r = ppl_change_interval(arm, b, n_boot=N_BOOT, seed=BOOT_SEED)
    out = {
        "ppl_change_low": r["lo"],
        "ppl_change_high": r["hi"],
        "ppl_covers": r["covers"],
        "ppl_seed_changes": r["per_seed"],
    }
    if bl_recs is None:
        return out
    mine = {x["seed"]: per_text(x) for x in recs}
    theirs = {x["seed"]: per_text(x) for x in bl_recs}
    seeds = [s for s in sorted(mine) if theirs.get(s) is not None]
    if not seeds:
        return out
    keep = _texts([base_pt, *(mine[s] for s in seeds), *(theirs[s] for s in seeds)], "forgetting")

    def pair(d: dict[int, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([d[s][keep, 0] for s in seeds]), np.array([d[s][keep, 1] for s in seeds])

    b = (base_pt[keep, 0], base_pt[keep, 1])
    d = ppl_change_interval(pair(mine), b, pair(theirs), n_boot=N_BOOT, seed=BOOT_SEED, n_comparisons=m)
    return out | {
        "ppl_diff": d["estimate"],
        "ppl_diff_low": d["lo"],
        "ppl_diff_high": d["hi"],
        "ppl_diff_p": d["p"],
        "ppl_seed_diffs": d["per_seed"],
    }


# ----------------------------------------------------------------------------- the rows


def build_rows(
    results: list[dict[str, Any]], base: dict[str, Any] | None, *, baseline: str, metric: str
) -> list[dict[str, Any]]:
    """One row per (arm, seed), then one pooled ``mean(S)`` row per arm; the base model's row first."""
    base_ppl = base["ppl"]["ppl"] if base and base.get("ppl") else None
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_arm[r["label"]].append(r)
    by_arm = {a: sorted(recs, key=lambda r: r["seed"]) for a, recs in by_arm.items()}
    bl = {r["seed"]: correctness(r, metric) for r in by_arm.get(baseline, [])}
    rows: list[dict[str, Any]] = []
    if base is not None and base.get("eval"):
        rows.append(
            {"arm": "base", "seed": "-", "metric": metric, **accuracy_row(correctness(base, metric))}
            | {"ci_covers": "items"}
            | _ppl_cols(base, base_ppl)
            | {"eval_wall_s": base["eval"].get("wall_s")}
        )
    diffs = _pooled_differences(by_arm, bl, baseline, metric)
    m = len(diffs)
    for arm, recs in by_arm.items():
        per_seed = []
        for r in recs:
            row = {"arm": arm, "seed": r["seed"], "metric": metric, **accuracy_row(correctness(r, metric))}
            row |= {"ci_covers": "items"} | _train_cols(r) | _ppl_cols(r, base_ppl)
            row |= {"eval_wall_s": r["eval"].get("wall_s")}
            if arm != baseline and r["seed"] in bl:
                row |= paired_difference(correctness(r, metric), bl[r["seed"]]) or {}
            row |= _seed_forgetting(r, base)
            per_seed.append(row)
        rows += per_seed
        pooled = _pooled_row(arm, recs, per_seed, metric, base_ppl) | diffs.get(arm, {})
        bl_recs = by_arm.get(baseline) if arm != baseline else None
        rows.append(pooled | _forgetting(recs, base, bl_recs, max(m, 1)))
    _holm_forgetting(rows)
    return rows


def _seed_forgetting(rec: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    f = _forgetting([rec], base, None, 1)
    return {k: f[k] for k in ("ppl_change_low", "ppl_change_high", "ppl_covers") if k in f}


def _holm_forgetting(rows: list[dict[str, Any]]) -> None:
    pooled = [r for r in rows if str(r["seed"]).startswith("mean(") and r.get("ppl_diff_p") is not None]
    for r, p in zip(pooled, holm([r["ppl_diff_p"] for r in pooled])):
        r["ppl_diff_p_holm"] = p


def _pooled_differences(by_arm, bl, baseline: str, metric: str) -> dict[str, dict[str, Any]]:
    """Each arm's pooled difference against the baseline (seeds both ran, items both have), corrected for
    the number of arms compared (Holm p-values, Bonferroni simultaneous intervals)."""
    pairs = {}
    for arm, recs in by_arm.items():
        both = [r for r in recs if r["seed"] in bl]
        if arm == baseline or not both:
            continue
        mine = [correctness(r, metric) for r in both]
        theirs = [bl[r["seed"]] for r in both]
        items = sorted(set.intersection(*(set(x) for x in mine + theirs)))
        if items:
            pairs[arm] = (seed_matrix(mine, items), seed_matrix(theirs, items))
    out = {}
    for arm, d in compare_to_baseline(pairs, N_BOOT, BOOT_SEED).items():
        out[arm] = {
            "diff_vs_baseline": d["estimate"],
            "diff_low": d["lo"],
            "diff_high": d["hi"],
            "diff_covers": d["covers"],
            "diff_approximate": d["approximate"],
            "diff_seeds": d["n_seeds"],
            "seed_diffs": d["per_seed"],
            "diff_p": d["p"],
            "diff_p_holm": d["p_holm"],
            "diff_sim_low": d["sim_lo"],
            "diff_sim_high": d["sim_hi"],
            "n_comparisons": d["n_comparisons"],
        }
    return out


def _pooled_row(arm, recs, per_seed, metric, base_ppl) -> dict[str, Any]:
    accs = [r["accuracy"] for r in per_seed]
    row: dict[str, Any] = {
        "arm": arm,
        "seed": f"mean({len(recs)})",
        "metric": metric,
        **accuracy_row(pooled_scores(recs, metric)),
        "seed_sd": (sum((a - sum(accs) / len(accs)) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
        if len(accs) > 1
        else None,
        "n_seeds": len(recs),
        "ci_covers": "items",
        "approximate": False,
    }
    if len(recs) > 1:  # one seed: the Wilson interval of the seed's row
        r = two_level_interval(seed_matrix([correctness(x, metric) for x in recs]), N_BOOT, BOOT_SEED)
        row |= {"ci_low": r["lo"], "ci_high": r["hi"], "ci_covers": r["covers"], "approximate": r["approximate"]}
        row["seed_accuracies"] = r["per_seed"]
    first = per_seed[0]
    for k in (
        "band",
        "selection",
        "lr",
        "precision",
        "trainable_params",
        "rank_units",
        "alpha_over_r",
        "backward_depth",
    ):
        row[k] = first.get(k)
    for k in _TRAIN_MEANS:
        row[k] = _mean([r.get(k) for r in per_seed])
    if row.get("ppl") is not None and base_ppl:
        row["ppl_change_pct"] = 100 * (row["ppl"] / base_ppl - 1)
    return row


def pooled_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The base row and each arm's pooled row: one row per system, as the demo shows them."""
    return [r for r in rows if r["seed"] == "-" or str(r["seed"]).startswith("mean(")]
