#!/bin/bash
# The change profiles of the instruct model (SmolLM2-135M-Instruct, the selection study) and the base model
# (Gemma-3-270m, this study) on one relative-depth axis: `midblock profiles` over the committed analyses of the
# arms both studies ran (every seed), labelled "instruct ARM" and "base ARM", into
# docs/results/gemma-base/instruct-vs-base/ (profiles.md, .json, .png). It reads the published exports only, so
# anyone can re-derive it from the repository; `session.sh publish gemma-base` runs it after the export.
# Usage: bash studies/gemma-base/instruct-vs-base.sh   (from the repository root; MIDBLOCK as in run.sh)
set -euo pipefail
MIDBLOCK=${MIDBLOCK:-.venv/bin/midblock}
R=docs/results
runs=()
for arm in uniform paper auto; do
    for model in instruct:selection-landscape base:gemma-base; do
        for csv in "$R/${model#*:}/analyses/analysis-$arm-s"[0-9]*.metrics.csv; do
            [ -f "$csv" ] || { echo "instruct-vs-base: no analyses of $arm in $R/${model#*:}/analyses" >&2; exit 2; }
            runs+=("${model%%:*} $arm=$csv")
        done
    done
done
"$MIDBLOCK" profiles "${runs[@]}" --out "$R/gemma-base/instruct-vs-base"
