#!/usr/bin/env bash
# The first-GPU check: one script, nothing downloaded, under 10 minutes on one GPU.
#
#   bash bench/gpu_check.sh               # on a CUDA machine: random:olmo2-1b shapes in bf16
#   bash bench/gpu_check.sh --cpu-smoke   # the same code on random:llama-tiny on the CPU (seconds), to check the script
#
# Prints, from one process with the configurations interleaved (medians of timed steps after a warm-up):
#   1. midblock's own loop: step time and peak memory of band / all-block LoRA, with and without checkpointing;
#   2. TRL SFTTrainer: PEFT LoRA r8 on every block vs midblock's prepared model + MidBlockCallback, checkpointing on;
#   3. the truncated-backward check with checkpointing on the device: backward hooks on every block during
#      Trainer and SFTTrainer steps; PASS when only the band and the blocks above it get a backward call.
# Exit status 1 when a truncated-backward check fails. Without a CUDA device (and without --cpu-smoke) it says so
# and exits 0. Output: stdout, and bench/results/gpu_check.txt when run on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODE=gpu
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    MODE=cpu-smoke
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here; nothing measured (use --cpu-smoke to exercise the script on a CPU)"
    exit 0
fi
OUT=/dev/null
[[ $MODE == gpu ]] && OUT=bench/results/gpu_check.txt
{ echo "# bash bench/gpu_check.sh ($MODE), $(date -u '+%Y-%m-%d %H:%M UTC')"; uptime || true
  "$PY" bench/machine.py | head -n 1 || true  # the CPU capability (native bf16 or not) next to the timings
  [[ $MODE == gpu ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
} | tee "$OUT"
timeout 570 "$PY" - "$MODE" <<'PY' 2>&1 | grep -v -E "Warning|warnings.warn|examples/s]|^\s*$" | tee -a "$OUT"
import copy
import statistics
import sys
import time

import torch

from midblock import MidBlockCallback, MidBlockConfig, load_model, prepare_model
from midblock.models.introspect import get_layout
from midblock.tuning.loss import causal_lm_loss
from midblock.tuning.prepare import check_truncated_backward

MODE = sys.argv[1]
GPU = MODE == "gpu"
SPEC, DTYPE, DEV = ("random:olmo2-1b", torch.bfloat16, "cuda") if GPU else ("random:llama-tiny", torch.float32, "cpu")
BATCH, SEQ, STEPS, ROUNDS = (8, 512, 5, 3) if GPU else (2, 64, 1, 1)
BAND = "seg2-4/5"  # the paper's band (midblock.layers.PAPER_BAND)
torch.manual_seed(0)


def sync():
    if GPU:
        torch.cuda.synchronize()


def peak_reset():
    if GPU:
        torch.cuda.reset_peak_memory_stats()


def peak():
    return torch.cuda.max_memory_allocated() if GPU else 0


base, tok = load_model(SPEC, dtype=DTYPE, device=DEV)
L = get_layout(base).num_layers
print(f"model {SPEC} ({L} blocks, {sum(p.numel() for p in base.parameters()) / 1e9:.2f}B params), {DTYPE}, {DEV}, "
      f"batch {BATCH} x {SEQ}, band {BAND}")
ids = torch.randint(0, 256, (BATCH, SEQ), device=DEV)
labels = ids.clone()
labels[:, : SEQ // 2] = -100  # completion-only: the second half carries labels
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

# ---------------------------------------------------------------- 1. midblock's own loop
arms = {
    "lora": MidBlockConfig(method="lora", rank=8),
    "band": MidBlockConfig(method="midblock", band=BAND, budget_baseline_rank=8),
    "lora+ckpt": MidBlockConfig(method="lora", rank=8, gradient_checkpointing=True),
    "band+ckpt": MidBlockConfig(method="midblock", band=BAND, budget_baseline_rank=8, gradient_checkpointing=True),
}
models, opts = {}, {}
for name, cfg in arms.items():
    m = prepare_model(copy.deepcopy(base), cfg)
    m.train()
    models[name] = m
    opts[name] = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
times = {n: [] for n in arms}
mems = {n: [] for n in arms}


def own_step(name):
    m, opt = models[name], opts[name]
    sync()
    peak_reset()
    t = time.perf_counter()
    loss, _ = causal_lm_loss(m, batch, labelled_head=True)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t, peak()


for n in arms:  # warm-up: optimizer states, kernels, the allocator's pools
    own_step(n)
for _ in range(ROUNDS):
    for n in arms:
        for _ in range(STEPS):
            dt, mem = own_step(n)
            times[n].append(dt)
            mems[n].append(mem)
med = {n: statistics.median(v) for n, v in times.items()}
mem = {n: max(v) for n, v in mems.items()}
print("\n1. midblock's own loop (s/step median, peak allocated GiB)")
for n in arms:
    print(f"  {n:10s} {med[n]:8.4f} s  {mem[n] / 2**30:7.2f} GiB")
for a, b in (("band", "lora"), ("band+ckpt", "lora+ckpt")):
    mr = f"{mem[a] / mem[b]:.3f}" if mem[b] else "n/a"
    print(f"  {a} / {b}: time {med[a] / med[b]:.3f}, memory {mr}")
del models, opts

# ---------------------------------------------------------------- 2 + 3. the trainers, checkpointing on
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

rows = []
g = torch.Generator().manual_seed(0)
for _ in range(BATCH * (STEPS + 1)):
    chars = torch.randint(97, 123, (SEQ,), generator=g).tolist()  # lowercase letters: one byte token each
    text = "".join(map(chr, chars))
    rows.append({"prompt": text[: SEQ // 2], "completion": text[SEQ // 2 : SEQ - 2]})


class Probe(TrainerCallback):
    """Step times, and the blocks whose output gets a gradient (tensor hooks on every block's output)."""

    def __init__(self, model):
        self.marks, self.visited = [], set()
        for i, blk in enumerate(get_layout(model).blocks):

            def fwd(_m, _i, out, i=i):
                h = out[0] if isinstance(out, tuple) else out
                if h.requires_grad:
                    h.register_hook(lambda grad, i=i: self.visited.add(i))

            blk.register_forward_hook(fwd)

    def on_step_begin(self, *a, **k):
        sync()
        if not self.marks:
            self.marks.append(time.perf_counter())
            peak_reset()

    def on_step_end(self, *a, **k):
        sync()
        self.marks.append(time.perf_counter())

    def step_s(self):
        d = [b - a for a, b in zip(self.marks, self.marks[1:])]
        return statistics.median(d[1:] if len(d) > 1 else d)


def common(out):
    return dict(output_dir=out, per_device_train_batch_size=BATCH, learning_rate=1e-4, max_steps=STEPS + 1,
                gradient_checkpointing=True, bf16=GPU, save_strategy="no", report_to="none", disable_tqdm=True,
                use_cpu=not GPU)


failed = []


def check(label, probe, first):
    want = set(range(first, L))
    ok = probe.visited == want
    print(f"  truncated backward, {label}, checkpointing on {DEV}: {'PASS' if ok else 'FAIL'} "
          f"(blocks with a backward call: {sorted(probe.visited)}; expected {first}..{L - 1})")
    if not ok:
        failed.append(label)


res = {}
try:
    from trl import SFTConfig, SFTTrainer
except ImportError:
    SFTTrainer = None
    print("\n2. TRL is not installed: the SFTTrainer comparison is skipped (pip install 'midblock[trl]')")
if SFTTrainer is not None:
    print("\n2. TRL SFTTrainer, checkpointing on (s/step median, peak allocated GiB)")
    for name in ("trl-lora", "trl-midblock"):
        m = copy.deepcopy(base)
        kw = {}
        if name == "trl-lora":
            kw["peft_config"] = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        else:
            m = prepare_model(m, MidBlockConfig(method="midblock", band=BAND, budget_baseline_rank=8))
            kw["callbacks"] = [MidBlockCallback()]
        tr = SFTTrainer(model=m, args=SFTConfig(**common(f"/tmp/gpu_check/{name}"), max_length=SEQ),
                        train_dataset=Dataset.from_list(rows), processing_class=tok, **kw)
        probe = Probe(tr.model)
        tr.add_callback(probe)
        tr.train()
        res[name] = (probe.step_s(), peak())
        print(f"  {name:13s} {res[name][0]:8.4f} s  {res[name][1] / 2**30:7.2f} GiB")
        if name == "trl-midblock":
            check("SFTTrainer", probe, check_truncated_backward(tr.model)["first_trainable_block"])
        del tr, m
    (ta, ma), (tb, mb) = res["trl-midblock"], res["trl-lora"]
    print(f"  trl-midblock / trl-lora: time {ta / tb:.3f}, memory {(ma / mb) if mb else float('nan'):.3f}")

print("\n3. transformers Trainer with the prepared model, checkpointing on")
from midblock.data import collate  # noqa: E402

m = prepare_model(copy.deepcopy(base), MidBlockConfig(method="midblock", band=BAND, budget_baseline_rank=8))
items = [{"input_ids": ids[i % BATCH].tolist(), "labels": labels[i % BATCH].tolist()} for i in range(BATCH * 2)]
tr = Trainer(model=m, args=TrainingArguments(**common("/tmp/gpu_check/trainer"), remove_unused_columns=False),
             train_dataset=items, data_collator=lambda b: collate(b, tok.pad_token_id), callbacks=[MidBlockCallback()])
probe = Probe(m)
tr.add_callback(probe)
tr.train()
check("Trainer", probe, check_truncated_backward(m)["first_trainable_block"])
print(f"  Trainer step {probe.step_s():.4f} s, peak {peak() / 2**30:.2f} GiB")
print("\nRESULT", "FAIL: " + ", ".join(failed) if failed else "all truncated-backward checks PASS")
sys.exit(1 if failed else 0)
PY
