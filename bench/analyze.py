"""Benchmark of the streaming analysis on SmolLM2-135M (see bench/results/analyze.md).

1. Extraction overhead: per batch, a plain forward (``model(**batch)``) and the same batch through the
   hooks with every default accumulator (pooled rows, prompt entropy plain + centred, curvature, sparsity,
   token norms, NaN checks) on all 31 layer indices, interleaved A B A B; ratio of summed times and median
   of per-batch ratios. The logit lens and token-level CKA (opt-in/expensive: V = 49152) are timed apart.
2. Metric phase (``rows.per_model_rows`` + ``rows.pair_rows``) vs extraction time.
3. Peak RSS with N1 and N2 samples (one subprocess each, extraction only, ``--mem-max-length`` tokens: shorter
   activations make the pooled rows' share of the peak larger, so the ratio is a conservative one).
4. Naive approach on the first ``--naive-samples`` samples: ``output_hidden_states`` kept for every layer
   and sample, then a full SVD (with vectors) per sample and layer, as the paper's code does; vs ours on
   the same samples.

Run: ``OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 MIDBLOCK_GSM8K=... .venv/bin/python bench/analyze.py``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from machine import machine_info, machine_line  # bench/machine.py: the CPU capability next to every timing

from midblock.analysis import metrics as M
from midblock.analysis.capture import CaptureSpec, collect, make_batches
from midblock.analysis.rows import DEFAULT_METRICS, pair_rows, per_model_rows


def load(samples: int, max_length: int):
    from midblock.data import load_examples
    from midblock.models import load_model

    model, tok = load_model("smollm2-135m")
    exs = load_examples("gsm8k", "test", limit=samples)
    seqs = [tok(e.text, verbose=False)["input_ids"][:max_length] for e in exs]
    return model, tok, seqs


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_overhead(model, tok, seqs, bs: int) -> dict:
    L = model.config.num_hidden_layers
    spec = CaptureSpec(layers=list(range(L + 1)))
    batches = list(make_batches(seqs, bs, tok.pad_token_id))
    plain, backbone, hooked = [], [], []
    stats: dict = {}  # accumulates over the timed passes, then feeds the metric phase
    with torch.no_grad():
        model(input_ids=batches[0].input_ids[:, :8])  # warm-up
        for b in batches:  # A B C A B C: the variants of one batch run back to back
            plain.append(timed(lambda b=b: model(input_ids=b.input_ids, attention_mask=b.attention_mask)))
            # the capture stops after the last block, so the fair baseline for the hooks' own cost is the
            # backbone without the LM head (V = 49152 makes the head ~20% of SmolLM2's forward)
            backbone.append(timed(lambda b=b: model.model(input_ids=b.input_ids, attention_mask=b.attention_mask)))
            hooked.append(timed(lambda b=b: collect({"base": model}, [b], spec, stats)))
    st = stats["base"]
    fams = set(DEFAULT_METRICS)
    t_metrics = timed(lambda: (per_model_rows(st, spec.layers, fams), pair_rows(st, st, spec.layers, fams)))
    ratios = [h / p for h, p in zip(hooked, plain)]
    ratios_bb = [h / p for h, p in zip(hooked, backbone)]
    return {
        "batches": len(batches),
        "plain_s": sum(plain),
        "backbone_s": sum(backbone),
        "hooked_s": sum(hooked),
        "ratio_total": sum(hooked) / sum(plain),
        "ratio_median": statistics.median(ratios),
        "ratio_vs_backbone_total": sum(hooked) / sum(backbone),
        "ratio_vs_backbone_median": statistics.median(ratios_bb),
        "metric_phase_s": t_metrics,
        "metric_over_extraction": t_metrics / sum(hooked),
    }


def bench_lens(model, tok, seqs, bs: int, n_batches: int) -> dict:
    """Paired extra metrics (the variant is a second copy of the model): logit lens and token-level CKA."""
    import copy

    L = model.config.num_hidden_layers
    var = copy.deepcopy(model)
    batches = list(make_batches(seqs, bs, tok.pad_token_id))[:n_batches]
    out = {"tokens": sum(int(b.attention_mask.sum()) for b in batches)}
    with torch.no_grad():
        for name, kw in (("default", {}), ("+cka_token", {"token_cka": True}), ("+logit_lens", {"logit_lens": True})):
            spec = CaptureSpec(layers=list(range(L + 1)), **kw)
            out[name] = timed(lambda spec=spec: collect({"base": model, "v": var}, batches, spec))
        out["plain_pair"] = timed(
            lambda: [m(input_ids=b.input_ids, attention_mask=b.attention_mask) for b in batches for m in (model, var)]
        )
    return out


def bench_naive(model, tok, seqs, bs: int) -> dict:
    L = model.config.num_hidden_layers

    def naive():
        kept = []  # every layer of every sample (what the paper's code keeps)
        with torch.no_grad():
            for b in make_batches(seqs, bs, tok.pad_token_id, sort_by_length=False):
                hs = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
                for r in range(b.input_ids.shape[0]):
                    m = b.attention_mask[r].bool()
                    kept.append([h[r][m].clone() for h in hs.hidden_states])
        for layer in range(L + 1):
            for sample in kept:
                h = sample[layer].double()
                h = h / h.norm(dim=-1, keepdim=True)
                U, S, Vh = torch.linalg.svd(h, full_matrices=True)  # vectors computed and thrown away
                M.entropy_from_eigenvalues(S**2)

    spec = CaptureSpec(layers=list(range(L + 1)))

    def ours():
        st = collect({"base": model}, make_batches(seqs, bs, tok.pad_token_id), spec)["base"]
        per_model_rows(st, spec.layers, set(DEFAULT_METRICS))

    t_ours, t_naive = [], []
    for _ in range(2):  # A B A B
        t_ours.append(timed(ours))
        t_naive.append(timed(naive))
    return {
        "samples": len(seqs),
        "ours_s": min(t_ours),
        "naive_s": min(t_naive),
        "naive_over_ours": min(t_naive) / min(t_ours),
    }


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_peak(samples: int, max_length: int, bs: int) -> dict:
    import gc

    model, tok, seqs = load(samples, max_length)
    spec = CaptureSpec(layers=list(range(model.config.num_hidden_layers + 1)))
    gc.collect()
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # reset the kernel's peak-RSS mark (VmHWM) so the peak below is the extraction's, not the model loading's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mib("VmRSS")
    with torch.no_grad():
        st = collect({"base": model}, make_batches(seqs, bs, tok.pad_token_id), spec)
    return {
        "samples": len(seqs),
        "load_peak_rss_mib": load_peak,
        "rss_before_extraction_mib": before,
        "extraction_peak_rss_mib": _status_mib("VmHWM"),
        "pooled_rows_mib": sum(z.numel() * 4 for c in st["base"].pooled.values() for _, z in c) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--naive-samples", type=int, default=24)
    ap.add_argument("--lens-batches", type=int, default=1)
    ap.add_argument("--lens-batch-size", type=int, default=4)
    ap.add_argument("--mem", type=int, nargs=2, default=[200, 1000])
    ap.add_argument("--mem-max-length", type=int, default=16, help="shorter texts keep the 1,000-sample run short")
    ap.add_argument("--overhead-only", action="store_true", help="only part 1 (and the metric phase)")
    ap.add_argument("--skip-extras", action="store_true", help="skip the paired extras and the naive approach")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child_peak(a.child, a.max_length, a.batch_size)))
        return
    res: dict = {"threads": torch.get_num_threads(), "machine": machine_info()}
    print(machine_line(res["machine"]), flush=True)
    model, tok, seqs = load(a.samples, a.max_length)
    res["tokens"] = sum(len(s) for s in seqs)
    res["overhead"] = bench_overhead(model, tok, seqs, a.batch_size)
    print(json.dumps(res, indent=1), flush=True)
    if a.overhead_only:
        return
    if not a.skip_extras:
        run_extras(a, res, model, tok, seqs)
    del model
    mem = []
    for n in a.mem:
        p = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--max-length", str(a.mem_max_length), "--batch-size", "32"],
            capture_output=True,
            text=True,
            check=True,
        )
        mem.append(json.loads(p.stdout.strip().splitlines()[-1]))
    res["memory"] = mem + [{"ratio": mem[1]["extraction_peak_rss_mib"] / mem[0]["extraction_peak_rss_mib"]}]
    print(json.dumps(res, indent=1))


def run_extras(a, res, model, tok, seqs) -> None:
    res["paired_extras"] = bench_lens(model, tok, seqs, a.lens_batch_size, a.lens_batches)
    print(json.dumps(res["paired_extras"], indent=1), flush=True)
    res["naive"] = bench_naive(model, tok, seqs[: a.naive_samples], a.batch_size)
    print(json.dumps(res["naive"], indent=1), flush=True)


if __name__ == "__main__":
    main()
