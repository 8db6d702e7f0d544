#!/usr/bin/env bash
# Does TD adaptation lower VUSS when the student base first learned another transcript
# convention? (README "The GPU study", VUSS.) The paper's student and teacher came from different
# training data, in this project both bootstraps learn the same transcripts, and VUSS did not
# fall after TD. Here the demo's student base is trained again from its tiny init on the demo's
# train split restyled (en: first letter capitalized, no final full stop, "The cat was big";
# zh: no final 。), with the demo's bootstrap settings; then TD-adapted on the demo's teacher
# data (the teacher's convention) with the demo's TD settings; then benchmarks/vuss_by_k.py
# compares the students (both bases, each TD-adapted for every step count in TD_STEPS) against
# the demo's teacher on the td_pool's audio.
#
#   OUT=DIR benchmarks/convention_mismatch.sh      # after `make demo` (reads results/)
#
# DEMO (default results): the demo's output folder. TD_STEPS (default "100", the demo's):
# TD adaptation lengths, e.g. "30 100 300". PY (default .venv/bin/python).
set -euo pipefail
DEMO=${DEMO:-results}
OUT=${OUT:-results/convention_mismatch}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT/eval"
$PY - "$DEMO/data/train.jsonl" "$OUT/train_restyled.jsonl" <<'PYEOF'
import json, sys
def restyle(text, language):
    if language == "zh":
        return text.removesuffix("。")
    text = text.removesuffix(".")
    return text[:1].upper() + text[1:]
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as dst:
    for line in src:
        row = json.loads(line)
        row["text"] = restyle(row["text"], row["language"])
        dst.write(json.dumps(row, ensure_ascii=False) + "\n")
PYEOF
head -n 2 "$OUT/train_restyled.jsonl" | cut -c 1-160
SFT="--schedule cosine --min-lr-ratio 0.1 --weight-decay 0.005 --seed 0 --device auto --threads 2"
SFT="$SFT --stale-checkpoints set-aside"
[ -f "$OUT/models/student_base_restyled/config.json" ] || $PY -m stages.sft \
  --model "$DEMO/models/tiny/student_init" --train "$OUT/train_restyled.jsonl" \
  --output-dir "$OUT/train/bootstrap_restyled" --export-dir "$OUT/models/student_base_restyled" \
  --max-steps 650 --batch-size 16 --lr 0.001 --warmup-steps 20 --save-every 250 $SFT
TD_STEPS=${TD_STEPS:-100}
students=(--student base="$DEMO/models/student_base" --student base_restyled="$OUT/models/student_base_restyled")
for steps in $TD_STEPS; do
  for pair in same:"$DEMO/models/student_base" restyled:"$OUT/models/student_base_restyled"; do
    name=td${steps}_${pair%%:*}
    [ -f "$OUT/models/$name/config.json" ] || $PY -m stages.sft --model "${pair#*:}" \
      --train "$DEMO/td/td.jsonl" --output-dir "$OUT/train/$name" --export-dir "$OUT/models/$name" \
      --max-steps "$steps" --batch-size 16 --lr 0.0005 --warmup-steps 5 --save-every "$steps" $SFT
    students+=(--student "$name=$OUT/models/$name")
  done
done
$PY -m benchmarks.vuss_by_k --teacher "$DEMO/models/teacher" "${students[@]}" \
  --manifest "$DEMO/data/td_pool.jsonl" --json "$OUT/vuss_by_k.json"
# Did each restyled student write its convention? (The clean preset's 40 clips.)
for model in student_base_restyled $(printf "td%s_restyled " $TD_STEPS); do
  $PY -m stages.evaluate --model "$OUT/models/$model" --input "$DEMO/data/clean.jsonl" \
    --output "$OUT/eval/$model.clean.jsonl" --summary "$OUT/eval/$model.clean.json" \
    --metric wer --max-new-tokens 32 --threads 2 2> "$OUT/eval/$model.log"
  $PY - "$OUT/eval/$model.clean.jsonl" "$model" <<'PYEOF'
import json, sys
preds = [json.loads(line)["pred_text"] for line in open(sys.argv[1])]
print(f"{sys.argv[2]}: of {len(preds)} clean transcripts, {sum(p.endswith('.') for p in preds)}"
      f" end with a full stop, {sum(p[:1].isupper() for p in preds)} start with a capital")
PYEOF
done
