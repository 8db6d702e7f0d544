#!/usr/bin/env bash
# Which levers make the demo's student base hear, and its teacher lead (issue "Show the method
# working", item 2)? Trains the demo's tiny models (stages.sft with the bootstrap settings of
# config/demo.yaml: batch 16, cosine, lr 1e-3 unless given) on the demo corpus in six languages
# (the old demo) or in the two the presets use (zh, en), and scores them on a development
# split: the td_pool rows in zh (CER) and en (WER), which the bootstraps never train on; never
# on the five evaluation presets. Prints, per run and language, the error rate and how many
# distinct transcripts the model wrote (a grammar guesser writes few).
#   benchmarks/demo_student_levers.sh OUT_DIR [STEPS...]   the GLM-ASR-style student, both corpora
#                                                           (default steps: 250 500 850)
#   benchmarks/demo_student_levers.sh OUT_DIR --teacher CONV STEPS [LR [MELS]]
#       the Qwen3-ASR-style teacher on zh + en, its conv front end CONV channels wide, on MELS
#       log-mel bins (default 80, the demo's)
# Run from the project root with the project's venv active. A student step is ~0.4 s on 2
# cores, a teacher step ~0.8 s (64 channels), ~1.1 s (128), ~2.2 s (256).
set -euo pipefail
OUT=${1:?usage: benchmarks/demo_student_levers.sh OUT_DIR [STEPS...] | --teacher CONV STEPS [LR]}
shift
PY=${PY:-python}
mkdir -p "$OUT"
corpus() {  # name, td_pool size, languages...
  local name=$1 pool=$2; shift 2
  local dir=$OUT/$name
  [ -f "$dir/corpus/corpus.json" ] || $PY -m stages.synth_demo --output-dir "$dir/corpus" \
      --seed 1234 --sizes train=1100 td_pool="$pool" aishell=0 meeting=0 net=0 clean=0 other=0 \
      --train-languages "$@" --workers 2 --no-progress
  for lang in zh en; do
    $PY -c 'import json, sys
src, dst, lang = sys.argv[1:]
with open(dst, "w", encoding="utf-8") as out:
    for line in open(src, encoding="utf-8"):
        if json.loads(line)["language"] == lang:
            out.write(line)' "$dir/corpus/manifests/td_pool.jsonl" "$dir/corpus/manifests/dev_$lang.jsonl" "$lang"
  done
  mkdir -p "$dir/data"
  for m in train td_pool dev_zh dev_en; do
    [ -f "$dir/data/$m.jsonl" ] || $PY -m stages.validate --input "$dir/corpus/manifests/$m.jsonl" \
        --output "$dir/data/$m.jsonl" --report "$dir/data/$m.report.json" --on-error fail \
        --min-seconds 0.2 --max-seconds 30 --require-text --workers 2 > /dev/null
  done
  [ -d "$dir/tiny/student_init" ] || $PY -m stages.tiny_models --manifests "$dir/data/train.jsonl" "$dir/data/td_pool.jsonl" \
      --output-dir "$dir/tiny" --spec '{"vocab_size": 1536, "chunk_seconds": 4}' 2> /dev/null
}
teacher_tiny() {  # name, conv channels, mel bins: the tiny models again, that teacher front end
  local dir=$OUT/$1 folder=tiny_conv$2; [ "$3" = 80 ] || folder=${folder}_mel$3
  local spec="{\"vocab_size\": 1536, \"chunk_seconds\": 4, \"num_mel_bins\": $3, \"teacher\": {\"audio_conv_channels\": $2}}"
  [ -d "$dir/$folder/teacher_init" ] || $PY -m stages.tiny_models --manifests "$dir/data/train.jsonl" \
      "$dir/data/td_pool.jsonl" --output-dir "$dir/$folder" --spec "$spec" 2> /dev/null
  echo "$folder"
}
train() {  # name, steps, initial model (under OUT/name), run label, lr
  local dir=$OUT/$1 run=$OUT/$1/$4_$2
  [ -f "$run/model/config.json" ] || $PY -m stages.sft --model "$dir/$3" \
      --train "$dir/data/train.jsonl" --output-dir "$run/train" --export-dir "$run/model" \
      --max-steps "$2" --batch-size 16 --lr "$5" --warmup-steps 20 --schedule cosine \
      --min-lr-ratio 0.1 --weight-decay 0.005 --save-every "$2" --seed 0 --device cpu \
      --threads 2 > "$run.log" 2>&1 || { echo "training failed: see $run.log" >&2; exit 1; }
  for lang in zh en; do
    local metric=wer; [ $lang = zh ] && metric=cer
    $PY -m stages.evaluate --model "$run/model" --input "$dir/data/dev_$lang.jsonl" \
        --output "$run/dev_$lang.jsonl" --summary "$run/dev_$lang.summary.json" --metric $metric \
        --normalizer $lang --batch-size 16 --max-new-tokens 32 --device cpu --threads 2 2> /dev/null
    $PY -c 'import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rate = json.load(open(sys.argv[2]))["rate"]
print(f"{sys.argv[3]:4} {sys.argv[6]} steps {sys.argv[4]:>4} dev {sys.argv[5]}: {100 * rate:6.2f} %, "
      f"{len({r['"'"'pred_norm'"'"'] for r in rows})} distinct transcripts of {len(rows)}", flush=True)' \
        "$run/dev_$lang.jsonl" "$run/dev_$lang.summary.json" "$1" "$2" "$lang" "$4"
  done
}
# Two languages at 50 % each leave too few distinct en sentences for a 300-clip td_pool.
corpus two 280 zh en
if [ "${1:-}" = --teacher ]; then
  conv=${2:?--teacher CONV STEPS [LR [MELS]]} steps=${3:?--teacher CONV STEPS [LR [MELS]]}
  lr=${4:-0.001} mels=${5:-80}
  folder=$(teacher_tiny two "$conv" "$mels")
  label=teacher_conv${conv}_lr$lr; [ "$mels" = 80 ] || label=${label}_mel$mels
  train two "$steps" "$folder/teacher_init" "$label" "$lr"
  exit
fi
corpus six 300 zh en de fr ko ja
STEPS=("$@"); [ $# -eq 0 ] && STEPS=(250 500 850)
for steps in "${STEPS[@]}"; do
  for name in six two; do train $name "$steps" tiny/student_init student 0.001; done
done
