#!/bin/bash
# The second study, part 1 (issue #24): the paper's training protocol replayed at our scale, 10 training
# seeds, every seed scored on the same 400 `arith` test items. Resumable: rerun to continue.
# OUT: the compare directory (default runs/paper-protocol-replay); THREADS: torch threads (default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/paper-protocol-replay}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${THREADS:-1}
MIDBLOCK=${MIDBLOCK:-.venv/bin/midblock}
PYTHON=${PYTHON:-.venv/bin/python}
# precision fp32, not auto: sessions land on CPUs with and without native bf16, and auto would resolve to bf16 on
# some of them, which keys a different grid (the study started in fp32, on AVX2 without avx512_bf16)
# --save-every: each cell's training checkpoints every N steps (run control, in no key: finished cells are reused)
ARGS=(--preset paper-protocol --task arith --eval-task arith --eval-items 400 --precision fp32 --save-every "${SAVE_EVERY:-10}")
# REUSE_ONLY=1: the rerun check of a finished study: compute nothing, rewrite the tables from the finished
# cells and analyses (exit 2 naming the first one that is not finished)
[ -z "${REUSE_ONLY:-}" ] || ARGS+=(--reuse-only)
# 1. the one shared learning rate: chosen for uniform LoRA on 200 dev problems (seed 0), see search.yaml
# the committed estimate is the one the design quotes (this study never measures again: compare prints it)
mkdir -p "$OUT"
[ -f "$OUT/cost_estimate.json" ] || cp studies/paper-protocol-replay/cost_estimate.json "$OUT/"
"$MIDBLOCK" compare "${ARGS[@]}" --config studies/paper-protocol-replay/search.yaml --out "$OUT" --no-progress
[ -d "$OUT.search" ] || "$MIDBLOCK" export --from "$OUT" --dest "$OUT.search"
LR=$("$PYTHON" -c 'import json,sys; print(next(r["lr"] for r in json.load(open(sys.argv[1]))["lr_search"] if r["chosen"]))' \
  "$OUT.search/compare.json")
echo "shared learning rate: $LR"
# 2. both arms at that rate, 10 seeds (the search's seed-0 run at the chosen rate is reused, not retrained)
exec "$MIDBLOCK" compare "${ARGS[@]}" --lr "$LR" --seeds 0,1,2,3,4,5,6,7,8,9 --out "$OUT" --no-progress
