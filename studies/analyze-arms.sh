#!/bin/bash
# The layer-wise analysis of base against tuned for a finished study: `midblock analyze` on each arm's seed-0
# run of the main grid, on the arith test problems (the task the studies tune on; the same data for every
# model), into OUT/analysis-ARM (skipped when finished). Used by the studies' run.sh.
# Usage: analyze-arms.sh OUT BASE_MODEL   (MIDBLOCK, PYTHON: as in run.sh)
set -euo pipefail
OUT=$1
BASE=$2
MIDBLOCK=${MIDBLOCK:-.venv/bin/midblock}
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" - "$OUT" <<'PY' | while read -r arm run; do
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for c in json.loads((out / "compare.json").read_text())["table_cells"]:
    rec = json.loads((out / c["dir"] / "cell.json").read_text())
    if c["phase"] == "main" and rec["seed"] == 0:
        print(rec["label"], rec["run_dir"])
PY
  [ ! -f "$OUT/analysis-$arm/COMPLETED" ] || continue
  resume=()  # an analysis stopped part way (session.sh stop) continues from its cached accumulators
  [ ! -d "$OUT/analysis-$arm" ] || resume=(--resume)
  "$MIDBLOCK" analyze --base "$BASE" --variant "$run" --data arith --out "$OUT/analysis-$arm" "${resume[@]}"
done
