"""On-policy distillation (OPD): train the student on its own transcripts, scored by the teacher.

Every step, on every rank in lock-step: the student transcribes its share of the batch (greedy by
default, blocked tokens masked, up to --max-new-tokens); each row's teacher prompt language is
the manifest's, else detected from the rollout's script; the teacher scores the student's own
ids (mapped to teacher ids) in one teacher-forced pass; the student scores them with gradients;
the loss is the union top-k forward KL (τ² · mean over the used positions of the global batch).
See stages/opd/step.py for the details and the diagnostics.

The student is sharded with FSDP2 (fp32 master weights, bf16 compute and fp32 gradient
reduction on CUDA; fp32 on CPU). The teacher is frozen, in bf16 on CUDA (fp32 on CPU), and NOT
sharded: each rank holds a whole copy, so scoring needs no communication.

Refuses to start unless --calibration is a passing report of stages.calibrate for the same
student and teacher (a failed calibration is written as calibration.failed.json and is refused
too).

Inputs:
  --student DIR / --teacher DIR   model folders or cached hub ids
  --train MANIFEST                validated training manifest (`language` optional)
  --calibration FILE              calibration.json of stages.calibrate (must have passed)
Outputs under --output-dir:
  checkpoints/step_<n>/        DCP checkpoints (student, optimizer, schedule, data position, RNG)
  metrics.jsonl                one row per step: loss, grad_norm, lr, vuss and
                               opd_valid_topk_mean, teacher_mass, top1_agree, kl, used_fraction,
                               rollout_len(_max), stopped, nonempty, unmapped_tokens,
                               unmapped_masked_positions, lang_<code>, lang_source_<source>,
                               positions_scored/used, tokens, tokens_per_s, time_rollout,
                               time_teacher, time_student, time_loss, time_backward,
                               time_optimizer, time_step (stages/train/loop.py, stages/opd/step.py)
  tensorboard/                 the same metrics (unless --no-tensorboard)
  train_summary.json           steps, first/final loss, calibration, export folder, settings,
                               provenance; written when training completed
  --export-dir HF_DIR          the trained student as a Hugging Face folder, written when
                               training completed (checkpoints can be exported later too)

Resuming, batch size and launching on several ranks work as in stages.sft (see its --help):
--batch-size is the global batch; run with torchrun for several processes, e.g.
  torchrun --nproc_per_node 8 -m stages.train_opd --student S --teacher T --train M \\
      --calibration C --output-dir runs/opd --max-steps 5000 --batch-size 320

Example:
  python -m stages.train_opd --student results/models/student_base \\
      --teacher results/models/teacher --train results/data/train.jsonl \\
      --calibration results/calibrate/base/calibration.json \\
      --output-dir results/train/opd_base --max-steps 60 --batch-size 8 --lr 3e-4 \\
      --export-dir results/models/opd_base
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.jsonl import read_json
from stages.common.runtime import resolve_dtype
from stages.models import load_adapter
from stages.opd.step import prepare_teacher
from stages.train.objectives import (
    OpdObjective,
    add_opd_arguments,
    build_vocab_map,
    opd_config_from_args,
)
from stages.train.session import StepHook, TrainingSession, add_training_arguments

log = logging.getLogger("stages.train_opd")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--student", required=True, help="student model folder or cached hub id")
    p.add_argument("--teacher", required=True, help="teacher model folder or cached hub id")
    p.add_argument("--calibration", required=True, type=Path,
                   help="passing calibration.json from stages.calibrate")
    add_opd_arguments(p)
    # Reference launcher: lr 1e-4, cosine, 1,000 warmup steps, min-lr ratio 0.1, wd 0.005.
    add_training_arguments(p, lr=1e-4, warmup_steps=1000)
    return p


def _same_model(given: str, recorded: dict[str, Any]) -> bool:
    path = Path(given)
    resolved = str(path.resolve()) if path.exists() else given
    return resolved == recorded.get("resolved") or given == recorded.get("path")


def require_calibration(path: Path, student: str, teacher: str) -> dict[str, Any]:
    """The calibration report, if it passed for this student and teacher; else a UserError."""
    if not path.is_file():
        failed = path.with_name(f"{path.stem}.failed.json")
        hint = (f"; {failed} exists: calibration ran and failed, read its `checks`"
                if failed.is_file() else "; run python -m stages.calibrate first")
        raise UserError(f"{path}: no calibration report{hint}. OPD training starts only after a "
                        "passing calibration")
    report = read_json(path)
    if not isinstance(report, dict) or "passed" not in report:
        raise UserError(f"{path}: not a calibration report (no `passed`); give the "
                        "calibration.json written by python -m stages.calibrate")
    if report["passed"] is not True:
        failed = ", ".join(report.get("failed") or []) or "unknown checks"
        raise UserError(f"{path}: the calibration did not pass (failed: {failed}); OPD "
                        "training refuses to start. Fix the pair or the settings and calibrate "
                        "again")
    for role, given in (("student", student), ("teacher", teacher)):
        recorded = report.get(role) or {}
        if not _same_model(given, recorded):
            raise UserError(f"{path}: calibrated with {role} {recorded.get('path')!r}, but this "
                            f"run trains with {given!r}; calibrate this pair first")
    return report


def run(args: argparse.Namespace, hooks: Sequence[StepHook] = ()) -> dict:
    """Train and export; returns the summary. ``hooks`` run after every step (tests use them)."""
    calibration = require_calibration(args.calibration, args.student, args.teacher)
    cfg = opd_config_from_args(args)
    for key in ("top_k", "temperature", "max_new_tokens"):
        calibrated = (calibration.get("opd") or {}).get(key)
        if calibrated is not None and calibrated != getattr(cfg, key):
            log.warning("calibration used %s=%s, this run %s", key, calibrated,
                        getattr(cfg, key))
    inputs = {"student": args.student, "teacher": args.teacher, "train": args.train}
    with TrainingSession.start(args, stage="train_opd", inputs=inputs) as session:
        env = session.env
        utterances = session.read_data(text_field=None)
        student = session.load_trainee(args.student, family=args.student_family)
        # The frozen teacher is not trained: it computes in the compute dtype (bf16 on CUDA).
        teacher = prepare_teacher(load_adapter(
            args.teacher, family=args.teacher_family, device=env.device,
            dtype=resolve_dtype("auto", env.device), trust_remote_code=args.trust_remote_code))
        objective = OpdObjective(student, teacher, build_vocab_map(student, teacher), cfg,
                                 seed=args.seed, rank=env.rank, world_size=env.world_size,
                                 grad_accum=args.grad_accum)
        return session.train(student, objective, utterances, base_model=args.student,
                             hooks=hooks, extra_summary={
                                 "utterances": len(utterances),
                                 "teacher": str(args.teacher),
                                 "calibration": str(args.calibration),
                                 "calibration_loss": (calibration.get("metrics") or {}).get(
                                     "loss"),
                             })


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
