#!/usr/bin/env bash
# Does packing Qwen3-ASR's audio windows into one attention call (models.packed_audio_windows,
# stages/models/window_attention.py) change what the GPU study's teacher learns? One GPU study
# run with it made a much worse teacher (benchmarks/results/h200/gpu_study_packed_attention.txt);
# this asks again with seeds: the study's teacher bootstrap (bootstrap.teacher of
# config/recipes/gpu_study.yaml) for each seed in SEEDS, once per attention path, all side by
# side on one GPU, then every teacher scored on the development split (dev_zh, dev_en, dev_net;
# always with the loop, so only training differs).
#
#   STUDY=results/gpu_study DEV=results/gpu_study_dev RESULTS=DIR \
#       benchmarks/window_attention_seeds.sh
#
# First builds what it needs when missing: the study's validated train split and tiny teacher
# (its DAG up to them, under $STUDY) and the development split (benchmarks/gpu_study_dev.sh).
# SEEDS (default "0 1 2"), STEPS (default: the recipe's), RECIPE (default
# config/recipes/gpu_study.yaml).
set -uo pipefail
STUDY=${STUDY:-results/gpu_study}
DEV=${DEV:-results/gpu_study_dev}
RESULTS=${RESULTS:-results/window_attention_seeds}
RECIPE=${RECIPE:-config/recipes/gpu_study.yaml}
SEEDS=${SEEDS:-"0 1 2"}
PY=${PY:-python3}
mkdir -p "$RESULTS"
if [ ! -f "$STUDY/data/train.jsonl" ] || [ ! -d "$STUDY/models/tiny/teacher_init" ]; then
  $PY -m snakemake --workflow-profile workflow/profiles/default --scheduler greedy \
    --configfile "$RECIPE" --config output_dir="$STUDY" -- "$STUDY/data/train.jsonl" \
    "$STUDY/models/tiny/teacher_init" > "$RESULTS/prepare.log" 2>&1 \
    || { echo "building the study's train split and tiny models failed (see $RESULTS/prepare.log)"; exit 1; }
fi
DEV=$DEV PY=$PY benchmarks/gpu_study_dev.sh || exit 1
# The recipe's bootstrap.teacher settings and the keys shared by both roles, as stage options.
options=$($PY - "$RECIPE" "${STEPS:-}" <<'PYEOF'
import sys
import yaml
bootstrap = yaml.safe_load(open(sys.argv[1]))["bootstrap"]
settings = {k: v for k, v in bootstrap.items() if not isinstance(v, dict)} | bootstrap["teacher"]
if sys.argv[2]:
    settings["max_steps"] = int(sys.argv[2])
print(" ".join(f"--{key.replace('_', '-')} {value}" for key, value in settings.items()))
PYEOF
) || exit 1
echo "bootstrap options: $options" | tee "$RESULTS/summary.txt"
for seed in $SEEDS; do
  for path in loop packed; do
    run=$RESULTS/$path@seed$seed
    flag=$([ "$path" = packed ] && echo --packed-audio-windows)
    rm -rf "$run"
    $PY -m stages.sft --model "$STUDY/models/tiny/teacher_init" --train "$STUDY/data/train.jsonl" \
      --output-dir "$run/train" --export-dir "$run/model" $options --seed "$seed" --threads 2 \
      $flag > "$run.log" 2>&1 || echo "$path seed $seed: training failed (see $run.log)" &
  done
done
wait
for seed in $SEEDS; do
  for path in loop packed; do
    for dev in zh en net; do
      run=$RESULTS/$path@seed$seed
      [ -f "$run/model/config.json" ] || continue
      DEV=$DEV PY=$PY benchmarks/score_dev.sh "$run/model" "$dev" "$run" &
    done
  done
  wait
done
$PY - "$RESULTS" $SEEDS <<'PYEOF' | tee -a "$RESULTS/summary.txt"
import json, statistics, sys
from pathlib import Path

results, seeds = Path(sys.argv[1]), sys.argv[2:]
devs = ("zh", "en", "net")
print(f"{'path':7} {'seed':>4} {'ms/step':>8} {'final loss':>10}", *(f"{'dev_' + d:>8}" for d in devs))
table = {}
for path in ("loop", "packed"):
    for seed in seeds:
        run = results / f"{path}@seed{seed}"
        try:
            rows = [json.loads(line) for line in (run / "train" / "metrics.jsonl").open()]
            rates = [100 * json.loads((run / f"dev_{d}.summary.json").read_text())["rate"]
                     for d in devs]
        except FileNotFoundError as err:
            print(f"{path:7} {seed:>4} missing: {err.filename}")
            continue
        steps = [r for r in rows if "time_step" in r]
        ms = 1000 * statistics.fmean(r["time_step"] for r in steps[len(steps) // 10:])
        loss = statistics.fmean(r["loss"] for r in steps[-25:])
        table.setdefault(path, []).append(rates)
        print(f"{path:7} {seed:>4} {ms:8.1f} {loss:10.4f}", *(f"{r:8.2f}" for r in rates))
for path, rows in table.items():
    means = [statistics.fmean(column) for column in zip(*rows)]
    print(f"{path:7} mean {'':19}", *(f"{m:8.2f}" for m in means))
PYEOF
