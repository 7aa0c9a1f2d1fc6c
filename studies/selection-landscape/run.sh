#!/bin/bash
# The second study, part 2 (issue #24): the paper's band against the layer-selection methods in use (LoRA:
# uniform, paper, auto, CKA-select; full parameters: the paper's band, Spectrum, LISA), each arm's learning
# rate from its own dev grid, 3 seeds, 400 `arith` test items, forgetting on the bundled probe.
# Resumable: rerun to continue. OUT: the compare directory; THREADS: torch threads (default 1).
# arms.yaml: the preset's arms less `paper-full`, dropped on the cost estimate (see README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/selection-landscape}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${THREADS:-1}
MIDBLOCK=${MIDBLOCK:-.venv/bin/midblock}
# precision fp32, not the preset's auto: sessions land on CPUs with and without native bf16, and auto would key
# a bf16 grid on some of them (fp32 is what auto chose on the CPU the estimate was made on: AVX2, no avx512_bf16)
# --save-every: each cell's training checkpoints every N steps (run control, in no key: finished cells are reused)
ARGS=(--preset selection-family --config studies/selection-landscape/arms.yaml --precision fp32 --save-every "${SAVE_EVERY:-10}")
# REUSE_ONLY=1: the rerun check of a finished study: compute nothing, rewrite the tables from the finished
# cells and analyses (exit 2 naming the first one that is not finished)
[ -z "${REUSE_ONLY:-}" ] || ARGS+=(--reuse-only)
# the committed estimate is the one the design quotes: measured again only where there is none
mkdir -p "$OUT"
[ -f "$OUT/cost_estimate.json" ] || [ ! -f studies/selection-landscape/cost_estimate.json ] || cp studies/selection-landscape/cost_estimate.json "$OUT/"
[ -f "$OUT/cost_estimate.json" ] || "$MIDBLOCK" compare "${ARGS[@]}" --out "$OUT" --estimate --no-progress
"$MIDBLOCK" compare "${ARGS[@]}" --out "$OUT" --no-progress
# the layer-wise analysis of base against tuned (every arm and seed), the instruct-model side of the
# base-model study's comparison (studies/gemma-base runs the same on Gemma-3-270m)
MIDBLOCK="$MIDBLOCK" PYTHON="${PYTHON:-.venv/bin/python}" bash studies/analyze-arms.sh "$OUT" smollm2-135m
