#!/bin/bash
# The second study, part 1 (issue #24): the paper's training protocol replayed at our scale, 10 training
# seeds, every seed scored on the same 400 `arith` test items. Resumable: rerun to continue.
# OUT: the compare directory (default runs/paper-protocol-replay); THREADS: torch threads (default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/paper-protocol-replay}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${THREADS:-1}
MIDBLOCK=${MIDBLOCK:-.venv/bin/midblock}
ARGS=(--preset paper-protocol --task arith --eval-task arith --eval-items 400 --seeds 0,1,2,3,4,5,6,7,8,9)
[ -f "$OUT/cost_estimate.json" ] || "$MIDBLOCK" compare "${ARGS[@]}" --out "$OUT" --estimate --no-progress
exec "$MIDBLOCK" compare "${ARGS[@]}" --out "$OUT" --no-progress
