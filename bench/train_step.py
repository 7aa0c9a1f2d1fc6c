"""Step time and memory of lora / midblock / full / midblock-full (with and without checkpointing) and the
common peer set-up, interleaved in ONE process, beside the FLOP model's predictions.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_step.py --model smollm2-135m --batch 8 --seq 256 --steps 5

Every configuration trains the same fixed batch (random tokens, loss on every position). Rounds run the
configurations in turn (A B C ... A B C ...); each phase below starts with a warm-up round (optimizer
states, the heap's working size); medians over the timed rounds. All models share the frozen base tensors,
so they fit together.

Two phases in the one process. Memory first: the process starts with ``MALLOC_MMAP_THRESHOLD_`` set low so
freed tensors go back to the OS at once, and a sampler thread records the peak RSS during each step. A
configuration's memory is reported as
``frozen weights + its trainable state (params, Adam moments) + (peak RSS during the step - RSS before)``.
Then time: ``mallopt`` switches glibc to reusing freed memory (as in a normal run; with every tensor mmapped,
each step page-faults all its activations in again, about 30% of a step here: ``bench/page_faults.py``), and
the timed rounds run, counting each step's page faults. On CUDA memory comes from the allocator's peak statistics.

The peer set-up is what TRL's SFTTrainer / transformers' Trainer do with a PEFT band and checkpointing:
``layers_to_transform`` + ``enable_input_require_grads`` + ``gradient_checkpointing_enable()`` (every block).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime as dt
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # must be set before the allocator starts
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

from midblock.layers import resolve_layers  # noqa: E402
from midblock.models import load_model  # noqa: E402
from midblock.models.introspect import get_layout  # noqa: E402
from midblock.tuning.budget import Layout, match_budget, model_shape, step_flops  # noqa: E402
from midblock.tuning.config import MidBlockConfig  # noqa: E402
from midblock.tuning.loss import causal_lm_loss  # noqa: E402
from midblock.tuning.prepare import enable_band_checkpointing, prepare_model  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def normal_allocator() -> None:
    """Let glibc keep and reuse freed memory (mmap only above 32 MiB, never trim the heap), so timed steps do
    not page-fault their activations in. The page faults of every timed step are still counted and reported."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD (32 MiB is glibc's ceiling on 64-bit)
        libc.mallopt(-1, -1)  # M_TRIM_THRESHOLD: never hand the heap's free top back (it would fault in again)
    except (OSError, AttributeError):  # not glibc: the allocator was never switched either
        pass


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakSampler:
    """Peak RSS while a step runs (polled every millisecond on a thread; torch releases the GIL)."""

    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss())


def share_frozen(model, trained_names: set[str]):
    """A copy of ``model`` that shares every parameter it will not train (saves memory, same numbers)."""
    memo = {id(p): p for n, p in model.named_parameters() if n not in trained_names}
    return copy.deepcopy(model, memo)


def build(base, args):
    lay = get_layout(base)
    L = lay.num_layers
    band = resolve_layers(args.band, L)
    bm = match_budget(L, args.rank, band)
    targets = ("attn",)
    cfgs = {}
    cfgs["lora"] = prepare_model(share_frozen(base, set()), MidBlockConfig(method="lora", rank=args.rank))
    cfgs["midblock"] = prepare_model(
        share_frozen(base, set()), MidBlockConfig(band=args.band, rank=bm.rank, alpha=2.0 * bm.rank)
    )
    full_names = {n for n, _ in base.named_parameters()}
    cfgs["full"] = prepare_model(share_frozen(base, full_names), MidBlockConfig(method="full"))
    band_names = {n for n, _ in base.named_parameters() if any(n.startswith(f"{lay.block_prefix(b)}.") for b in band)}
    cfgs["midblock-full"] = prepare_model(
        share_frozen(base, band_names), MidBlockConfig(method="midblock-full", band=args.band)
    )
    # the peer: PEFT's own layer selection, then what TRL / Trainer do when checkpointing is on
    from peft import LoraConfig, get_peft_model

    peer = get_peft_model(
        share_frozen(base, set()),
        LoraConfig(
            r=bm.rank,
            lora_alpha=2.0 * bm.rank,
            target_modules=[t.split(".")[-1] for t in lay.attn_linears],
            layers_to_transform=band,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        ),
    )
    peer.enable_input_require_grads()
    peer.gradient_checkpointing_enable()
    cfgs["peer"] = peer
    return cfgs, band, bm, targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="measured rounds after one warm-up round")
    ap.add_argument("--band", default="seg2-4/5")
    ap.add_argument("--rank", type=int, default=8, help="all-block LoRA rank; the band gets the rank-unit match")
    ap.add_argument("--only", default="", help="comma list of configurations to run (default: all)")
    ap.add_argument("--dtype", default="fp32", help="fp32 | bf16 (weights; bf16 for the GPU run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--completion-steps", type=int, default=3, help="rounds of the completion-only section (0=off)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=None, help="write the markdown report here too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    shape = model_shape(base)
    cfgs, band, bm, _ = build(base, args)
    names = []
    for name in ("lora", "midblock", "full", "midblock-full"):
        names += [name, f"{name}+ckpt"]
    names.append("peer+ckpt")
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    ids = torch.randint(0, shape.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    batch = {k: v.to(args.device) for k, v in batch.items()}
    opts = {}
    for n in names:
        m = cfgs[n.removesuffix("+ckpt")]
        opts[n.removesuffix("+ckpt")] = opts.get(n.removesuffix("+ckpt")) or torch.optim.AdamW(
            [p for p in m.parameters() if p.requires_grad], lr=1e-5
        )
    # one torch thread: the main thread's own CPU time (the memory sampler's polling excluded); otherwise the
    # whole process's
    cpu_clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    mem: dict[str, list[int]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    cuda = args.device.startswith("cuda")

    def step(n: str, sampler: PeakSampler | None = None) -> tuple[float, float, int, int]:
        key = n.removesuffix("+ckpt")
        m = cfgs[key]
        lay = get_layout(m)
        if key != "peer":
            for b in lay.blocks:
                b.gradient_checkpointing = False
            if n.endswith("+ckpt"):
                enable_band_checkpointing(m, m.midblock_plan.backward_blocks)
        m.train()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with sampler or contextlib.nullcontext():
            t0, c0 = time.perf_counter(), cpu_clock()
            loss, _ = causal_lm_loss(m, batch, labelled_head=True)
            loss.backward()
            opts[key].step()
            opts[key].zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            dt_s, dc_s = time.perf_counter() - t0, cpu_clock() - c0
        nflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        if cuda:
            used = torch.cuda.max_memory_allocated() - before
        else:
            used = sampler.peak - sampler.base if sampler else 0
        return dt_s, dc_s, used + _state_bytes(m, opts[key]), nflt

    # Phase 1, memory: every tensor above 64 KiB is its own mmap (set at start-up), so RSS follows the live
    # tensors. A warm-up round first (it creates the Adam moments), then one measured round: memory is
    # deterministic.
    for rnd in range(2):
        for n in names:
            _, _, used, _ = step(n, PeakSampler())
            if rnd:
                mem[n].append(used)
        print(f"memory round {rnd}: done", flush=True)
    # Phase 2, time: back to an allocator that reuses freed memory, as in a normal run. With every tensor
    # mmapped, each step page-faults all its activations in again (about 30% of a step here went to the
    # kernel: bench/page_faults.py).
    normal_allocator()
    for rnd in range(args.steps + 1):
        for n in names:
            dt_s, dc_s, _, nflt = step(n)
            if rnd == 0:
                continue  # warm-up: the heap grows to its working size
            times[n].append(dt_s)
            cpu[n].append(dc_s)
            faults[n].append(nflt)
        if rnd:
            print(round_line(rnd - 1, names, times), flush=True)
    frozen = sum(p.numel() * p.element_size() for p in base.parameters())
    med = {n: statistics.median(times[n]) for n in names}
    cmed = {n: statistics.median(cpu[n]) for n in names}
    mmed = {n: frozen + statistics.median(mem[n]) for n in names}
    pred = predictions(shape, band, bm.rank, args)
    report = render(args, shape, band, bm, names, med, mmed, pred, cmed, times, faults)
    if args.completion_steps and not cuda:
        report += "\n" + completion_section(cfgs["midblock"], tok, args)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
    return 0


def _state_bytes(model, opt) -> int:
    """Trainable parameters + their Adam moments (the persistent part a configuration adds)."""
    n = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    st = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return n + st


def predictions(shape, band, rank, args) -> dict[str, float]:
    targets = get_targets(shape)
    L = shape.num_layers
    lay = {
        "lora": Layout(lora={b: args.rank for b in range(L)}, targets=targets),
        "midblock": Layout(lora={b: rank for b in band}, targets=targets),
        "full": Layout(full=list(range(L)), train_head=True),
        "midblock-full": Layout(full=list(band)),
    }
    out = {}
    tokens = args.batch * args.seq
    for n, lo in lay.items():
        out[n] = step_flops(shape, lo, seq_len=args.seq, tokens=tokens).total
        lo.checkpointing = True
        out[f"{n}+ckpt"] = step_flops(shape, lo, seq_len=args.seq, tokens=tokens).total
    peer = Layout(lora={b: rank for b in band}, targets=targets, act_from=0, checkpoint_all=True)
    out["peer+ckpt"] = step_flops(shape, peer, seq_len=args.seq, tokens=tokens).total
    return out


def get_targets(shape) -> list[str]:
    return [n for n in shape.modules if any(w in n.split(".")[0].lower() for w in ("attn", "attention"))]


RATIOS = [
    ("midblock / lora time", "midblock", "lora", "time", "<= 0.90"),
    ("midblock / lora memory", "midblock", "lora", "mem", "<= 0.85"),
    ("midblock-full / full time", "midblock-full", "full", "time", "<= 0.80"),
    ("midblock-full / full memory", "midblock-full", "full", "mem", ""),
    ("midblock+ckpt / lora+ckpt time", "midblock+ckpt", "lora+ckpt", "time", "< 1"),
    ("midblock+ckpt / peer+ckpt time", "midblock+ckpt", "peer+ckpt", "time", "< 1"),
    ("midblock+ckpt / peer+ckpt memory", "midblock+ckpt", "peer+ckpt", "mem", "<= 1"),
    ("midblock+ckpt / midblock time", "midblock+ckpt", "midblock", "time", ""),
    ("midblock+ckpt / midblock memory", "midblock+ckpt", "midblock", "mem", ""),
]


def render(args, shape, band, bm, names, med, mmed, pred, cmed, times, faults) -> str:
    from machine import machine_line  # bench/machine.py: the CPU capability next to every timing

    from midblock.io import hardware_info, package_versions
    from midblock.layers import format_indices

    gib = 2**30
    lines = [
        f"# train_step benchmark ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{' '.join(['python', *sys.argv])}`",
        "",
        machine_line(),
        "",
        f"Model {args.model} ({shape.num_layers} blocks), batch {args.batch} x {args.seq}, {args.dtype} on "
        f"{args.device}, torch threads {torch.get_num_threads()}; band {args.band} = blocks {format_indices(band)} "
        f"at r{bm.rank} (rank units {bm.units} vs all-block r{args.rank}: {bm.baseline_units}); times are medians "
        f"of {args.steps} interleaved rounds after 1 warm-up round; memory from a separate phase before them "
        "(1 warm-up + 1 measured round).",
        f"Versions: {package_versions()}; hardware: {hardware_info()}",
        "",
        "| config | s/step (wall) | CPU s/step | memory GiB | predicted TFLOP/step | page faults/step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        lines.append(
            f"| {n} | {med[n]:.3f} | {cmed[n]:.3f} | {mmed[n] / gib:.2f} | {pred[n] / 1e12:.3f} "
            f"| {statistics.median(faults[n]):.0f} |"
        )
    lines += [
        "",
        "Time ratios are wall-clock; beside them the CPU-time ratio (with one torch thread: the CPU seconds of",
        "the thread running the step, which other jobs on a shared machine disturb much less than wall time).",
        "",
        "Paired: the median of the per-round ratios (the two configurations ran minutes apart in each round,",
        "so slow drift of the machine cancels).",
        "",
        "| ratio | measured | paired | CPU-time ratio | predicted (FLOPs) | target | within 10% of prediction |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for label, a, b, kind, target in RATIOS:
        if a not in med or b not in med:
            continue
        meas = med[a] / med[b] if kind == "time" else mmed[a] / mmed[b]
        if kind == "time":
            p = pred[a] / pred[b]
            ok = "yes" if abs(meas / p - 1) <= 0.10 else "no"
            paired = statistics.median(x / y for x, y in zip(times[a], times[b]))
            lines.append(
                f"| {label} | {meas:.3f} | {paired:.3f} | {cmed[a] / cmed[b]:.3f} | {p:.3f} | {target} | {ok} |"
            )
        else:
            lines.append(f"| {label} | {meas:.3f} | - | - | - | {target} | - |")
    lines += ["", "Per-round wall times (`python bench/pool_rounds.py FILE...` pools paired ratios across runs):", ""]
    lines += ["```"] + [round_line(i, names, times) for i in range(len(times[names[0]]))] + ["```"]
    return "\n".join(lines) + "\n"


def round_line(i: int, names: list[str], times: dict[str, list[float]]) -> str:
    return f"round {i + 1}: " + ", ".join(f"{n} {times[n][i]:.2f}s" for n in names)


def completion_section(model, tok, args) -> str:
    """Tokens/s of the completion-only path: head at every position vs at labels only, fp32 vs bf16 autocast."""
    from midblock.data import collate, load_examples, tokenize_sft

    items = tokenize_sft(load_examples("arith", "train", limit=args.batch), tok, 512).items
    batch = collate(items, tok.pad_token_id if tok.pad_token_id is not None else 0)
    n_tok = int(batch["attention_mask"].sum())
    variants = [
        ("full logits, fp32", False, False),
        ("head at labels, fp32", True, False),
        ("full logits, bf16 autocast", False, True),
        ("head at labels, bf16 autocast", True, True),
    ]
    times: dict[str, list[float]] = {v[0]: [] for v in variants}
    losses = {}
    model.train()
    for rnd in range(args.completion_steps + 1):
        for name, hal, bf16 in variants:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = causal_lm_loss(model, batch, labelled_head=hal)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if rnd:
                times[name].append(time.perf_counter() - t0)
            losses[name] = float(loss.detach())
    lines = [
        f"## Completion-only path (midblock, arith batch of {args.batch}, {n_tok} tokens, forward+backward)",
        "",
        "| variant | s/step | tokens/s | loss |",
        "|---|---:|---:|---:|",
    ]
    for name, *_ in variants:
        t = statistics.median(times[name])
        lines.append(f"| {name} | {t:.3f} | {n_tok / t:.0f} | {losses[name]:.6f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
