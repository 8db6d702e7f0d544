#!/usr/bin/env bash
# The GPU measurements the README records, in one go (an H100 or H200, one GPU):
#   loss       union_topk_kl forward+backward at the reference size, fp32 and bf16 inputs
#   opd_step   one real-size OPD step with random weights (phases, tokens/s, peak memory),
#              the student kept gathered for the rollout (default) and re-gathered per token
#   td         teacher transcription throughput of a Qwen3-ASR-1.7B-size teacher
# Results go to $RESULTS (default results/gpu) as JSON, with a log per benchmark.
#   benchmarks/gpu_benchmarks.sh [loss] [opd_step] [td]      (default: all three)
set -uo pipefail
RESULTS=${RESULTS:-results/gpu}
PY=${PY:-python3}
mkdir -p "$RESULTS"
which=("$@")
[ ${#which[@]} -eq 0 ] && which=(loss opd_step td)
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
      run opd_step $PY benchmarks/bench_opd_step.py --json "$RESULTS/opd_step.json"
      run opd_step_reshard $PY benchmarks/bench_opd_step.py --reshard-during-decode --steps 2 --json "$RESULTS/opd_step_reshard.json" ;;
    td)
      run td $PY -m benchmarks.bench_teacher_data --device cuda --dtype bfloat16 --batch-sizes 16 40 64 --batches 3 --max-new-tokens 64 --json "$RESULTS/td.json" ;;
    *) echo "unknown benchmark $item"; exit 2 ;;
  esac
done
exit $status
