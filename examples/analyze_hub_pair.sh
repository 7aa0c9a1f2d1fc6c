#!/usr/bin/env bash
# bash examples/analyze_hub_pair.sh
#
# Where did supervised fine-tuning change OLMo-2-1B? Base vs its SFT, DPO and Instruct variants on GSM8K
# (question + gold solution, the paper's format), 200 samples, every layer, then metric correlations.
# Needs the four models from the hub (or local directories with the same names) and a GPU for speed.
set -euo pipefail
OUT=${OUT:-runs/olmo2-1b-analysis}
midblock analyze \
    --base allenai/OLMo-2-0425-1B \
    --variant allenai/OLMo-2-0425-1B-SFT \
    --variant allenai/OLMo-2-0425-1B-DPO \
    --variant allenai/OLMo-2-0425-1B-Instruct \
    --data gsm8k --samples 200 --max-length 512 --layers all \
    --device cuda --dtype bf16 --out "$OUT"
midblock correlate "$OUT" --out "$OUT/correlation"
# Train on the band the analysis recommends:
#   midblock train --model allenai/OLMo-2-0425-1B --task gsm8k --method midblock --band auto --analysis "$OUT" ...
