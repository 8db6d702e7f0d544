#!/usr/bin/env bash
# Choosing demo.telephone_share for the GPU study (README "The GPU study") on the development
# split, never the presets. For each share in SHARES (default "0 0.2") the study's own DAG up to
# its two bootstraps (corpus, tiny models, teacher, student base), the shares side by side on
# the one GPU, each model scored on dev_zh, dev_en and dev_net by benchmarks/gpu_study.sh.
#
# The rule, fixed before the first run: the share whose teacher has the lowest dev_net CER,
# among those whose teacher is within 1 point of share 0's on dev_zh and dev_en (telephone
# audio must not cost the wideband conditions). Prints the table and writes $RESULTS/chosen.yaml,
# the config that continues the chosen study:
#
#   RESULTS=DIR benchmarks/gpu_study_telephone.sh
#   EXTRA_CONFIG=DIR/chosen.yaml STUDY=<its output_dir> DEV=<its output_dir>_dev \
#       benchmarks/gpu_study.sh --nolock
set -uo pipefail
SHARES=${SHARES:-"0 0.2"}
RESULTS=${RESULTS:-results/telephone_share}
PY=${PY:-python3}
mkdir -p "$RESULTS"
for share in $SHARES; do
  name=gpu_study_tel$share
  printf 'output_dir: results/%s\ndemo:\n  telephone_share: %s\n' "$name" "$share" \
    > "$RESULTS/$name.yaml"
  # --nolock: the studies write disjoint folders, and one snakemake per study runs at once.
  EXTRA_CONFIG="$RESULTS/$name.yaml" STUDY=results/$name DEV=results/${name}_dev \
    RESULTS=$RESULTS/$name GPU_JOBS=${GPU_JOBS:-4} PY=$PY \
    benchmarks/gpu_study.sh --nolock results/$name/models/teacher \
    results/$name/models/student_base > "$RESULTS/$name.log" 2>&1 &
done
wait
$PY - "$RESULTS" $SHARES <<'PYEOF' | tee "$RESULTS/choice.txt"
import json, shutil, sys
from pathlib import Path

results, shares = Path(sys.argv[1]), sys.argv[2:]
devs = ("zh", "en", "net")


def rate(share: str, model: str, dev: str) -> float:
    path = Path(f"results/gpu_study_tel{share}_dev/eval/{model}/dev_{dev}.summary.json")
    return 100 * json.loads(path.read_text())["rate"]


print(f"{'share':>6} {'model':>13}", *(f"{'dev_' + dev:>8}" for dev in devs))
table = {}
for share in shares:
    for model in ("teacher", "student_base"):
        table[share, model] = {dev: rate(share, model, dev) for dev in devs}
        print(f"{share:>6} {model:>13}", *(f"{table[share, model][dev]:8.2f}" for dev in devs))
reference = table[shares[0], "teacher"]
allowed = [share for share in shares
           if all(table[share, "teacher"][dev] <= reference[dev] + 1.0 for dev in ("zh", "en"))]
chosen = min(allowed, key=lambda share: table[share, "teacher"]["net"])
print(f"chosen telephone_share: {chosen} (teacher dev_net CER {table[chosen, 'teacher']['net']:.2f}"
      f" against {reference['net']:.2f} at share {shares[0]})")
shutil.copy(results / f"gpu_study_tel{chosen}.yaml", results / "chosen.yaml")
PYEOF
