#!/usr/bin/env bash
# A whole train_opd run at the real size on N GPUs of one host, then its mid-run checkpoint
# resumed on M GPUs (issue "Scaling the OPD step to 4 and 8 GPUs"): does the loss continue?
#
#   benchmarks/scaling_train_opd.sh WORKDIR N M [STEPS] [CLIPS_PER_GPU]     (defaults 50, 40)
#
# The models are bench_opd_step.py's random-weight pair (0.59 B GLM-ASR-style student, 2.04 B
# Qwen3-ASR-1.7B-size teacher), kept in WORKDIR/models between calls. The data: 10 s clips of
# noise (random weights hear nothing either way; the shapes are what is measured), 2 clips per
# step and GPU in the pool, validated like any manifest. Calibration runs with its quality checks
# off (random weights never stop a rollout). Run A trains STEPS steps on N GPUs (global batch
# N × CLIPS_PER_GPU, a checkpoint every STEPS/2 steps); run B starts from A's middle checkpoint on
# M GPUs with the same global batch and trains to STEPS. Prints, and writes to
# WORKDIR/scaling_N<N>_M<M>.json, both runs' step times and the loss of every step they share.
# DEVICE=cpu SMALL=1 (tiny models, gloo ranks) checks the script itself on a CPU.
set -euo pipefail
W=${1:?usage: benchmarks/scaling_train_opd.sh WORKDIR N M [STEPS] [CLIPS_PER_GPU]}
N=${2:?N GPUs for run A} M=${3:?M GPUs for the resume} STEPS=${4:-50} PER=${5:-40}
PY=${PY:-python3} DEVICE=${DEVICE:-cuda} SMALL=${SMALL:-0}
GLOBAL=$((N * PER)) HALF=$((STEPS / 2)) WARMUP=$((STEPS >= 10 ? 5 : 1))
OPD=(--max-new-tokens 64 --top-k 32)
mkdir -p "$W"
[ -d "$W/models/student" ] || $PY -c 'import sys; from pathlib import Path
from benchmarks.bench_opd_step import build_pair
build_pair("qwen3_glm", sys.argv[2] == "1", Path(sys.argv[1]))' "$W/models" "$SMALL"
if [ ! -f "$W/data/train.jsonl" ]; then
  $PY - "$W/data" $((2 * GLOBAL)) <<'EOF'
import json, sys
from pathlib import Path
import soundfile as sf
from benchmarks.bench_opd_step import synthetic_batch
out, count = Path(sys.argv[1]), int(sys.argv[2])
(out / "wavs").mkdir(parents=True, exist_ok=True)
batch = synthetic_batch(count, 10.0)  # the step benchmark's clips: noise, zh and en in turn
with open(out / "pool.jsonl", "w") as manifest:
    for utt, audio in zip(batch.utterances, batch.audios, strict=True):
        sf.write(out / "wavs" / f"{utt.id}.wav", audio, 16_000, subtype="PCM_16")
        manifest.write(json.dumps({"audio": f"wavs/{utt.id}.wav", "id": utt.id,
                                   "language": utt.language}) + "\n")
EOF
  $PY -m stages.validate --input "$W/data/pool.jsonl" --output "$W/data/train.jsonl" \
      --report "$W/data/train.report.json" --no-require-text --on-error fail
fi
[ -f "$W/calibration.json" ] || $PY -m stages.calibrate --train "$W/data/train.jsonl" \
    --output "$W/calibration.json" --student "$W/models/student" --teacher "$W/models/teacher" \
    "${OPD[@]}" --batches 1 --batch-size 8 --min-stopped-ratio 0 --min-nonempty-ratio 0 \
    --max-initial-loss 1e9 --min-vuss 0 --device "$DEVICE"
train() {  # gpus, output dir, extra args...
  local gpus=$1 out=$2; shift 2
  torchrun --standalone --nproc_per_node "$gpus" -m stages.train_opd \
      --student "$W/models/student" --teacher "$W/models/teacher" --train "$W/data/train.jsonl" \
      --calibration "$W/calibration.json" "${OPD[@]}" --batch-size "$GLOBAL" --lr 1e-5 \
      --warmup-steps "$WARMUP" --max-steps "$STEPS" --save-every "$HALF" --keep-last 0 \
      --no-tensorboard --device "$DEVICE" --output-dir "$out" "$@"
}
rm -rf "$W/run_a" "$W/run_b"
train "$N" "$W/run_a"
train "$M" "$W/run_b" --resume "$W/run_a/checkpoints/step_$(printf %08d "$HALF")"
$PY - "$W" "$N" "$M" "$HALF" <<'EOF'
import json, statistics, sys
from pathlib import Path
work, n, m, half = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rows(run):
    return {r["step"]: r for r in map(json.loads, open(work / run / "metrics.jsonl"))}
a, b = rows("run_a"), rows("run_b")
shared = sorted(set(a) & set(b))
result = {
    "gpus_a": n, "gpus_b": m, "resumed_from_step": half,
    "step_s_a": statistics.median(a[s]["time_step"] for s in a if s > 2),
    "step_s_b": statistics.median(b[s]["time_step"] for s in b),
    "loss": [{"step": s, "a": a[s]["loss"], "b": b[s]["loss"]} for s in shared],
    "max_abs_loss_diff": max(abs(a[s]["loss"] - b[s]["loss"]) for s in shared),
    "first_steps_b": min(b),
}
print(json.dumps(result, indent=2))
(work / f"scaling_N{n}_M{m}.json").write_text(json.dumps(result, indent=2))
EOF
