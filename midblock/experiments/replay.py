"""What a one-seed, small-test study would have reported: an exported comparison replayed many times.

A study that trains each arm once and scores it on 100 shuffled test items reports one difference. The
export of a comparison with many seeds, every seed scored on the same larger test set, holds everything
needed to see the distribution of that one number: for each training seed, draw ``n_items`` of the test
items without replacement (a shuffle's first ``n_items``), many times, and take the arm's accuracy minus the
baseline's on each draw (:func:`midblock.evaluation.stats.one_seed_replays`). The distribution covers both
the training seed and the item draw. Beside it: each seed's difference on the whole test set, the pooled
difference with its seeds x items interval, and optionally another comparison's interval for contrast
(e.g. the same arms under the controlled protocol).

``midblock export --mode replay --dest EXPORT --arm ARM [--baseline B] [--controlled OTHER_EXPORT]`` writes
``replay.json``, ``replay.md`` and ``replay.png`` into the export directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from midblock.errors import MidblockError
from midblock.evaluation.stats import one_seed_replays, paired_two_level, replay_summary
from midblock.experiments.export import read_export
from midblock.experiments.table import correctness, seed_matrix
from midblock.io import RunDir, write_json, write_text

REPLAY_FILES = ("replay.json", "replay.md", "replay.png")


def arm_matrices(dest: str | Path, arm: str, baseline: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Aligned (seeds x items) 0/1 matrices of ``arm`` and ``baseline`` from an export (only the seeds both
    have, the items every one of those cells scored), and ``{"arm", "baseline", "seeds", "items", "metric"}``."""
    a, b, meta, _ = arm_items(dest, arm, baseline)
    return a, b, {k: v for k, v in meta.items() if k != "evaluation"}


def arm_items(
    dest: str | Path, arm: str, baseline: str | None = None, export: tuple | None = None
) -> tuple[np.ndarray, np.ndarray, dict, list]:
    """:func:`arm_matrices`, with the test item indices of the matrices' columns, and ``evaluation`` in the
    meta: the evaluation fingerprints of those cells (one when they scored the same items the same way).
    ``export``: ``read_export(dest)`` when the caller has it already."""
    config, recs, _, order = export or read_export(dest)
    baseline = baseline or config.get("baseline")
    for name in (arm, baseline):
        if name not in order:
            raise MidblockError(f"unknown arm '{name}'", hint="choose one of " + ", ".join(order))
    if arm == baseline:
        raise MidblockError(f"--arm and the baseline are both '{arm}'", hint="pass --baseline ARM")
    metric = config["metric"]
    by = {(r["label"], r["seed"]): correctness(r, metric) for r in recs if r["label"] in (arm, baseline)}
    seeds = sorted({s for (a, s) in by if a == arm} & {s for (a, s) in by if a == baseline})
    if not seeds:
        raise MidblockError(f"arms '{arm}' and '{baseline}' share no seed", hint="export a grid that ran both")
    items = sorted(set.intersection(*(set(by[(a, s)]) for a in (arm, baseline) for s in seeds)))
    a = seed_matrix([by[(arm, s)] for s in seeds], items)
    b = seed_matrix([by[(baseline, s)] for s in seeds], items)
    used = {(name, s) for name in (arm, baseline) for s in seeds}
    fps = sorted({str((r.get("fingerprint") or {}).get("evaluation")) for r in recs if (r["label"], r["seed"]) in used})
    meta = {"arm": arm, "baseline": baseline, "seeds": seeds, "items": len(items), "metric": metric}
    return a, b, meta | {"evaluation": fps}, items


def replay(
    dest: str | Path,
    arm: str,
    baseline: str | None = None,
    n_items: int = 100,
    draws_per_seed: int = 200,
    win: float = 0.05,
    reported: float | None = None,
    controlled: tuple[str | Path, str, str | None] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The replay summary of ``arm`` against ``baseline`` in the export ``dest`` (see the module); writes
    nothing. ``controlled``: (another export, its arm, its baseline) whose pooled difference is shown beside."""
    a, b, meta = arm_matrices(dest, arm, baseline)
    diffs = one_seed_replays(a, b, n_items, draws_per_seed, seed)
    per_seed = (a - b).mean(axis=1)
    out = meta | {
        "n_items_per_replay": n_items,
        "draws_per_seed": draws_per_seed,
        "replays": replay_summary(diffs, win, reported),
        "per_seed_full_test": list(map(float, per_seed)),
        # the "share of seeds in which the band wins": each training seed on the whole test set
        "seeds_win": int((per_seed >= win - 1e-12).sum()),
        "pooled": paired_two_level(a, b, seed=seed),
        "diffs": diffs.tolist(),
    }
    if controlled is not None:
        ca, cb, cmeta = arm_matrices(*controlled)
        out["controlled"] = cmeta | {
            "pooled": paired_two_level(ca, cb, seed=seed),
            "export": Path(controlled[0]).resolve().name,
        }
    return out


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def render(res: dict[str, Any]) -> str:
    """``replay.md``: what the replays show, in numbers with what each covers."""
    r, p = res["replays"], res["pooled"]
    lines = [
        f"# {res['arm']} minus {res['baseline']}: {len(res['seeds'])} training seeds replayed as one-seed studies",
        "",
        f"Each replay is one training seed scored on {res['n_items_per_replay']} of the {res['items']} test items "
        f"drawn without replacement ({res['draws_per_seed']} draws per seed, {r['n_replays']} replays; metric "
        f"`{res['metric']}`). The spread covers the training seed and the item draw.",
        "",
        "| what | points |",
        "|---|---|",
        f"| mean of the replays | {_pts(r['mean'])} |",
        f"| standard deviation of the replays | {100 * r['sd']:.1f} |",
        f"| middle 95% of the replays | [{_pts(r['q025'])}, {_pts(r['q975'])}] |",
        f"| share of replays in which the arm wins by {100 * r['win']:.0f} points or more "
        f"| {100 * r['share_win']:.1f}% |",
    ]
    if "reported" in r:
        lines.append(
            f"| share of replays at {_pts(r['reported'])} or more | {100 * r['share_at_least_reported']:.1f}% |"
        )
    per_seed = ", ".join(_pts(x) for x in res["per_seed_full_test"])
    lines += [
        f"| each seed on all {res['items']} items | {per_seed} |",
        f"| seeds in which the arm wins by {100 * r['win']:.0f} points or more on all {res['items']} items "
        f"| {res['seeds_win']} of {len(res['seeds'])} |",
        f"| pooled, {len(res['seeds'])} seeds x {res['items']} items (95% interval covers {p['covers']}) | "
        f"{_pts(p['estimate'])} [{_pts(p['lo'])}, {_pts(p['hi'])}] |",
    ]
    if "controlled" in res:
        c = res["controlled"]
        cp = c["pooled"]
        lines.append(
            f"| controlled protocol: {c['arm']} minus {c['baseline']}, {len(c['seeds'])} seeds x {c['items']} items "
            f"(covers {cp['covers']}) | {_pts(cp['estimate'])} [{_pts(cp['lo'])}, {_pts(cp['hi'])}] |"
        )
    return "\n".join(lines) + "\n"


def _interval_bar(ax, x: float, d: dict[str, Any], marker: str, color: str) -> None:
    """A difference and its interval (fractions, drawn in points) as one marker with error bars."""
    est = 100 * d["estimate"]
    ax.errorbar(x, est, yerr=[[est - 100 * d["lo"]], [100 * d["hi"] - est]], fmt=marker, color=color, capsize=4)


def plot(res: dict[str, Any], path: str | Path) -> None:
    """One-seed differences as dots (one column per training seed), each seed's full-test difference as a
    bar, the pooled interval, and the controlled protocol's interval where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diffs = 100 * np.asarray(res["diffs"])
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for k, row in enumerate(diffs):
        ax.scatter(k + rng.uniform(-0.3, 0.3, row.size), row, s=4, alpha=0.25, color="tab:blue", lw=0)
        ax.hlines(100 * res["per_seed_full_test"][k], k - 0.35, k + 0.35, color="black", lw=2)
    n = len(diffs)
    _interval_bar(ax, n + 0.5, res["pooled"], "o", "black")
    ticks, labels = list(range(n)) + [n + 0.5], [str(s) for s in res["seeds"]] + ["pooled"]
    if "controlled" in res:
        _interval_bar(ax, n + 1.5, res["controlled"]["pooled"], "s", "tab:red")
        ticks.append(n + 1.5)
        c = res["controlled"]
        same = (c["arm"], c["baseline"]) == (res["arm"], res["baseline"])
        labels.append("controlled" if same else f"controlled\n{c['arm']} - {c['baseline']}")
    if "reported" in res["replays"]:
        ax.axhline(100 * res["replays"]["reported"], color="tab:orange", ls="--", lw=1, label="reported gain")
        ax.legend(loc="upper left", fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.margins(y=0.08)
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_xlabel("training seed (dots: one-seed replays on drawn items; bar: all items)")
    ax.set_ylabel(f"{res['arm']} minus {res['baseline']} (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_replay(dest: str | Path, res: dict[str, Any]) -> Path:
    """Write ``replay.json``, ``replay.md`` and ``replay.png`` into the export ``dest``."""
    dest = Path(dest)
    with RunDir(dest):
        write_json(dest / "replay.json", res)
        write_text(dest / "replay.md", render(res))
        plot(res, dest / "replay.png")
    return dest
