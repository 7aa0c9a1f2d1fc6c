"""End to end on tiny random models: the CSV contract, a perturbed tail, several variants, bad input, caching."""

from __future__ import annotations

import csv
import json

import pytest

from midblock.analysis.analyze import CSV_COLUMNS
from midblock.errors import MidblockError
from midblock.layers import resolve_layers
from tests.analysis.conftest import K, L, _save_variant, run_analyze
from tests.conftest import run_cli


def _val(rows, variant, layer, metric):
    got = [
        float(r["value"])
        for r in rows
        if r["variant"] == variant and int(r["layer"]) == layer and r["metric"] == metric
    ]
    assert len(got) == 1, (variant, layer, metric, got)
    return got[0]


def test_csv_contract_and_outputs(run):
    out, res, rows = run
    with open(out / "metrics.csv") as f:
        assert next(csv.reader(f)) == CSV_COLUMNS
    assert {r["variant"] for r in rows} == {"base", "tail", "late"}
    for r in rows[:50]:
        assert float(r["depth"]) == pytest.approx(int(r["layer"]) / L)
    keys = [(r["variant"], r["dataset"], r["layer"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))  # one row per variant x dataset x layer x metric
    saved = json.loads((out / "results.json").read_text())
    for k in ("config", "seed", "versions", "hardware", "recommended_band", "warnings"):
        assert k in saved
    band = saved["recommended_band"]
    assert resolve_layers(band["spec"], L) == band["indices"]
    assert (out / "report.html").read_text().count("data:image/png;base64") == len(saved["plots"]) >= 5
    assert (out / "COMPLETED").exists()
    assert any("samples truncated" in w for w in saved["warnings"])


def test_perturbed_tail_is_found_and_excluded(run):
    _, res, rows = run
    for layer in range(0, K + 1):  # identical computation up to block K-1's output (layer index K)
        assert _val(rows, "tail", layer, "cka") == pytest.approx(1.0, abs=1e-12)
        assert _val(rows, "tail", layer, "cosine") == pytest.approx(1.0, abs=1e-12)
        assert _val(rows, "tail", layer, "mean_shift") == 0.0
        assert _val(rows, "tail", layer, "weight_delta") == 0.0
        assert _val(rows, "tail", layer, "logit_kl") == pytest.approx(0.0, abs=1e-9)
    for layer in range(K + 1, L + 1):
        assert _val(rows, "tail", layer, "weight_delta_rel") > 0.2
        assert _val(rows, "tail", layer, "mean_shift") > 0
    assert _val(rows, "tail", L, "cka") < 0.99
    band = res["recommended_band"]["indices"]
    assert band and max(band) < K and res["recommended_band"]["evidence"]["tail"] == list(range(K, L))


def test_variants_keep_separate_results(run):
    _, _, rows = run
    # 'late' perturbs only the last block: unchanged at layer K + 1 where 'tail' has changed
    assert _val(rows, "late", K + 1, "cka") == pytest.approx(1.0, abs=1e-12)
    assert _val(rows, "tail", K + 1, "cka") < 1 - 1e-6
    assert _val(rows, "late", L, "weight_delta") > 0 and _val(rows, "late", L - 1, "weight_delta") == 0.0
    # per-model rows of the base are written once, under 'base'
    assert _val(rows, "base", 3, "effective_rank") > 0


def test_identical_variant_and_base_only(tmp_path):
    res = run_analyze(
        "random:llama-8l",
        ["random:llama-8l"],
        ["arith"],
        samples=6,
        max_length=24,
        batch_size=3,
        out=tmp_path / "same",
        metrics="cka,cosine,mean_shift,weight_delta",
    )
    rows = list(csv.DictReader(open(tmp_path / "same" / "metrics.csv")))
    for r in rows:
        if r["metric"] in ("cka", "cosine"):
            assert float(r["value"]) == pytest.approx(1.0, abs=1e-12)
        if r["metric"] in ("mean_shift", "weight_delta"):
            assert float(r["value"]) == 0.0
    assert res["recommended_band"]["evidence"]["fallback"]
    solo = run_analyze(
        "random:llama-8l",
        [],
        ["arith"],
        samples=6,
        max_length=24,
        batch_size=3,
        out=tmp_path / "solo",
        metrics="cka,grad_norm",
    )
    ev = solo["recommended_band"]["evidence"]
    assert ev["mode"] == "base-only" and set(ev["signals_used"]) == {"grad_norm_rel", "1-cka_consecutive"}


def test_fewer_samples_warns_and_empty_fails(tmp_path):
    f = tmp_path / "three.jsonl"
    f.write_text("".join(json.dumps({"text": f"sample number {i} text"}) + "\n" for i in range(3)))
    res = run_analyze(
        "random:llama-tiny", [], [str(f)], samples=5, max_length=32, out=tmp_path / "r", metrics="dataset_entropy"
    )
    assert res["datasets"] == {"three": 3} and any("3 samples available, 5 asked" in w for w in res["warnings"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variant", "random:llama-tiny", "--metrics", "cka,bogus"], "unknown metric 'bogus'"),
        (["--variant", "random:llama-tiny"], "has 6 blocks, the base 8"),
        (["--metrics", "logit_kl"], "written by family 'logit_lens'"),
        (["--data", "nope.jsonl"], "neither gsm8k, arith nor an existing"),
        (["--samples", "0"], "--samples must be >= 1"),
        (["--variant", "random:llama-tiny", "--sequential"], "has 6 blocks, the base 8"),
        (["--device", "cpu", "--device-map", "auto"], "--device and --device-map exclude each other"),
        (["--grad-batches", "0"], "--grad-batches must be >= 1"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, argv, message):
    out = tmp_path / "out"
    base_args = ["analyze", "--base", "random:llama-8l", "--data", "arith", "--samples", "4", "--out", str(out)]
    rc, _, err = run_cli(*base_args, *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_tokenizer_and_hidden_size_mismatch(tmp_path):
    from midblock.models.presets import byte_tokenizer

    tok = byte_tokenizer()
    tok.add_tokens(["<extra>"])
    v = _save_variant(tmp_path / "v", L, tokenizer=tok)
    with pytest.raises(MidblockError, match="different tokenizer"):
        run_analyze("random:llama-8l", [v], ["arith"], samples=2, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cache_other_settings_refused_and_resume(tmp_path, variants):
    out = tmp_path / "c"
    kw = dict(datasets=["arith"], max_length=24, batch_size=2, metrics="cka,sparsity")
    run_analyze("random:llama-8l", [variants["late"]], samples=4, out=out, **kw)
    first = (out / "metrics.csv").read_text()
    with pytest.raises(MidblockError, match=r"different data, settings \(samples\)"):
        run_analyze("random:llama-8l", [variants["late"]], samples=5, out=out, **kw)
    (out / "metrics.csv").unlink()
    (out / "COMPLETED").unlink()
    run_analyze("random:llama-8l", [variants["late"]], samples=4, out=out, resume=True, **kw)
    assert (out / "metrics.csv").read_text() == first


def test_cli_end_to_end(tmp_path, variants):
    out = tmp_path / "cli"
    rc, stdout, err = run_cli(
        "analyze",
        "--base",
        "random:llama-8l",
        "--variant",
        variants["tail"],
        "--data",
        "arith",
        "--samples",
        "6",
        "--max-length",
        "24",
        "--layers",
        "0,4-8",
        "--metrics",
        "cka,weight_delta",
        "--out",
        str(out),
    )
    assert rc == 0, err
    assert "recommended band:" in stdout
    layers = {int(r["layer"]) for r in csv.DictReader(open(out / "metrics.csv")) if r["metric"] == "cka"}
    assert layers == {0, 4, 5, 6, 7, 8}


def test_resume_continues_after_an_interruption(tmp_path, monkeypatch):
    import midblock.analysis.analyze as A

    kw = dict(datasets=["arith"], samples=12, max_length=16, batch_size=1, metrics="cka,curvature,sparsity")
    run_analyze("random:llama-8l", ["random:llama-8l"], out=tmp_path / "ref", **kw)
    reference = (tmp_path / "ref" / "metrics.csv").read_text()

    real_collect = A.collect
    seen = []

    def interrupted(models, batches, spec, stats=None, on_batch=None, **k):
        def hook(i, st):
            on_batch(i, st)
            seen.append(i)
            if i == 10:  # killed after 11 batches; the checkpoint holds the first 10
                raise KeyboardInterrupt

        return real_collect(models, batches, spec, stats, on_batch=hook, **k)

    monkeypatch.setattr(A, "collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_analyze("random:llama-8l", ["random:llama-8l"], out=tmp_path / "r", **kw)
    assert not (tmp_path / "r" / "metrics.csv").exists()
    monkeypatch.setattr(A, "collect", real_collect)
    resumed = []
    monkeypatch.setattr(A, "make_batches", lambda *a, **k: [resumed.append(k.get("start")), *real_mb(*a, **k)][1:])
    run_analyze("random:llama-8l", ["random:llama-8l"], out=tmp_path / "r", resume=True, **kw)
    assert resumed == [10]
    assert (tmp_path / "r" / "metrics.csv").read_text() == reference


def real_mb(*a, **k):
    from midblock.analysis.capture import make_batches

    return list(make_batches(*a, **k))


def test_variant_names_must_match_the_variants_one_to_one():
    from midblock.analysis.config import AnalyzeConfig

    ok = AnalyzeConfig(base="random:llama-tiny", variants=["a/train", "b/train"], names=["lora", "midblock"])
    assert ok.names == ["lora", "midblock"]
    for names, match in ((["lora"], "1 --name for 2 --variant"), (["x", "x"], "distinct"), (["base", "y"], "base")):
        with pytest.raises(MidblockError, match=match):
            AnalyzeConfig(base="random:llama-tiny", variants=["a/train", "b/train"], names=names)
