#!/usr/bin/env bash
# One model on one set of the GPU study's development split (benchmarks/gpu_study_dev.sh):
# dev_zh and dev_net in CER, dev_en in WER. Writes dev_<set>.jsonl, .summary.json and .log
# into OUT. Used by gpu_study.sh and window_attention_seeds.sh.
#
#   DEV=results/gpu_study_dev benchmarks/score_dev.sh MODEL zh|en|net OUT
set -uo pipefail
model=$1 dev=$2 out=$3
DEV=${DEV:-results/gpu_study_dev}
PY=${PY:-python3}
lang=$([ "$dev" = en ] && echo en || echo zh)
metric=$([ "$lang" = zh ] && echo cer || echo wer)
mkdir -p "$out"
$PY -m stages.evaluate --model "$model" --input "$DEV/data/dev_$dev.jsonl" \
  --output "$out/dev_$dev.jsonl" --summary "$out/dev_$dev.summary.json" --metric $metric \
  --normalizer $lang --batch-size 64 --max-new-tokens 48 --threads 2 > "$out/dev_$dev.log" 2>&1 \
  || { echo "dev evaluation of $model ($dev) failed (see $out/dev_$dev.log)" >&2; exit 1; }
