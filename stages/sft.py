"""Supervised fine-tuning (SFT) of an ASR model on transcribed audio.

Cross-entropy on the assistant tokens only (the transcript, the family's response header such as
Qwen3-ASR's `language X<asr_text>`, and the stop token); the prompt and audio positions are never
supervised. The loss of a step is the mean over every supervised token of the global batch. The
model is trained with FSDP2 (fp32 master weights; bf16 compute on CUDA), AdamW (betas 0.9/0.95,
no decay on norms, biases and embeddings), gradient clipping and warmup + cosine/constant lr.
Used to bootstrap the demo's tiny teacher and student base, and to adapt the student to teacher
transcripts (TD adaptation, --text-field).

Inputs:
  --model DIR        model folder (or cached hub id) to start from; loaded with its adapter
  --train MANIFEST   validated manifest (python -m stages.validate); every row needs a non-empty
                     --text-field; Qwen3-ASR models also need `language` (it is in their answer)
Outputs under --output-dir:
  checkpoints/step_<n>/        DCP checkpoints (model, optimizer, schedule, data position, RNG)
  metrics.jsonl                one row per step: loss (mean token CE), acc (token accuracy),
                               tokens, grad_norm, lr, tokens_per_s, time_* (stages/train/loop.py)
  tensorboard/                 the same metrics (unless --no-tensorboard)
  train_summary.json           steps, first/final loss, export folder, settings, provenance;
                               written when training completed
  --export-dir HF_DIR          the trained model as a Hugging Face folder (safetensors, plus the
                               base folder's processor, tokenizer, chat template, generation
                               config), written only when training completed

Resuming: --resume auto (default) continues the newest intact checkpoint of --output-dir
when its settings match (a run killed at any moment loses at most --save-every steps; a
checkpoint whose checksums fail is moved to checkpoints.corrupt/ with a warning and the one
before it is used); latest demands one; none refuses existing checkpoints; a step_<n> path
forces that one. Settings are every option except the loop length, saving, runtime and export
ones, plus fingerprints (file sizes and times) of --model and --train; checkpoints of other
settings are refused, or with --stale-checkpoints set-aside moved to checkpoints.stale-<hash>/
(the workflow does this). The lr schedule (--lr, --warmup-steps, --schedule, --min-lr-ratio,
and --max-steps of a cosine schedule) is a setting too, unless --resume-with-new-schedule is
given: then the run continues on the new schedule and the log shows both. One run writes an
output folder at a time (OUTPUT/run.lock names it).

Several processes (one per GPU, or gloo on CPU): launch with torchrun; --batch-size stays the
global batch.

Examples:
  python -m stages.sft --model results/models/tiny/teacher_init --train results/data/train.jsonl \\
      --output-dir results/train/bootstrap_teacher --max-steps 300 --batch-size 8 --lr 2e-3 \\
      --export-dir results/models/teacher
  torchrun --nproc_per_node 8 -m stages.sft --model student_base --train td.jsonl \\
      --text-field teacher_text --output-dir runs/td --max-steps 2000 --batch-size 320 --lr 1e-5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from stages.common.cli import parser, run_stage
from stages.common.settings import add_settings, group, setting, settings_from_args
from stages.models import ModelLoading
from stages.train.objectives import SftObjective
from stages.train.session import (
    StepHook,
    TrainingSession,
    TrainingSettings,
    require_languages,
)


@dataclass(frozen=True, kw_only=True)
class SftRun:
    """One supervised fine-tuning run."""

    model: str = setting(help="model folder or cached hub id to train")
    loading: ModelLoading = group("model")
    text_field: str = setting("text", help="manifest field with the target transcript")
    training: TrainingSettings = group("data, runtime and export")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    add_settings(p, SftRun)
    return p


def run(settings: SftRun, hooks: Sequence[StepHook] = ()) -> dict:
    """Train and export; returns the summary. ``hooks`` run after every step (tests use them)."""
    training = settings.training
    inputs = {"model": settings.model, "train": training.train}
    with TrainingSession.start(training, stage="sft", identity=settings, inputs=inputs,
                               trust_remote_code=settings.loading.trust_remote_code,
                               packed_audio_windows=settings.loading.packed_audio_windows
                               ) as session:
        utterances = session.read_data(text_field=settings.text_field)
        adapter = session.load_trainee(settings.model, family=settings.loading.family)
        if adapter.family == "qwen3_asr":
            require_languages(utterances, training.train, "Qwen3-ASR answers start with "
                              "`language X<asr_text>`, so fine-tuning needs every row's language")
        objective = SftObjective(adapter, text_field=settings.text_field)
        return session.train(adapter, objective, utterances, base_model=settings.model,
                             hooks=hooks, extra_summary={"utterances": len(utterances),
                                                         "text_field": settings.text_field})


def main(args: argparse.Namespace) -> int:
    run(settings_from_args(SftRun, args))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
