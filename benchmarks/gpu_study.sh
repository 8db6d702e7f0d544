#!/usr/bin/env bash
# The GPU study (README "The GPU study"): the whole DAG of config/recipes/gpu_study.yaml on the
# machine's GPUs (its single-GPU jobs spread over them: stages/common/gpu_slots.py), then every
# model it made scored on a development split, never the presets: new renderings (corpus seed
# 4321) of sentences from the td_pool's partition of the large grammar, which no model trained
# on (OPD rolls out on the pool's own clips, whose sentences mostly differ): dev_zh and dev_en
# (the training mix's conditions) and dev_net (the net preset's speed, pitch and telephone
# codec); benchmarks/gpu_study_dev.sh builds it. Copies what a reader needs (report,
# per-utterance results, metrics, logs, job benchmarks, no audio or weights) to $RESULTS.
#
#   RESULTS=DIR benchmarks/gpu_study.sh [snakemake arguments]
#
# EXTRA_CONFIG: config files on top of the recipe (STUDY: their output_dir; end them before
# targets with an option such as --nolock). GPU_JOBS (default 8 per GPU): single-GPU jobs that
# run at once. DAG_LIMIT (s, default: none) stops the DAG early so the scoring and the copy
# still happen within a time limit (leave them ~90 s): run the script again to continue it
# (finished jobs stay, interrupted training resumes from its checkpoints). ARCHIVE=FILE.tgz
# also packs $RESULTS into one file.
set -uo pipefail
RESULTS=${RESULTS:-results/gpu_study_out}
PY=${PY:-python3}
GPUS=$($PY -c 'import torch; print(max(1, torch.cuda.device_count()))')
GPU_JOBS=${GPU_JOBS:-$((8 * GPUS))}
STUDY=${STUDY:-results/gpu_study}  # the recipe's output_dir
DEV=${DEV:-results/gpu_study_dev}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)  # the copy at the end runs from other folders
$PY -c 'import torch, transformers, snakemake
print("torch", torch.__version__, "transformers", transformers.__version__, "snakemake",
      snakemake.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' \
  | tee -a "$RESULTS/summary.txt"

DEV=$DEV PY=$PY benchmarks/gpu_study_dev.sh  # the development split, once

start=$(date +%s)
timeout "${DAG_LIMIT:-0}" $PY -m snakemake --workflow-profile workflow/profiles/default --scheduler greedy \
  --resources gpu="$GPU_JOBS" --configfile config/recipes/gpu_study.yaml ${EXTRA_CONFIG:-} "$@" \
  > "$RESULTS/snakemake.log" 2>&1
status=$?
echo "DAG exit $status after $(( $(date +%s) - start )) s" | tee -a "$RESULTS/summary.txt"
grep -E "^[0-9]+ of [0-9]+ steps" "$RESULTS/snakemake.log" | tail -n 1 | tee -a "$RESULTS/summary.txt"

# Every finished model on the development split, GPU_JOBS at a time (again when the model was
# rewritten after its last score).
for model in "$STUDY"/models/*/; do
  name=$(basename "$model")
  [ "$name" = tiny ] || [ ! -f "$model/config.json" ] && continue
  for dev in zh en net; do
    [ "$DEV/eval/$name/dev_$dev.summary.json" -nt "$model/config.json" ] || echo "$name $dev"
  done
done | DEV=$DEV STUDY=$STUDY PY=$PY xargs -r -P "$GPU_JOBS" -n 2 sh -c '
  benchmarks/score_dev.sh "$STUDY/models/$0" "$1" "$DEV/eval/$0"
' 2>&1 | tee -a "$RESULTS/summary.txt"
$PY - "$DEV/eval" <<'EOF' | tee -a "$RESULTS/summary.txt"
import json, sys
from pathlib import Path
devs = {"zh": "zh CER %", "en": "en WER %", "net": "net CER %"}
print(f"{'development split':32}", *(f"{title:>10} {'distinct':>9}" for title in devs.values()))
scored = Path(sys.argv[1])
for folder in sorted(scored.iterdir()) if scored.is_dir() else ():
    cells = []
    for dev in devs:
        summary, rows = folder / f"dev_{dev}.summary.json", folder / f"dev_{dev}.jsonl"
        if not summary.exists():
            cells += [f"{'-':>10}", f"{'-':>9}"]
            continue
        preds = [json.loads(line)["pred_text"] for line in rows.open()]
        cells += [f"{100 * json.loads(summary.read_text())['rate']:10.2f}",
                  f"{len(set(preds)):4d}/{len(preds):<4d}"]
    print(f"{folder.name:32} {' '.join(cells)}")
EOF

# What a reader needs, without audio, weights or checkpoints.
for tree in "$STUDY" "$DEV"; do
  (cd "$tree/.." && find "$(basename "$tree")" -type f \
    \( -path "*/report/*" -o -path "*/eval/*" -o -path "*/benchmarks/*" -o -path "*/logs/*" \
       -o -path "*/calibrate/*" -o -path "*/td/report.*" -o -name "metrics.jsonl" \
       -o -name "train_summary.json" -o -name "export_summary.json" -o -name "*.report.json" \
       -o -name "tiny_models.json" -o -name "corpus.json" \) \
    -not -path "*/checkpoints/*" -print0 | xargs -0 -r cp --parents -t "$RESULTS")
done
[ -z "${ARCHIVE:-}" ] || tar czf "$ARCHIVE" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
exit $status
