#!/bin/bash
# One working session of the long studies (see README.md).
#
#   bash studies/session.sh start [LANE ...]    restore each study's saved state into runs/STUDY and run the
#                                              lanes in the background, each at THREADS torch threads (default
#                                              1; 2 for a study alone on the machine); a lane is
#                                              STUDY or STUDY+STUDY+... (run in turn: the next starts when one
#                                              finishes); STUDY@GRID runs the study's run.sh on its GRID.yaml (a
#                                              second lane of some of its cells) into runs/STUDY-GRID. Default:
#                                              the first unpublished study here (order below) in one lane, the
#                                              other unpublished ones in turn in a second. Logs: runs/NAME.log
#   bash studies/session.sh save                save the finished cells of every study under runs/ into
#                                              studies/STUDY/state, with the LoRA adapters of the cells its
#                                              table reports (commit them before the session ends)
#   bash studies/session.sh status              what each study has finished (arm, rate, seed, score, perplexity)
#                                              and is training now
#   bash studies/session.sh stop                stop the running studies with a checkpoint (SIGTERM) before the
#                                              session ends: a later `start` on the same runs/ resumes the
#                                              cell in progress from it (state/ holds finished cells only)
#   bash studies/session.sh publish STUDY       a finished study: the rerun check (its run.sh with REUSE_ONLY=1
#                                              computes nothing and writes byte-identical tables), then its
#                                              export into docs/results/STUDY (part 1 adds its one-seed replays,
#                                              which need part 2 published first for the controlled contrast);
#                                              the other studies may go on running beside it
#
# Two studies at one thread each get through more work than one at two threads on a 2-core machine (README.md).
# The code a study imports is read as it runs: edit the package in another checkout while studies run, or
# run them from a frozen one (RUN_FROM=/path/to/worktree; its studies/ and runs/ are used). MIDBLOCK and
# PYTHON name the commands (default: .venv/bin/ of the checkout this script is in). Each cell's training is
# also checkpointed every SAVE_EVERY steps (default 10; run.sh), so a hard stop loses at most that many.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "${RUN_FROM:-$HERE}" && pwd -P)
MIDBLOCK=${MIDBLOCK:-$HERE/.venv/bin/midblock}
PYTHON=${PYTHON:-$HERE/.venv/bin/python}
ORDER=(paper-protocol-replay selection-landscape gemma-base)
cd "$ROOT"

# the studies' commands running in this tree (their working directory is ROOT): other trees' are left alone;
# with STUDY, only the ones that read or write runs/STUDY (compare --out runs/STUDY, analyze --variant runs/STUDY/...)
study_pids() {
    local p
    for p in $(pgrep -f "midblock (compare|analyze) " || true); do  # analyze: analyze-arms.sh, a study's last step
        [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$ROOT" ] || continue
        [ -z "${1:-}" ] || tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qE -- "runs/$1(-[^/ ]+)?[/ ]" || continue
        echo "$p"
    done
}

present() { for s in "${ORDER[@]}"; do [ -f "studies/$s/run.sh" ] && echo "$s"; done; }
# the compare directories of the studies here: runs/STUDY and its second lanes runs/STUDY-GRID (with cells)
runs_dirs() {
    local s d
    for s in $(present); do
        for d in "runs/$s" "runs/$s"-*; do [ -d "$d/cells" ] && echo "$d"; done
    done
    return 0
}
study_of() { local s; for s in $(present); do case "$1" in "runs/$s" | "runs/$s"-*) echo "$s"; return;; esac; done; }
# the studies `start` runs by default: a published one (docs/results/STUDY holds its export) is not started again
# (its analyses would need the trained weights, which only runs/ of the machine that trained it holds)
unpublished() { for s in $(present); do [ -f "$HERE/docs/results/$s/compare.json" ] || echo "$s"; done; }

case "${1:-}" in
start)
    shift
    lanes=("$@")
    if [ ${#lanes[@]} -eq 0 ]; then  # the first study alone, the others one after another beside it
        mapfile -t found < <(unpublished)
        [ ${#found[@]} -gt 0 ] || { echo "session: every study here is published; nothing to start" >&2; exit 2; }
        lanes=("${found[0]}")
        [ ${#found[@]} -lt 2 ] || lanes+=("$(IFS=+; echo "${found[*]:1}")")
    fi
    if [ -z "${FORCE:-}" ] && pgrep -f "midblock compare" >/dev/null; then
        echo "session: a compare is already running (pgrep -af 'midblock compare'); stop it first, or FORCE=1" >&2
        exit 2
    fi
    for lane in "${lanes[@]}"; do
        for s in ${lane//+/ }; do
            [ -f "studies/${s%@*}/run.sh" ] || { echo "session: no study '${s%@*}' (studies: $(present | tr '\n' ' '))" >&2; exit 2; }
            [ "$s" = "${s%@*}" ] || [ -f "studies/${s%@*}/${s#*@}.yaml" ] || { echo "session: no grid studies/${s%@*}/${s#*@}.yaml" >&2; exit 2; }
        done
    done
    free -g 2>/dev/null | sed -n 1,2p || true  # memory first: part 1 alone holds about 9.5 GB
    for lane in "${lanes[@]}"; do
        for s in ${lane//+/ }; do  # a second lane gets its study's state too: it skips what is finished
            mkdir -p "runs/${s/@/-}"
            # from this checkout, where `save` writes it (a frozen tree's copy is as old as its commit)
            [ ! -d "$HERE/studies/${s%@*}/state" ] || cp -r "$HERE/studies/${s%@*}/state/." "runs/${s/@/-}/"
        done
        # a lane runs its studies in turn; a stopped or failed study (exit != 0) ends the lane, the next
        # study never starts on an unfinished one
        LANE="${lane//+/ }" THREADS="${THREADS:-1}" MIDBLOCK="$MIDBLOCK" PYTHON="$PYTHON" PYTHONPATH="$ROOT" setsid nohup bash -c '
            for s in $LANE; do
                name=${s/@/-} grid=
                [ "$s" = "${s%@*}" ] || grid="studies/${s%@*}/${s#*@}.yaml"
                echo "session: $s starts $(date -u +%FT%TZ)" >>"runs/$name.log"
                OUT="runs/$name" GRID=$grid bash "studies/${s%@*}/run.sh" >>"runs/$name.log" 2>&1 || exit
            done' >/dev/null 2>&1 &
        named=${lane//@/-}
        echo "started ${lane//+/, then } at ${THREADS:-1} thread(s) (pid $!): runs/${named//+/, runs/}, logs beside them (.log)"
    done
    ;;
save)
    for d in $(runs_dirs); do
        s=$(study_of "$d")
        # --adapters: the reported cells' LoRA adapters too, which the analyses after the grid load (a new
        # disk in the next session would otherwise mean training those cells again)
        "$MIDBLOCK" export --mode state --from "$d" --dest "$HERE/studies/$s/state" --adapters
    done
    ;;
stop)
    pids=$(study_pids)
    [ -n "$pids" ] || { echo "session: no study of $ROOT is running"; exit 0; }
    # the training loop checkpoints after the step in progress and compare exits; a decode or an analysis
    # stops at once and resumes from its per-item file. The signal goes to each study's whole process group
    # (its lane and run.sh too, started with setsid), so no later step or study starts after the stop.
    # A study started some other way may share this shell's group: that one gets the signal to itself only.
    self=$(ps -o pgid= -p $$ | tr -d ' ')
    for p in $pids; do
        g=$(ps -o pgid= -p "$p" | tr -d ' ')
        if [ -n "$g" ] && [ "$g" != "$self" ]; then kill -TERM -- "-$g" 2>/dev/null || true; else kill -TERM "$p" 2>/dev/null || true; fi
    done
    for _ in $(seq 1 600); do [ -n "$(study_pids)" ] || break; sleep 1; done
    if [ -n "$(study_pids)" ]; then echo "session: still running after 10 min: $(study_pids)" >&2; exit 1; fi
    echo "stopped: $(echo $pids | wc -w) process(es)"
    ;;
publish)
    s=${2:-}
    [ -f "studies/$s/run.sh" ] || { echo "session: no study '$s' (studies: $(present | tr '\n' ' '))" >&2; exit 2; }
    # another study may go on beside the publish (it never touches runs/STUDY); this one must be stopped
    [ -z "$(study_pids "$s")" ] || { echo "session: $s is running in $ROOT; stop it first" >&2; exit 2; }
    out=runs/$s
    dest=$HERE/docs/results/$s
    if [ "$s" != selection-landscape ] && [ ! -f "$HERE/docs/results/selection-landscape/compare.json" ]; then
        echo "session: publish selection-landscape first ($s is set against its export)" >&2
        exit 2
    fi
    # 1. the rerun check: the same commands on the finished directory compute nothing, write the same tables
    keep=$(mktemp -d)
    tables=(compare.md compare.csv lr_search.md profiles/profiles.md)
    for t in "${tables[@]}"; do [ ! -f "$out/$t" ] || cp "$out/$t" "$keep/${t//\//_}"; done
    if ! OUT="$out" THREADS=2 REUSE_ONLY=1 MIDBLOCK="$MIDBLOCK" PYTHON="$PYTHON" PYTHONPATH="$ROOT" \
        bash "studies/$s/run.sh" >"$keep/rerun.log" 2>&1; then
        tail -3 "$keep/rerun.log" >&2
        echo "session: the rerun check failed ($keep/rerun.log): $s is not finished" >&2
        exit 1
    fi
    for t in "${tables[@]}"; do
        [ ! -f "$keep/${t//\//_}" ] || cmp "$keep/${t//\//_}" "$out/$t" || { echo "session: $t changed" >&2; exit 1; }
    done
    echo "rerun check: nothing recomputed; $(ls "$keep" | grep -vc rerun.log) tables byte-identical ($keep/rerun.log)"
    # 2. the raw per-item and per-text results, tables, figures, analyses and profiles
    "$MIDBLOCK" export --from "$out" --dest "$dest"
    if [ "$s" = paper-protocol-replay ]; then  # 3. the one-seed replays beside the controlled contrast
        "$MIDBLOCK" export --mode replay --dest "$dest" --arm mid-seg2-4 --reported 0.102 \
            --controlled "$HERE/docs/results/selection-landscape,paper,uniform"
        "$MIDBLOCK" export --mode across --dest "$dest" --arm mid-seg2-4 \
            --other "$HERE/docs/results/selection-landscape,paper,uniform"
    elif [ "$s" = gemma-base ]; then  # 3. the bands' differences and profiles on the base model beside the instruct's
        "$MIDBLOCK" export --mode across --dest "$dest" --other "$HERE/docs/results/selection-landscape"
        (cd "$HERE" && MIDBLOCK="$MIDBLOCK" bash studies/gemma-base/instruct-vs-base.sh)
    fi
    echo "published: $dest (commit it; then quote its numbers in docs/results.md)"
    ;;
status)
    for s in $(present); do [ -d "runs/$s/cells" ] || echo "$s: not started here"; done
    for d in $(runs_dirs); do
        echo "${d#runs/}: $(find -L "$d/cells" -name cell.json | wc -l) evaluated cells"
        "$PYTHON" - "$d" <<'PY'
import json, pathlib, sys
rows = []
for f in pathlib.Path(sys.argv[1]).glob("cells/*/eval-*/cell.json"):
    d = json.loads(f.read_text())
    e, ppl = d.get("eval") or {}, (d.get("ppl") or {}).get("ppl")
    p = e.get("primary")
    s = (e.get("scores") or {}).get(p[0] if isinstance(p, list) else p) or {}
    rows.append((d["label"], d.get("lr") or 0, d.get("seed") or 0, e.get("n"), s.get("correct"), ppl))
for label, lr, seed, n, k, ppl in sorted(rows, key=lambda r: (r[0] != "base", r[0], r[1], r[2])):
    acc = f"{100 * k / n:5.1f}%" if n else "     -"
    print(f"  {label:<22} lr {lr:<8g} seed {seed:<2} {k}/{n} = {acc}  ppl {ppl and round(ppl, 1)}")
PY
        for log in $(find -L "$d/cells" -path '*/train/train_log.jsonl'); do
            run=$(dirname "$log")
            [ -f "$run/COMPLETED" ] || echo "  unfinished: $(basename "$(dirname "$run")"), step $(wc -l <"$log")"
        done
        # where the grid stands: compare logs each search run and each cell as its number of the planned ones
        at=$(grep -oE "(learning-rate search [0-9]+/[0-9]+\+?|cell [0-9]+/[0-9]+): [^ ]+( at lr [^ ]+)?" \
            "$d.log" 2>/dev/null | tail -1 || true)  # none yet (or no log): pipefail would end the status here
        [ -z "$at" ] || echo "  last started: $at"
    done
    ;;
*)
    sed -n 2,23p "$0" >&2
    exit 2
    ;;
esac
