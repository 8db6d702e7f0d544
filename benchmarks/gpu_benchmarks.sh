#!/usr/bin/env bash
# The GPU measurements the README records, in one go (an H100 or H200, one GPU):
#   loss        union_topk_kl forward+backward at the reference size, fp32 and bf16 inputs
#   opd_step    one real-size OPD step with random weights (phases, tokens/s, peak memory), and
#               the project's rollout next to transformers generate (dynamic, static cache)
#   transcribe  teacher-data and evaluation throughput (1.7B-size teacher, 0.6B-size student)
#   whisper     the OPD step and transcription with the Whisper pair (large-v3-size teacher,
#               small-size student; bench_opd_step.py --pair whisper), models in /tmp/bench_whisper
# Results go to $RESULTS (default results/gpu) as JSON, with a log per benchmark. The OPD step
# and transcription share the built models (/tmp/bench_models).
#   benchmarks/gpu_benchmarks.sh [loss] [opd_step] [transcribe] [whisper]   (default: the first three)
# Two GPUs of one host: torchrun --nproc_per_node 2 benchmarks/bench_opd_step.py --json F
set -uo pipefail
RESULTS=${RESULTS:-results/gpu}
PY=${PY:-python3}
mkdir -p "$RESULTS"
which=("$@")
[ ${#which[@]} -eq 0 ] && which=(loss opd_step transcribe)
status=0
run() {  # name, command...
  local name=$1; shift
  echo "== $name: $*" | tee -a "$RESULTS/gpu.log"
  "$@" > "$RESULTS/$name.log" 2>&1 || { status=1; echo "   FAILED (see $name.log)" | tee -a "$RESULTS/gpu.log"; }
  tail -n 25 "$RESULTS/$name.log"
}
$PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name())' | tee -a "$RESULTS/gpu.log"
for item in "${which[@]}"; do
  case $item in
    loss)
      run loss_fp32 $PY -m benchmarks.bench_loss --device cuda --json "$RESULTS/loss_fp32.json"
      run loss_bf16 $PY -m benchmarks.bench_loss --device cuda --dtype bfloat16 --json "$RESULTS/loss_bf16.json" ;;
    opd_step)
      run opd_step $PY benchmarks/bench_opd_step.py --keep --json "$RESULTS/opd_step.json" ;;
    transcribe)
      run transcribe $PY -m benchmarks.bench_transcribe --batch-sizes 16 64 128 --compare --json "$RESULTS/transcribe.json" ;;
    whisper)
      run whisper_step $PY benchmarks/bench_opd_step.py --pair whisper --workdir /tmp/bench_whisper --keep --json "$RESULTS/whisper_opd_step.json"
      run whisper_transcribe $PY -m benchmarks.bench_transcribe --pair whisper --workdir /tmp/bench_whisper --batch-sizes 64 128 --loader-workers 0 --compare --json "$RESULTS/whisper_transcribe.json" ;;
    *) echo "unknown benchmark $item"; exit 2 ;;
  esac
done
exit $status
