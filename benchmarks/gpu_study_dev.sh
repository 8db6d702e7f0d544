#!/usr/bin/env bash
# The GPU study's development split (README "The GPU study"), built once into $DEV/data:
# renderings at corpus seed 4321 of sentences from the td_pool's partition of the large grammar,
# never an evaluation sentence. dev_zh and dev_en are the td_pool split's rows of one language
# (the training mix's conditions; the same renderings at every run), dev_net 300 zh clips in the
# net preset's conditions (synth_demo's dev_net split). Used by gpu_study.sh and
# window_attention_seeds.sh.
#
#   DEV=results/gpu_study_dev benchmarks/gpu_study_dev.sh
set -uo pipefail
DEV=${DEV:-results/gpu_study_dev}
PY=${PY:-python3}
[ -f "$DEV/data/dev_net.jsonl" ] && exit 0
mkdir -p "$DEV"
log="$DEV/dev_synth.log"
$PY -m stages.synth_demo --output-dir "$DEV/corpus" --seed 4321 --grammar large \
  --train-languages zh en --workers 4 --no-progress \
  --sizes train=0 td_pool=600 aishell=0 meeting=0 net=0 clean=0 other=0 dev_net=300 \
  > "$log" 2>&1 || { echo "dev split: synthesis failed (see $log)" >&2; exit 1; }
for lang in zh en; do
  $PY - "$DEV/corpus/manifests/td_pool.jsonl" "$DEV/corpus/manifests/dev_$lang.jsonl" "$lang" <<'PYEOF'
import json, sys
with open(sys.argv[1]) as rows, open(sys.argv[2], "w") as out:
    out.writelines(line for line in rows if json.loads(line)["language"] == sys.argv[3])
PYEOF
done
for name in zh en net; do
  $PY -m stages.validate --input "$DEV/corpus/manifests/dev_$name.jsonl" \
    --output "$DEV/data/dev_$name.jsonl" --report "$DEV/data/dev_$name.report.json" \
    --min-seconds 0.2 --max-seconds 30 --require-text --workers 2 >> "$log" 2>&1 \
    || { echo "dev split: validating dev_$name failed (see $log)" >&2; exit 1; }
done
