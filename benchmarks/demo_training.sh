#!/usr/bin/env bash
# Time the demo's training pieces by hand, outside Snakemake: bootstrap SFT of the tiny teacher
# and student base, calibration, OPD (recipe base), and greedy error rates of the models before
# and after (benchmarks/bench_demo_models.py). Settings come from the environment, so several
# variants can run side by side, each pinned to its own cores.
#
#   DATA=/path/with/data/and/models/tiny  OUT=/path/for/this/variant \
#   TEACHER_STEPS=400 STUDENT_STEPS=150 OPD_STEPS=60 OPD_LR=3e-4 THREADS=2 \
#   taskset -c 0,1 benchmarks/demo_training.sh
#
# SKIP_STUDENT=1 / SKIP_OPD=1 leave those parts out (then STUDENT=DIR may name a student base).
# DATA must hold data/{train,aishell,clean,...}.jsonl (validated) and models/tiny/ (built by
# stages.tiny_models). Writes OUT/timings.txt and OUT/eval_*.json; prints a summary.
set -euo pipefail
PY=${PY:-python}
: "${DATA:?set DATA}" "${OUT:?set OUT}"
THREADS=${THREADS:-2}
TEACHER_STEPS=${TEACHER_STEPS:-400}; TEACHER_LR=${TEACHER_LR:-2e-3}
STUDENT_STEPS=${STUDENT_STEPS:-150}; STUDENT_LR=${STUDENT_LR:-2e-3}
BATCH=${BATCH:-8}; TEACHER_BATCH=${TEACHER_BATCH:-$BATCH}
OPD_STEPS=${OPD_STEPS:-60}; OPD_LR=${OPD_LR:-3e-4}; OPD_BATCH=${OPD_BATCH:-8}
OPD_WARMUP=${OPD_WARMUP:-5}; MAX_NEW=${MAX_NEW:-32}; TOP_K=${TOP_K:-32}
CLIPS=${CLIPS:-40}
PRESETS=${PRESETS:-"aishell=cer:zh meeting=cer:zh net=cer:zh clean=wer:en other=wer:en"}
mkdir -p "$OUT"
timed() {  # name, command...: run it (output to OUT/name.log), append "name seconds"
  local name=$1; shift
  local start; start=$(date +%s%N)
  local status=0
  "$@" > "$OUT/$name.log" 2>&1 || status=$?
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "$name $((ms / 1000)).$(printf %03d $((ms % 1000))) s (exit $status)" >> "$OUT/timings.txt"
  return $status
}
: > "$OUT/timings.txt"
TEACHER=${TEACHER:-}
if [ -z "$TEACHER" ]; then
  timed bootstrap_teacher $PY -m stages.sft --model "$DATA/models/tiny/teacher_init" \
    --train "$DATA/data/train.jsonl" --output-dir "$OUT/train/bootstrap_teacher" \
    --export-dir "$OUT/models/teacher" --max-steps "$TEACHER_STEPS" --batch-size "$TEACHER_BATCH" \
    --lr "$TEACHER_LR" --warmup-steps 20 --save-every 100 --threads "$THREADS" --no-tensorboard
  TEACHER=$OUT/models/teacher
fi
STUDENT=${STUDENT:-$OUT/models/student_base}
MODELS=("teacher=$TEACHER")
if [ -z "${SKIP_STUDENT:-}" ]; then
  timed bootstrap_student $PY -m stages.sft --model "$DATA/models/tiny/student_init" \
    --train "$DATA/data/train.jsonl" --output-dir "$OUT/train/bootstrap_student" \
    --export-dir "$STUDENT" --max-steps "$STUDENT_STEPS" --batch-size "$BATCH" \
    --lr "$STUDENT_LR" --warmup-steps 20 --save-every 100 --threads "$THREADS" \
    --no-tensorboard
fi
[ -d "$STUDENT" ] && MODELS+=("student_base=$STUDENT")
OPD_OPTIONS=(--top-k "$TOP_K" --max-new-tokens "$MAX_NEW")
[ -n "${SKIP_OPD:-}" ] || timed calibrate $PY -m stages.calibrate --student "$STUDENT" \
  --teacher "$TEACHER" --train "$DATA/data/train.jsonl" \
  --output "$OUT/calibrate/calibration.json" --batches 4 --batch-size 8 --threads "$THREADS" \
  "${OPD_OPTIONS[@]}" || true
CALIBRATION=$OUT/calibrate/calibration.json
if [ -f "$CALIBRATION" ]; then
  timed train_opd $PY -m stages.train_opd --student "$STUDENT" \
    --teacher "$TEACHER" --train "$DATA/data/train.jsonl" --calibration "$CALIBRATION" \
    --output-dir "$OUT/train/opd_base" --export-dir "$OUT/models/opd_base" \
    --max-steps "$OPD_STEPS" --batch-size "$OPD_BATCH" --lr "$OPD_LR" \
    --warmup-steps "$OPD_WARMUP" --save-every "$OPD_STEPS" --threads "$THREADS" \
    --no-tensorboard "${OPD_OPTIONS[@]}"
fi
[ -d "$OUT/models/opd_base" ] && MODELS+=("opd_base=$OUT/models/opd_base")
# shellcheck disable=SC2086
timed evaluate $PY -m benchmarks.bench_demo_models --data "$DATA/data" --models "${MODELS[@]}" \
  --presets $PRESETS --clips "$CLIPS" --threads "$THREADS" --json "$OUT/eval.json" \
  --agreement-with teacher
cat "$OUT/timings.txt"
grep -h -E "^(teacher|student_base|opd_base) " "$OUT/evaluate.log" || true
