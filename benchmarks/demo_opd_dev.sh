#!/usr/bin/env bash
# OPD settings for the CPU demo, chosen on development splits in each preset's conditions
# (README "The demo, measured"), never on the presets. Builds dev_<preset> once: N renderings
# per preset at corpus seed 4321 of td_pool-partition sentences (synth_demo's dev_<preset>
# splits; OPD rolls out on the td_pool's own clips, whose sentences these share, which favours
# OPD somewhat). Scores a finished demo run's models on them, then trains OPD from the demo's
# student base for every variant given, replaying opd_base@seed0's settings with the variant's
# KEY=VALUE replacements (benchmarks/replay_options.py), and scores each.
#
#   benchmarks/demo_opd_dev.sh [NAME:KEY=VALUE,KEY=VALUE ...]
#   benchmarks/demo_opd_dev.sh lr2e-4:lr=0.0002 steps100:max_steps=100
#
# DEMO (default results): the finished demo run. RESULTS (default DEMO/opd_dev): where this
# writes; a model already there is not trained again. N (default 100): clips per preset.
# THREADS (2), PY (.venv/bin/python). Prints one row per model: error rate per dev split (zh
# presets in CER, en in WER) and their mean.
set -euo pipefail
DEMO=${DEMO:-results}
RESULTS=${RESULTS:-$DEMO/opd_dev}
N=${N:-100}
THREADS=${THREADS:-2}
PY=${PY:-.venv/bin/python}
PRESETS=(aishell meeting net clean other)
DEV=$RESULTS/dev
mkdir -p "$DEV/data" "$RESULTS/models" "$RESULTS/eval"

if [ ! -f "$DEV/data/dev_other.jsonl" ]; then
  sizes=(train=0 td_pool=0)
  for p in "${PRESETS[@]}"; do sizes+=("$p=0" "dev_$p=$N"); done
  $PY -m stages.synth_demo --output-dir "$DEV/corpus" --seed 4321 --grammar small \
    --train-languages zh en --workers "$THREADS" --progress off --sizes "${sizes[@]}" \
    > "$DEV/synth.log" 2>&1 || { echo "synthesis failed (see $DEV/synth.log)" >&2; exit 1; }
  for p in "${PRESETS[@]}"; do
    $PY -m stages.validate --input "$DEV/corpus/manifests/dev_$p.jsonl" \
      --output "$DEV/data/dev_$p.jsonl" --report "$DEV/data/dev_$p.report.json" \
      --on-error fail --min-seconds 0.2 --max-seconds 30 --require-text --workers 2 \
      >> "$DEV/synth.log" 2>&1 || { echo "validating dev_$p failed (see $DEV/synth.log)" >&2; exit 1; }
  done
fi

score() {  # score NAME MODEL_DIR: every dev split, once per model
  local name=$1 model=$2 p lang
  for p in "${PRESETS[@]}"; do
    lang=$(case $p in clean|other) echo en ;; *) echo zh ;; esac)
    [ -f "$RESULTS/eval/$name/dev_$p.summary.json" ] && continue
    mkdir -p "$RESULTS/eval/$name"
    $PY -m stages.evaluate --model "$model" --input "$DEV/data/dev_$p.jsonl" \
      --output "$RESULTS/eval/$name/dev_$p.jsonl" --summary "$RESULTS/eval/$name/dev_$p.summary.json" \
      --metric "$([ "$lang" = zh ] && echo cer || echo wer)" --normalizer "$lang" \
      --batch-size 16 --max-new-tokens 32 --threads "$THREADS" --device cpu \
      > "$RESULTS/eval/$name/dev_$p.log" 2>&1 \
      || { echo "evaluating $name on dev_$p failed (see its log)" >&2; exit 1; }
  done
}

for model in student_base teacher opd_base@seed0 opd_td_adapted@seed0; do
  [ -d "$DEMO/models/$model" ] && score "$model" "$DEMO/models/$model"
done
summary=$DEMO/train/opd_base@seed0/train_summary.json
for variant in "$@"; do
  [[ $variant =~ ^[A-Za-z0-9_.-]+:[a-z_]+=[^,]+(,[a-z_]+=[^,]+)*$ ]] \
    || { echo "variant '$variant': expected NAME:KEY=VALUE[,KEY=VALUE...]" >&2; exit 2; }
  name=${variant%%:*} replacements=${variant#*:}
  if [ ! -f "$RESULTS/models/$name/config.json" ]; then
    replayed=$($PY -m benchmarks.replay_options "$summary" ${replacements//,/ })
    mapfile -t options <<< "$replayed"
    echo "== $name: ${options[*]}"
    $PY -m stages.train_opd "${options[@]}" --output-dir "$RESULTS/train/$name" \
      --export-dir "$RESULTS/models/$name" --device cpu --threads "$THREADS" \
      --stale-checkpoints set-aside > "$RESULTS/$name.train.log" 2>&1 \
      || { echo "OPD $name failed (see $RESULTS/$name.train.log)" >&2; exit 1; }
  fi
  score "$name" "$RESULTS/models/$name"
done

$PY - "$RESULTS/eval" "${PRESETS[@]}" <<'PYEOF'
import json, sys
from pathlib import Path
root, presets = Path(sys.argv[1]), sys.argv[2:]
print(f"{'model':24}", *(f"{'dev_' + p:>12}" for p in presets), f"{'mean':>8}")
for folder in sorted(root.iterdir()):
    rates = [json.loads((folder / f"dev_{p}.summary.json").read_text())["rate"] * 100
             if (folder / f"dev_{p}.summary.json").exists() else None for p in presets]
    cells = [f"{r:12.2f}" if r is not None else f"{'-':>12}" for r in rates]
    mean = f"{sum(rates) / len(rates):8.2f}" if None not in rates else f"{'-':>8}"
    print(f"{folder.name:24}", *cells, mean)
PYEOF
