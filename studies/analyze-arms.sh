#!/bin/bash
# The layer-wise analysis of base against tuned for a finished study: `midblock analyze` on every run of the
# main grid (each arm, each seed), on the arith test problems (the task the studies tune on; the same data for
# every model), into OUT/analysis-ARM-sSEED (ARM as the cell directories spell it; skipped when finished,
# resumed when stopped part way), then `midblock profiles` over them into OUT/profiles: each arm's change
# profile by depth region, with an interval over its seeds. Used by the studies' run.sh.
# Usage: analyze-arms.sh OUT BASE_MODEL   (MIDBLOCK, PYTHON, REUSE_ONLY: as in run.sh)
set -euo pipefail
OUT=$1
BASE=$2
MIDBLOCK=${MIDBLOCK:-.venv/bin/midblock}
PYTHON=${PYTHON:-.venv/bin/python}
runs=()
while read -r arm slug seed run; do
  dir="$OUT/analysis-$slug-s$seed"
  runs+=("$arm=$dir")
  [ ! -f "$dir/COMPLETED" ] || continue
  if [ -n "${REUSE_ONLY:-}" ]; then echo "analyze-arms: --reuse-only: $dir is not finished" >&2; exit 2; fi
  resume=()  # an analysis stopped part way (session.sh stop) continues from its cached accumulators
  [ ! -d "$dir" ] || resume=(--resume)
  "$MIDBLOCK" analyze --base "$BASE" --variant "$run" --data arith --out "$dir" "${resume[@]}"
done < <("$PYTHON" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for c in json.loads((out / "compare.json").read_text())["table_cells"]:
    rec = json.loads((out / c["dir"] / "cell.json").read_text())
    if c["phase"] == "main":  # labels hold ':' and '/': the cell directory (SLUG__sSEED-KEY) names it safely
        cell = (out / c["dir"]).parent
        slug = cell.name.rsplit("__s", 1)[0]
        # the training run beside the evaluation, not the cell's recorded run_dir: a cell trained by a second
        # lane (or restored from state/ on another disk) records where it trained, not where it lies now
        print(rec["label"], slug, rec["seed"], cell / "train")
PY
)
"$MIDBLOCK" profiles "${runs[@]}" --out "$OUT/profiles"
