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
student and teacher weights (fingerprinted by content) and the same OPD step settings (a failed
calibration is written as calibration.failed.json and is refused too).

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
from dataclasses import dataclass
from pathlib import Path

from stages.common.cli import parser, run_stage
from stages.common.runtime import resolve_dtype
from stages.common.settings import add_settings, group, setting, settings_from_args
from stages.models import load_adapter
from stages.opd.calibration import require_calibration
from stages.opd.config import OpdConfig, OpdPair
from stages.opd.step import prepare_teacher
from stages.opd.vocab import build_vocab_map
from stages.train.objectives import OpdObjective
from stages.train.session import StepHook, TrainingSession, TrainingSettings

log = logging.getLogger("stages.train_opd")


@dataclass(frozen=True, kw_only=True)
class OpdRun:
    """One OPD training run."""

    pair: OpdPair = group("models")
    calibration: Path = setting(volatile=True,
                                help="passing calibration.json from stages.calibrate")
    opd: OpdConfig = group("OPD step (union top-k forward KL on student rollouts)")
    training: TrainingSettings = group("data, runtime and export")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    add_settings(p, OpdRun)
    return p


def run(settings: OpdRun, hooks: Sequence[StepHook] = ()) -> dict:
    """Train and export; returns the summary. ``hooks`` run after every step (tests use them)."""
    pair, cfg, training = settings.pair, settings.opd, settings.training
    calibration = require_calibration(settings.calibration, pair.student, pair.teacher, cfg)
    inputs = {"student": pair.student, "teacher": pair.teacher, "train": training.train}
    with TrainingSession.start(training, stage="train_opd", identity=settings, inputs=inputs,
                               trust_remote_code=pair.trust_remote_code,
                               packed_audio_windows=pair.packed_audio_windows) as session:
        env = session.env
        utterances = session.read_data(text_field=None)
        student = session.load_trainee(pair.student, family=pair.student_family)
        # The frozen teacher is not trained: it computes in the compute dtype (bf16 on CUDA).
        teacher = prepare_teacher(load_adapter(
            pair.teacher, family=pair.teacher_family, device=env.device,
            dtype=resolve_dtype("auto", env.device), trust_remote_code=pair.trust_remote_code,
            packed_audio_windows=pair.packed_audio_windows))
        objective = OpdObjective(student, teacher, build_vocab_map(student, teacher), cfg,
                                 seed=training.loop.seed, rank=env.rank,
                                 world_size=env.world_size, grad_accum=training.loop.grad_accum)
        return session.train(student, objective, utterances, base_model=pair.student,
                             hooks=hooks, extra_summary={
                                 "utterances": len(utterances),
                                 "teacher": str(pair.teacher),
                                 "calibration": str(settings.calibration),
                                 "calibration_loss": (calibration.get("metrics") or {}).get(
                                     "loss"),
                             })


def main(args: argparse.Namespace) -> int:
    run(settings_from_args(OpdRun, args))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
