#!/usr/bin/env bash
# Does TD adaptation lower VUSS when the student base first learned another transcript
# convention? (README "The GPU study", VUSS.) The paper's student and teacher came from different
# training data, in this project both bootstraps learn the same transcripts, and VUSS did not
# fall after TD. Here a run's student base is trained again from its tiny init on the run's train
# split restyled (en: first letter capitalized, no final full stop, "The cat was big"; zh: no
# final 。), replaying the settings its train_summary.json recorded; then both bases are
# TD-adapted on the run's teacher data (the teacher's convention), replaying td_adapt@seed0's
# settings; then benchmarks/vuss_by_k.py compares the students (both bases, each TD-adapted for
# every step count in TD_STEPS) against the run's teacher on the td_pool's audio.
#
#   benchmarks/convention_mismatch.sh                 # after `make demo` (reads results/)
#   DEMO=results/gpu_study_same_convention DEVICE=cuda MAX_NEW_TOKENS=48 \
#       benchmarks/convention_mismatch.sh
#
# DEMO (default results): the run's output folder, one whose student base learned the teacher's
# convention (the GPU study's since config/recipes/gpu_study_same_convention.yaml: the study
# itself now restyles its student base). RESULTS (default DEMO/convention_mismatch):
# where this writes.
# TD_STEPS (default: the run's own TD length): TD adaptation lengths, e.g. "30 100 300".
# DEVICE (auto), THREADS (2), MAX_NEW_TOKENS (32: the clean transcripts of the convention check),
# VUSS_ARGS (extra options of vuss_by_k, e.g. "--batches 8 --batch-size 32"), PY (.venv/bin/python).
set -euo pipefail
DEMO=${DEMO:-results}
RESULTS=${RESULTS:-$DEMO/convention_mismatch}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-auto}
THREADS=${THREADS:-2}
mkdir -p "$RESULTS/eval"
$PY -m stages.restyle_transcripts --input "$DEMO/data/train.jsonl" \
  --output "$RESULTS/train_restyled.jsonl"
head -n 2 "$RESULTS/train_restyled.jsonl" | cut -c 1-160

sft() {  # sft SUMMARY NAME KEY=VALUE...: train and export $RESULTS/models/NAME unless it exists
  local summary=$1 name=$2; shift 2
  [ -f "$RESULTS/models/$name/config.json" ] && return
  local replayed options; replayed=$($PY -m benchmarks.replay_options "$summary" "$@")
  mapfile -t options <<< "$replayed"
  echo "== $name: ${options[*]}"
  $PY -m stages.sft "${options[@]}" --output-dir "$RESULTS/train/$name" \
    --export-dir "$RESULTS/models/$name" \
    --device "$DEVICE" --threads "$THREADS" --stale-checkpoints set-aside
}

base_summary=$DEMO/train/bootstrap_student_base/train_summary.json
td_summary=$DEMO/train/td_adapt@seed0/train_summary.json
base_steps=$($PY -c "import json; print(json.load(open('$base_summary'))['steps'])")
sft "$base_summary" student_base_restyled train="$RESULTS/train_restyled.jsonl" \
  save_every="$base_steps"
TD_STEPS=${TD_STEPS:-$($PY -c "import json; print(json.load(open('$td_summary'))['steps'])")}
students=(--student base="$DEMO/models/student_base"
          --student base_restyled="$RESULTS/models/student_base_restyled")
for steps in $TD_STEPS; do
  for pair in same:"$DEMO/models/student_base" restyled:"$RESULTS/models/student_base_restyled"; do
    name=td${steps}_${pair%%:*}
    sft "$td_summary" "$name" model="${pair#*:}" max_steps="$steps" save_every="$steps"
    students+=(--student "$name=$RESULTS/models/$name")
  done
done
# shellcheck disable=SC2086  # VUSS_ARGS is a list of options
$PY -m benchmarks.vuss_by_k --teacher "$DEMO/models/teacher" "${students[@]}" \
  --manifest "$DEMO/data/td_pool.jsonl" --device "$DEVICE" --threads "$THREADS" \
  --json "$RESULTS/vuss_by_k.json" ${VUSS_ARGS:-}
# Did each restyled student write its convention? (The clean preset's transcripts.)
for model in student_base_restyled $(printf "td%s_restyled " $TD_STEPS); do
  $PY -m stages.evaluate --model "$RESULTS/models/$model" --input "$DEMO/data/clean.jsonl" \
    --output "$RESULTS/eval/$model.clean.jsonl" --summary "$RESULTS/eval/$model.clean.json" \
    --metric wer --max-new-tokens "${MAX_NEW_TOKENS:-32}" --device "$DEVICE" \
    --threads "$THREADS" 2> "$RESULTS/eval/$model.log"
  $PY - "$RESULTS/eval/$model.clean.jsonl" "$model" <<'PYEOF'
import json, sys
preds = [json.loads(line)["pred_text"] for line in open(sys.argv[1])]
print(f"{sys.argv[2]}: of {len(preds)} clean transcripts, {sum(p.endswith('.') for p in preds)}"
      f" end with a full stop, {sum(p[:1].isupper() for p in preds)} start with a capital")
PYEOF
done
