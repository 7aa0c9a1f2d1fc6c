"""One model at a time (``sequential=True``): the same metrics.csv as the lockstep run, with only one model
alive at any moment, the spill removed on success, and the spill/reload pieces on their own."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from midblock.analysis import sequential as S
from midblock.analysis.capture import CaptureSpec, collect, make_batches
from midblock.analysis.weights import weight_delta
from tests.analysis.conftest import RUN_KW, read_rows, run_analyze
from tests.conftest import run_cli


def _assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert {k: g[k] for k in g if k != "value"} == {k: w[k] for k in w if k != "value"}
        gv, wv = float(g["value"]), float(w["value"])
        # computed from identical float32 inputs by identical float64 operations: equal, or NaN in both
        assert gv == pytest.approx(wv, rel=1e-10, abs=1e-12, nan_ok=True), g


def test_sequential_equals_lockstep_with_one_model_alive(run, variants, tmp_path, monkeypatch):
    import midblock.models

    real_load = midblock.models.load_model
    alive: list[weakref.ref] = []
    alive_at_load: list[int] = []

    def tracking_load(*a, **k):
        gc.collect()
        alive_at_load.append(sum(r() is not None for r in alive))
        model, tok = real_load(*a, **k)
        alive.append(weakref.ref(model))
        return model, tok

    monkeypatch.setattr(midblock.models, "load_model", tracking_load)
    ref_out, ref_res, ref_rows = run
    out = tmp_path / "seq"
    # the variants are checkpoints: device_map reaches from_pretrained (on this CPU machine: all on the CPU)
    variant_specs = [variants["tail"], variants["late"]]
    res = run_analyze("random:llama-8l", variant_specs, out=out, sequential=True, device_map="auto", **RUN_KW)
    # variants checked alone, then the base; each variant again for its pass: never two models at once
    assert alive_at_load == [0] * 5
    rows = read_rows(out)
    assert {r["metric"] for r in rows} >= {"cka_token", "cka_token_unbiased", "logit_kl", "weight_delta", "grad_norm"}
    _assert_same_rows(rows, ref_rows)
    assert res["recommended_band"] == ref_res["recommended_band"]
    assert res["fingerprint"] == ref_res["fingerprint"]  # where models run is not part of the settings
    assert not (out / "cache" / "spill").exists() and (out / "COMPLETED").exists()


def test_sequential_cli_lora_variant_and_resume(tmp_path, tiny):
    """A base + LoRA adapter variant (lora_delta, no base weights needed) through the CLI flags; a resumed
    sequential run reuses its cached passes and gives the same CSV."""
    from peft import LoraConfig, get_peft_model

    base, _ = tiny("llama-tiny", seed=0)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(3))
    peft.save_pretrained(tmp_path / "adapter")
    spec = f"random:llama-tiny+{tmp_path / 'adapter'}"
    argv = ["analyze", "--base", "random:llama-tiny", "--variant", spec, "--data", "arith", "--samples", "6"]
    argv += ["--max-length", "24", "--batch-size", "3", "--metrics", "cka,cka_token,logit_lens,lora_delta"]
    rc, _, err = run_cli(*argv, "--out", str(tmp_path / "lock"))
    assert rc == 0, err
    rc, _, err = run_cli(*argv, "--one-model-at-a-time", "--out", str(tmp_path / "seq"))
    assert rc == 0, err
    want, got = read_rows(tmp_path / "lock"), read_rows(tmp_path / "seq")
    _assert_same_rows(got, want)
    assert any(r["metric"] == "lora_delta" and float(r["value"]) > 0 for r in got)
    (tmp_path / "seq" / "metrics.csv").unlink()
    rc, _, err = run_cli(*argv, "--sequential", "--resume", "--out", str(tmp_path / "seq"))
    assert rc == 0, err
    _assert_same_rows(read_rows(tmp_path / "seq"), want)


def test_spill_round_trip_and_saved_weights(tmp_path, tiny):
    base, _ = tiny("llama-tiny", seed=0)
    var, _ = tiny("llama-tiny", seed=1)
    seqs = [[(3 * i + j) % 250 + 1 for j in range(5 + 2 * i)] for i in range(5)]
    spec = CaptureSpec(layers=[0, 3, 6], token_cka=True, logit_lens=True)
    lock = collect({"base": base, "v": var}, make_batches(seqs, 2, 256, "left"), spec)
    writer = S.SpillWriter(tmp_path / "spill")
    alone = collect({"base": base}, make_batches(seqs, 2, 256, "left"), spec, on_keep=writer)
    assert writer.bytes == 4 * 3 * 128 * sum(len(s) for s in seqs)  # 3 layers of float32 real-token rows
    lay = base.get_decoder().norm, base.lm_head
    pair = S.BasePair(tmp_path / "spill", S.detached_copy(lay[0]), S.detached_copy(lay[1]))
    seq = collect({"v": var}, make_batches(seqs, 2, 256, "left"), spec, paired=pair)
    assert alone["base"].sums == lock["base"].sums
    assert seq["v"].sums == lock["v"].sums  # logit lens, token stats: bit-identical
    for layer in spec.layers:
        for k, t in lock["v"].moments[layer].items():
            assert torch.equal(seq["v"].moments[layer][k], t), (layer, k)
    S.save_base_weights(base, tmp_path / "w.safetensors")
    saved = S.SavedWeights(tmp_path / "w.safetensors")
    assert weight_delta(saved, var) == weight_delta(base, var)
    with pytest.raises(Exception, match="missing"):
        S.BasePair(tmp_path / "nowhere", None, None)(next(make_batches(seqs, 2, 256)))


def test_sequential_resume_after_interrupted_variant_pass(tmp_path, monkeypatch):
    """Killed during the variant's pass: the base's accumulators and spill are kept, and the resumed run
    continues the variant from its checkpoint (reading the spilled states) to the lockstep result."""
    import midblock.analysis.analyze as A

    kw = dict(datasets=["arith"], samples=12, max_length=16, batch_size=1, metrics="cka,cka_token,logit_lens")
    run_analyze("random:llama-tiny", ["random:llama-tiny"], out=tmp_path / "ref", seed=3, **kw)
    real_collect = A.collect
    base_passes = []

    def interrupted(models, batches, spec, stats=None, on_batch=None, **k):
        if k.get("paired") is None:  # the base's pass runs through
            base_passes.append(1)
            return real_collect(models, batches, spec, stats, on_batch=on_batch, **k)

        def hook(i, st):
            on_batch(i, st)
            if i == 10:  # the checkpoint holds the variant's first 10 batches
                raise KeyboardInterrupt

        return real_collect(models, batches, spec, stats, on_batch=hook, **k)

    monkeypatch.setattr(A, "collect", interrupted)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run_analyze("random:llama-tiny", ["random:llama-tiny"], out=out, seed=3, sequential=True, **kw)
    assert len(list((out / "cache" / "spill" / "arith").glob("b*.safetensors"))) == 12
    assert (out / "cache" / "arith@random:llama-tiny.r0.partial.pt").exists()
    run_analyze("random:llama-tiny", ["random:llama-tiny"], out=out, seed=3, sequential=True, resume=True, **kw)
    assert len(base_passes) == 1  # the resumed run reused the base's finished pass
    _assert_same_rows(read_rows(out), read_rows(tmp_path / "ref"))
    assert not (out / "cache" / "spill").exists()
