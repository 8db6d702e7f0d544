"""Calibrate an OPD pair before training: the whole OPD step, forward only, on a few batches.

Checks that a student/teacher pair and its settings make sense before any GPU hours go into
training: the vocabulary map covers the tokens in play (a teacher whose tokenizer spells tokens
differently fails here), the student's rollouts are mostly non-empty and stop, few rollout
tokens lack a teacher counterpart, the initial loss is finite and not absurd, and the valid union
size (VUSS, `opd_valid_topk_mean` in the reference recipe) is large enough. Batches are the first
--batches global batches training with the same --seed and --batch-size will see.

Inputs:
  --student DIR / --teacher DIR   model folders or cached hub ids (adapter family from config)
  --train MANIFEST                validated training manifest (python -m stages.validate)
Output:
  --output calibration.json   written ONLY when every check passes (the file train_opd and the
                              workflow require). On failure the same report goes to
                              <stem>.failed.json beside it (e.g. calibration.failed.json), a stale
                              --output is removed, the failed checks are listed on stderr and the
                              exit status is 1. The report holds: passed, checks (name, value,
                              threshold, passed, message), failed, metrics (loss, vuss,
                              opd_valid_topk_mean, teacher_mass, top1_agree, kl, rollout_len,
                              nonempty_ratio, stopped_ratio, unmapped_tokens,
                              unmapped_fraction, positions, languages, language sources),
                              vocabulary (the map's coverage report), timings, thresholds,
                              opd settings and their fingerprint (opd_settings_sha256),
                              student/teacher (path, family, weights_sha256: a hash of the
                              config and weight files), provenance. stages.train_opd refuses
                              the report when either model's weights or the OPD step settings
                              changed since.

Thresholds: see the "thresholds" options below; and always: the loss is finite and at least
one position was used. The checks and the report contract are stages/opd/calibration.py.

The student runs in the dtype training computes in (bf16 on CUDA, fp32 on CPU); the teacher in
bf16 on CUDA, fp32 on CPU.

Example:
  python -m stages.calibrate --student results/models/student_base \\
      --teacher results/models/teacher --train results/data/train.jsonl \\
      --output results/calibrate/base/calibration.json --batches 4 --batch-size 8 --top-k 32
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stages.common.cli import parser, run_stage
from stages.common.provenance import provenance
from stages.common.runtime import Runtime, dtype_name, resolve_device, resolve_dtype, set_threads
from stages.common.settings import add_settings, group, setting, settings_from_args
from stages.data.batching import read_utterances
from stages.models import load_adapter
from stages.opd.calibration import (
    CalibrationThresholds,
    calibrate,
    model_record,
    publish_report,
)
from stages.opd.config import OpdConfig, OpdPair
from stages.opd.identity import settings_fingerprint
from stages.opd.step import prepare_teacher

log = logging.getLogger("stages.calibrate")


@dataclass(frozen=True, kw_only=True)
class CalibrationRun:
    """What one calibration runs on."""

    pair: OpdPair = group("models")
    batches: int = setting(4, help="batches to run")
    batch_size: int = setting(8, help="utterances per batch")
    seed: int = setting(0, help="data-order seed; use training's to preview its first batches")
    opd: OpdConfig = group("OPD step (union top-k forward KL on student rollouts)")
    thresholds: CalibrationThresholds = group("thresholds")
    runtime: Runtime = group("runtime")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--train", required=True, type=Path, help="validated training manifest")
    p.add_argument("--output", required=True, type=Path,
                   help="calibration.json (written only when every check passes)")
    add_settings(p, CalibrationRun)
    return p


def main(args: argparse.Namespace) -> int:
    run = settings_from_args(CalibrationRun, args)
    set_threads(run.runtime.threads)
    device = resolve_device(run.runtime.device)
    compute_dtype = resolve_dtype("auto", device)
    started = time.perf_counter()

    utterances = read_utterances(args.train)
    pair = run.pair
    loading = {"device": device, "dtype": compute_dtype,
               "trust_remote_code": pair.trust_remote_code,
               "packed_audio_windows": pair.packed_audio_windows}
    student = load_adapter(pair.student, family=pair.student_family, **loading)
    teacher = prepare_teacher(load_adapter(pair.teacher, family=pair.teacher_family, **loading))
    student.model.eval()
    loaded = time.perf_counter()
    report = calibrate(student, teacher, utterances, run.opd, run.thresholds,
                       batches=run.batches, batch_size=run.batch_size, seed=run.seed)
    report["student"] = model_record(pair.student, student)
    report["teacher"] = model_record(pair.teacher, teacher)
    report["opd_settings_sha256"] = settings_fingerprint(run.opd)
    report["data"] = {"train": str(args.train), "utterances": len(utterances),
                      "batches": run.batches, "batch_size": run.batch_size, "seed": run.seed}
    report["timings"].update(load_seconds=round(loaded - started, 3),
                             total_seconds=round(time.perf_counter() - started, 3),
                             device=str(device), dtype=dtype_name(compute_dtype))
    report["provenance"] = provenance({k: report[k] for k in ("thresholds", "opd", "data")}
                                      | {"student": pair.student, "teacher": pair.teacher})
    publish_report(report, args.output)
    metrics = report["metrics"]
    log.info("calibration passed (%d checks): loss %.4g, VUSS %.3g; wrote %s",
             len(report["checks"]), metrics["loss"], metrics["vuss"], args.output)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
