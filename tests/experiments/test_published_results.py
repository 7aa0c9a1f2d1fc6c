"""The published studies (every export under docs/results/): each table re-derives from its committed raw
files, an implementation written here (not the engine's) reproduces the seed-aware intervals and the one-seed
replays, and the numbers the README and docs/results.md quote are the derived ones (no model is run: the files
are read)."""

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from midblock.experiments.export import derive
from midblock.experiments.table import pooled_rows

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "docs" / "results" / "band-landscape"  # the first study: the docs quote its table
PUBLISHED = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/compare.json"))
KEYS = ("arm", "seed", "band", "lr", "n", "accuracy", "ci_low", "ci_high", "seed_sd", "diff_vs_baseline")
KEYS += ("diff_low", "diff_high", "ppl", "ppl_change_pct", "rank_units", "trainable_params", "ci_covers")
KEYS += ("approximate", "n_seeds", "seed_accuracies", "diff_covers", "seed_diffs", "diff_p", "diff_p_holm")
KEYS += ("diff_sim_low", "diff_sim_high", "n_comparisons", "ppl_change_low", "ppl_diff")


def _close(a, b):
    """Equal, floats to 1e-12 relative: numpy's sums take another order on CPUs with other vector units (AVX2
    against AVX-512), which moves a bootstrap percentile in its 14th digit."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("raw", PUBLISHED, ids=lambda p: p.name)
def test_the_committed_raw_results_rederive_the_published_table(raw):
    published = json.loads((raw / "compare.json").read_text())["rows"]
    again = derive(raw)
    assert [r["arm"] for r in again] == [r["arm"] for r in published]
    for mine, theirs in zip(again, published):
        wrong = [k for k in KEYS if not _close(mine.get(k), theirs.get(k))]
        assert not wrong, f"{mine['arm']} seed {mine['seed']}: {[(k, mine.get(k), theirs.get(k)) for k in wrong]}"


def test_close_tells_a_rounding_from_a_difference():
    assert _close([0.1 + 0.2, "x", None, 3], [0.3, "x", None, 3])
    assert not _close(36.5385, 36.5386) and not _close(0.3, None) and not _close([1.0], [1.0, 2.0])


# ----------------------------------------------------------------------------- an independent implementation
# Written from the protocol in docs/evaluation.md, not from the engine's code: the two-level bootstrap draws
# B = 10,000 resamples with generator seed 0, seed counts from default_rng([0, 0]), item counts from
# default_rng([0, 1]), each multinomial(n, 1/n) per resample; the percentile interval takes the
# floor((1 - level)/2 B)-th and ceil((1 + level)/2 B)-th smallest resampled means (1-based: +1 on the first).

B = 10_000


def _matrices(raw=RAW):
    """arm -> (seeds x items) 0/1 matrix of the main phase, items in index order."""
    cells = defaultdict(dict)
    with open(raw / "items.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["phase"] == "main":
                cells[r["arm"]].setdefault(int(r["seed"]), {})[int(r["index"])] = int(r["correct"])
    out = {}
    for arm, seeds in cells.items():
        items = sorted(seeds[min(seeds)])
        out[arm] = np.array([[seeds[s][i] for i in items] for s in sorted(seeds)], dtype=float)
    return out


def _resampled_means(y):
    s, n = y.shape
    w = np.random.default_rng([0, 0]).multinomial(s, [1 / s] * s, size=B)
    v = np.random.default_rng([0, 1]).multinomial(n, [1 / n] * n, size=B)
    return np.einsum("bs,si,bi->b", w, y, v) / (s * n)


def _percentile(means, level):
    ordered = sorted(means.tolist())
    return ordered[math.floor((1 - level) / 2 * B)], ordered[math.ceil((1 + level) / 2 * B) - 1]


def _wilson(k, n, z=1.959963984540054):
    """Wilson's 95% score interval for k successes in n trials."""
    p, z2 = k / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _holm(ps):
    order = sorted(ps, key=ps.get)
    adjusted, running = {}, 0.0
    for k, arm in enumerate(order):
        running = max(running, min(1.0, (len(ps) - k) * ps[arm]))
        adjusted[arm] = running
    return adjusted


@pytest.mark.parametrize("raw", PUBLISHED, ids=lambda p: p.name)
def test_an_independent_two_level_bootstrap_reproduces_the_published_intervals(raw):
    published = {r["arm"]: r for r in json.loads((raw / "compare.json").read_text())["rows"]}  # the last: mean(S)
    baseline = json.loads((raw / "compare.json").read_text())["config"]["baseline"]
    ys = _matrices(raw)
    others = [a for a in ys if a != baseline]
    ps, sims = {}, {}
    for arm, y in ys.items():
        row = published[arm]
        assert row["seed"] == f"mean({y.shape[0]})" and row["accuracy"] == pytest.approx(y.mean(), abs=1e-12)
        if y.shape[0] == 1:  # one seed: Wilson's score interval over the items
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(_wilson(y.sum(), y.size), abs=1e-12)
        else:
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(_percentile(_resampled_means(y), 0.95), abs=1e-12)
            assert row["seed_accuracies"] == pytest.approx(y.mean(axis=1).tolist())
        if arm == baseline:
            assert row.get("diff_vs_baseline") is None
            continue
        d = y - ys[baseline]
        means = _resampled_means(d)
        assert row["diff_vs_baseline"] == pytest.approx(d.mean(), abs=1e-12)
        assert (row["diff_low"], row["diff_high"]) == pytest.approx(_percentile(means, 0.95), abs=1e-12)
        assert row["seed_diffs"] == pytest.approx(d.mean(axis=1).tolist())
        ps[arm] = min(1.0, 2 * (1 + min((means <= 0).sum(), (means >= 0).sum())) / (B + 1))
        sims[arm] = _percentile(means, 1 - 0.05 / len(others))
    holm = _holm(ps)
    for arm in others:
        row = published[arm]
        assert row["diff_p"] == pytest.approx(ps[arm]) and row["diff_p_holm"] == pytest.approx(holm[arm])
        assert (row["diff_sim_low"], row["diff_sim_high"]) == pytest.approx(sims[arm], abs=1e-12)


# ----------------------------------------------------------------------------- one-seed replays
# From the protocol in docs/evaluation.md: for each training seed in increasing order, `draws` subsets of
# `n_items` test items (positions among the items both arms scored, in index order), each from
# default_rng(0).choice(n, n_items, replace=False) on one generator shared by all draws; the replay's
# difference is the mean over the subset of arm minus baseline. Percentiles are numpy's default (linear).


def _replays(ys, arm, baseline, n_items, draws):
    d = ys[arm] - ys[baseline]
    rng = np.random.default_rng(0)
    return np.array([[d[s, rng.choice(d.shape[1], n_items, replace=False)].mean() for _ in range(draws)]
                     for s in range(d.shape[0])])  # fmt: skip


def _check_replay(raw, res):
    ys = _matrices(raw)
    diffs = _replays(ys, res["arm"], res["baseline"], res["n_items_per_replay"], res["draws_per_seed"])
    assert np.asarray(res["diffs"]) == pytest.approx(diffs, abs=1e-12)
    flat, r = diffs.ravel(), res["replays"]
    assert r["n_replays"] == flat.size and r["mean"] == pytest.approx(flat.mean(), abs=1e-12)
    assert r["sd"] == pytest.approx(np.std(flat, ddof=1), abs=1e-12)
    assert (r["q025"], r["q975"]) == pytest.approx(tuple(np.percentile(flat, [2.5, 97.5])), abs=1e-12)
    assert r["share_win"] == pytest.approx(np.mean(flat >= r["win"] - 1e-12))
    if "reported" in r:
        assert r["share_at_least_reported"] == pytest.approx(np.mean(flat >= r["reported"] - 1e-12))
    d = ys[res["arm"]] - ys[res["baseline"]]
    assert res["per_seed_full_test"] == pytest.approx(d.mean(axis=1).tolist(), abs=1e-12)
    assert res["seeds_win"] == int((d.mean(axis=1) >= r["win"] - 1e-12).sum())
    pooled = res["pooled"]
    assert pooled["estimate"] == pytest.approx(d.mean(), abs=1e-12)
    assert (pooled["lo"], pooled["hi"]) == pytest.approx(_percentile(_resampled_means(d), 0.95), abs=1e-12)


def test_an_independent_replay_reproduces_the_engines(tmp_path):
    """The engine's replay of the published first study (paper minus uniform) equals the one written here."""
    import shutil

    from midblock.experiments.replay import replay

    raw = tmp_path / "export"
    shutil.copytree(RAW, raw)
    _check_replay(raw, replay(raw, "paper", n_items=100, draws_per_seed=50, reported=0.102))


@pytest.mark.parametrize("raw", [p for p in PUBLISHED if (p / "replay.json").exists()], ids=lambda p: p.name)
def test_every_published_replay_rederives_from_its_raw_items(raw):
    _check_replay(raw, json.loads((raw / "replay.json").read_text()))


@pytest.mark.parametrize("raw", [p for p in PUBLISHED if (p / "compute.md").exists()], ids=lambda p: p.name)
def test_every_published_compute_ledger_totals_its_cells(raw):
    """compute.md's total: every exported cell, training hours once per training (fingerprint and record: a
    training trained again under its key, its weights lost, counts again; wall time or logged step time, the
    larger), evaluation hours from each cell's record (summed here from cells.jsonl with this file's own code)."""
    cells = [json.loads(line) for line in (raw / "cells.jsonl").read_text().splitlines()]
    # a training's hours: its wall time, or its logged step seconds where more (a run resumed by an earlier
    # midblock kept only its last segment's wall time)
    train = {
        (c["fingerprint"]["training"], repr(sorted(c["train"].items()))): max(
            c["train"]["wall_s"] or 0, c["train"].get("logged_step_s") or 0
        )
        for c in cells
        if c.get("train")
    }
    evals = sum((c.get("computed") or {}).get("eval_wall_s") or 0 for c in cells)
    total = f"| total | | | | | {len(cells)} | {sum(train.values()) / 3600:.2f} | {evals / 3600:.2f} | | |"
    assert total in (raw / "compute.md").read_text()


# ----------------------------------------------------------------------------- accuracy against forgetting
# One point per cell with a perplexity: search cells on the dev split, the grid's cells on the test split; the
# accuracy is the cell's share of correct items, forgetting its perplexity as a % change from the base's.


def check_pareto(raw):
    """compare.json's accuracy-against-forgetting points equal those re-derived from the export's raw files."""
    correct = defaultdict(list)
    with open(raw / "items.csv", newline="") as f:
        for r in csv.DictReader(f):
            correct[(r["phase"], r["arm"], r["seed"], float(r["lr"]) if r["lr"] else None)].append(int(r["correct"]))
    cells = [json.loads(line) for line in (raw / "cells.jsonl").read_text().splitlines()]
    base = [c["ppl"]["ppl"] for c in cells if c["phase"] == "base" and c.get("ppl")]
    points = []
    for c in cells:
        if c["phase"] == "base" or not c.get("ppl"):
            continue
        ys = correct[(c["phase"], c["label"], str(c["seed"]), c["lr"])]
        ppl = c["ppl"]["ppl"]
        change = 100 * (ppl / base[0] - 1) if base else None
        points.append((c["label"], c["seed"], c["lr"], "dev" if c["phase"] == "search" else "test", sum(ys) / len(ys)))
        points[-1] += (ppl, change)
    published = json.loads((raw / "compare.json").read_text())["pareto"]
    keys = ("arm", "seed", "lr", "split", "accuracy", "ppl", "ppl_change_pct")
    published = sorted((tuple(p[k] for k in keys) for p in published), key=lambda t: str(t[:4]))
    assert len(published) == len(points)
    for mine, theirs in zip(sorted(points, key=lambda t: str(t[:4])), published):
        assert mine[:4] == theirs[:4] and mine[4:6] == pytest.approx(theirs[4:6], rel=1e-12)
        assert (mine[6] is None and theirs[6] is None) or mine[6] == pytest.approx(theirs[6], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    "raw", [p for p in PUBLISHED if "pareto" in json.loads((p / "compare.json").read_text())], ids=lambda p: p.name
)
def test_every_published_accuracy_against_forgetting_rederives(raw):
    check_pareto(raw)


# ----------------------------------------------------------------------------- what the docs quote


def _pts(x):
    return f"{100 * x:+.1f}"


# docs/results.md quotes every published study; the README's headline table quotes one (HEADLINE).
HEADLINE = ROOT / "docs" / "results" / "selection-landscape"  # the second study, part 2
QUOTES = [(p, "docs/results.md") for p in PUBLISHED] + [(HEADLINE, "README.md")]
REPLAYED = [p for p in PUBLISHED if (p / "replay.json").exists()]


def _doc_text(doc):
    return (ROOT / doc).read_text().replace("**", "")


@pytest.mark.parametrize(("raw", "doc"), QUOTES, ids=lambda v: v if isinstance(v, str) else v.name)
def test_the_docs_quote_the_derived_numbers(raw, doc):
    text = _doc_text(doc)
    for r in pooled_rows(derive(raw)):
        if r["arm"] == "base" and doc == "README.md":
            continue  # the README's headline table shows the tuned arms only
        acc = f"{100 * r['accuracy']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
        assert acc in text, f"{doc}, {raw.name}, {r['arm']}: {acc} is not quoted"
        if r.get("diff_vs_baseline") is not None:
            diff = f"{_pts(r['diff_vs_baseline'])} [{_pts(r['diff_low'])}, {_pts(r['diff_high'])}]"
            assert diff in text, f"{doc}, {raw.name}, {r['arm']}: {diff} is not quoted"
            if r.get("diff_sim_low") is not None:  # several arms against the baseline: the adjusted interval
                sim = f"[{_pts(r['diff_sim_low'])}, {_pts(r['diff_sim_high'])}]"
                p = "<0.001" if r["diff_p_holm"] < 0.001 else f"{r['diff_p_holm']:.3f}"
                assert sim in text and p in text, f"{doc}, {raw.name}, {r['arm']}: {sim} / Holm p {p} is not quoted"
            assert f"{r['ppl_change_pct']:+.1f}%" in text, f"{doc}, {raw.name}, {r['arm']}"


@pytest.mark.parametrize("raw", REPLAYED, ids=lambda p: p.name)
def test_the_docs_quote_every_published_replay(raw):
    """What replay.md states (its own formats), docs/results.md quotes: the replays' mean, middle 95%, share
    of wins and of the reported gain or more, the seeds that win on the whole test set, the pooled difference
    and the controlled contrast."""
    res, text = json.loads((raw / "replay.json").read_text()), _doc_text("docs/results.md")
    r, p = res["replays"], res["pooled"]
    quoted = [_pts(r["mean"]), f"[{_pts(r['q025'])}, {_pts(r['q975'])}]", f"{100 * r['share_win']:.1f}%"]
    quoted.append(f"{_pts(p['estimate'])} [{_pts(p['lo'])}, {_pts(p['hi'])}]")
    quoted.append(f"{res['seeds_win']} of {len(res['seeds'])}")
    if "reported" in r:
        quoted.append(f"{100 * r['share_at_least_reported']:.1f}%")
    if "controlled" in res:
        c = res["controlled"]["pooled"]
        quoted.append(f"{_pts(c['estimate'])} [{_pts(c['lo'])}, {_pts(c['hi'])}]")
    for q in quoted:
        assert q in text, f"docs/results.md does not quote {q} of {raw.name}/replay.json"


# ----------------------------------------------------------------------------- an effect across two studies
# Written from docs/evaluation.md ("Whether an effect differs between two studies"): the first study's seed
# counts from default_rng([0, 0]) and item counts from default_rng([0, 1]), the second's seed counts from
# default_rng([0, 2]) and, unless both scored the same items, item counts from default_rng([0, 3]).

ACROSS = sorted((ROOT / "docs" / "results").glob("*/across-*.json"))


def _draws(n, stream):
    return np.random.default_rng([0, stream]).multinomial(n, [1 / n] * n, size=B)


def _diff_matrix(raw, arm, baseline):
    cells = defaultdict(dict)
    with open(raw / "items.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["phase"] == "main" and r["arm"] in (arm, baseline):
                cells[(r["arm"], int(r["seed"]))][int(r["index"])] = int(r["correct"])
    seeds = sorted(s for (a, s) in cells if a == arm)
    items = sorted(cells[(arm, seeds[0])])
    return np.array([[cells[(arm, s)][i] - cells[(baseline, s)][i] for i in items] for s in seeds], float), items


@pytest.mark.parametrize("path", ACROSS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_published_across_rederives_and_is_quoted(path):
    res, text = json.loads(path.read_text()), _doc_text("docs/results.md")
    here, there = path.parent, path.parent.parent / res["other"]["export"]
    for row in res["rows"]:
        d1, i1 = _diff_matrix(here, row["this"]["arm"], row["this"]["baseline"])
        d2, i2 = _diff_matrix(there, row["other"]["arm"], row["other"]["baseline"])
        got, shared = row["difference"], row["difference"]["shared_items"]
        if shared:
            common = sorted(set(i1) & set(i2))
            d1, d2 = d1[:, [i1.index(i) for i in common]], d2[:, [i2.index(i) for i in common]]
        (s1, n1), (s2, n2) = d1.shape, d2.shape
        v1 = _draws(n1, 1)
        v2 = v1 if shared else _draws(n2, 3)
        means = np.einsum("bs,si,bi->b", _draws(s1, 0), d1, v1) / (s1 * n1)
        means -= np.einsum("bs,si,bi->b", _draws(s2, 2), d2, v2) / (s2 * n2)
        assert got["estimate"] == pytest.approx(d1.mean() - d2.mean(), abs=1e-12)
        assert (got["lo"], got["hi"]) == pytest.approx(_percentile(means, 0.95), abs=1e-12)
        quoted = f"{_pts(got['estimate'])} [{_pts(got['lo'])}, {_pts(got['hi'])}]"
        assert quoted in text, f"docs/results.md does not quote {quoted} of {path.parent.name}/{path.name}"


# ----------------------------------------------------------------------------- layer profiles by depth region
# Written from docs/metrics.md ("Depth regions"), not from midblock.analysis.regions: block b is read at layer
# b + 1; the paper's floor rule cuts L blocks into fifths at floor(i L / 5); 1 - CKA for `cka`, the LoRA or
# full weight change for `weight_delta_rel`; means over datasets, then over each region's blocks; over the
# seeds of one arm a mean and a t-interval with the 0.975 quantiles below (df = seeds - 1).

# every profiles.json: a study's own (its runs are its analyses/), and those set across studies (e.g.
# gemma-base/instruct-vs-base/, whose runs name committed metrics.csv files relative to the repository root)
PROFILED = sorted(p.parent for p in (ROOT / "docs" / "results").glob("**/profiles.json"))
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836, 6: 2.446911851}
T975 |= {7: 2.364624252, 8: 2.306004135, 9: 2.262157163}
SOURCES = {"1-cka": ("cka",), "mean_shift_rel": ("mean_shift_rel",), "logit_kl": ("logit_kl",)}
SOURCES["weight_delta_rel"] = ("weight_delta_rel", "lora_delta_rel")


def _region_means(metrics_csv, profile):
    values = defaultdict(list)
    with open(metrics_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] != "base"]
    L = max(int(r["layer"]) for r in rows)
    for r in rows:
        if r["metric"] in SOURCES[profile] and int(r["layer"]) >= 1 and math.isfinite(float(r["value"])):
            v = float(r["value"])
            values[int(r["layer"]) - 1].append(1 - v if profile == "1-cka" else v)
    cut = [i * L // 5 for i in range(6)]
    regions = {"bottom": range(cut[0], cut[1]), "middle": range(cut[1], cut[4]), "top": range(cut[4], cut[5])}
    out = {}
    for name, blocks in regions.items():
        per_block = [sum(values[b]) / len(values[b]) for b in blocks if values[b]]
        out[name] = sum(per_block) / len(per_block)
    out["top/middle"] = out["top"] / out["middle"]
    return out


def _metrics_csv(raw, run):
    """A run of a profiles.json: a committed metrics.csv named from the repository root, else the analysis
    directory of the study's run, exported as analyses/NAME.metrics.csv."""
    if run.endswith(".metrics.csv"):
        assert (ROOT / run).is_file(), f"{run} is not committed"
        return ROOT / run
    return raw / "analyses" / f"{Path(run).name}.metrics.csv"


@pytest.mark.parametrize("raw", PROFILED, ids=lambda p: str(p.relative_to(ROOT / "docs" / "results")))
def test_the_published_profiles_rederive_from_the_committed_analyses(raw):
    groups = json.loads((raw / "profiles.json").read_text())["groups"]
    for label, g in groups.items():
        for profile, summary in g["summary"].items():
            per_run = [_region_means(_metrics_csv(raw, r), profile) for r in g["runs"]]
            for region in ("bottom", "middle", "top", "top/middle"):
                vals = [m[region] for m in per_run]
                mean = sum(vals) / len(vals)
                assert summary[region]["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-15), (label, profile)
                if len(vals) > 1:
                    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                    half = T975[len(vals) - 1] * sd / math.sqrt(len(vals))
                    got = (summary[region]["lo"], summary[region]["hi"])
                    assert got == pytest.approx((mean - half, mean + half), rel=1e-8, abs=1e-12)
