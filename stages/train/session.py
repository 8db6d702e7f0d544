"""What every training stage (``stages.sft``, ``stages.train_opd``) sets up the same way.

A :class:`TrainingSession` joins the process group (torchrun's, or a world of one), sets the
torch threads and seeds, loads the trainee behind its adapter and shards it with FSDP2, builds
AdamW and the schedule, a resumable sampler over a validated manifest, the checkpointer and the
loop config, runs the shared loop, and at the end exports the trained model as a Hugging Face
folder and writes ``train_summary.json``. The stage modules only add their objective.

Batch size: ``--batch-size`` is the *global* batch (utterances per optimizer step over all
ranks, times ``--grad-accum`` micro-batches); each rank takes ``batch-size / world size`` of it.
The same command therefore trains the same way on 1 or N ranks.

Resuming: ``--resume auto`` (the default) continues the newest intact checkpoint in
``OUTPUT/checkpoints`` (each is verified against its checksums; a corrupt one is moved to
``checkpoints.corrupt/`` with a warning, and the next older one is used). A checkpoint written
with other *settings* (model, data, optimizer, objective options, seed, or a changed input
folder: each input's file sizes and modification times are fingerprinted) is refused under
``auto`` and ``latest``, so a workflow rerun after an upstream change never silently continues a
stale run; pass the checkpoint folder itself to force it, or ``--stale-checkpoints set-aside`` to
move such checkpoints to ``checkpoints.stale-<hash>/`` and start fresh (the workflow rules do).
The lr schedule (``--lr``, ``--warmup-steps``, ``--schedule``, ``--min-lr-ratio`` and, for
cosine, ``--max-steps``) counts as a setting too, unless ``--resume-with-new-schedule`` is given:
then the run continues on the new schedule from the update it reached, and the log and
metrics.jsonl show the old and the new one. ``--save-every``, the output folder, threads,
device and export options may change freely between resumes.

One run writes an output folder at a time: rank 0 holds ``OUTPUT/run.lock`` (``runlock.py``),
and a second run on the folder is refused with a message naming the first.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from stages.common.errors import UserError, storage_error
from stages.common.fsutil import fingerprint, outputs_together
from stages.common.jsonl import iter_jsonl, read_jsonl, write_json
from stages.common.provenance import provenance
from stages.common.runtime import set_threads
from stages.common.settings import group, run_settings, setting, settings_argv
from stages.data.batching import Utterance, load_batch, read_utterances
from stages.models import load_adapter
from stages.models.base import AsrAdapter
from stages.train.checkpoint import Checkpointer
from stages.train.data import BatchSource, ResumableSampler
from stages.train.distributed import (
    DistEnv,
    broadcast_object,
    init_distributed,
    seed_everything,
    shutdown,
)
from stages.train.fsdp import shard_model
from stages.train.hf_save import EXPORT_DTYPES, save_hf_folder
from stages.train.loop import (
    LoopConfig,
    Objective,
    TrainingDiverged,
    TrainResult,
    train,
)
from stages.train.optim import (
    SCHEDULE_SETTINGS,
    OptimSettings,
    ScheduleConfig,
    build_optimizer,
    build_scheduler,
)
from stages.train.runlock import RunLock

log = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"

StepHook = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """What every training stage takes: data, optimizer, loop, runtime and export."""

    train: Path = setting(help="validated training manifest (python -m stages.validate)")
    batch_size: int = setting(8, help="global batch: utterances per micro-batch over all ranks; "
                                      "must be a multiple of the number of ranks")
    optim: OptimSettings = group("optimizer and schedule (AdamW, betas 0.9/0.95)")
    loop: LoopConfig = group("training loop")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", volatile=True,
                                                     help="auto: CUDA when available")
    threads: int | None = setting(None, volatile=True,
                                  help="CPU threads for torch per process (default: torch's own "
                                       "choice)")
    export_dir: Path | None = setting(None, volatile=True,
                                      help="write the trained model here as a Hugging Face folder "
                                           "when training completes (atomic: temporary folder, "
                                           "then rename)")
    export_dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "float32", volatile=True,
        help="dtype of the exported weights (float32: the trained master weights exactly)")
    stale_checkpoints: Literal["refuse", "set-aside"] = setting(
        "refuse", volatile=True,
        help="when --output-dir holds checkpoints of other settings: refuse (an error), or "
             "set-aside (move them to checkpoints.stale-<hash>/ and start fresh, keeping "
             "those of this run's settings; what workflows use)")
    resume_with_new_schedule: bool = setting(
        False, volatile=True,
        help="resume a checkpoint although the lr schedule changed (--lr, --warmup-steps, "
             "--schedule, --min-lr-ratio, or --max-steps of a cosine schedule): continue from "
             "the update it reached on the new schedule; the log shows the old and the new one. "
             "Without it such a checkpoint counts as one of other settings")


def identity_settings(settings: Any, inputs: dict[str, str | Path]) -> dict[str, Any]:
    """The settings that define a run: every non-volatile setting of the stage, plus a
    fingerprint of each input path. Checkpoints record a hash of them, the lr schedule's
    settings apart (:meth:`TrainingSession.checkpointer`)."""
    identity = run_settings(settings)
    identity["input_fingerprints"] = {name: fingerprint(path) for name, path in inputs.items()}
    return identity


def session_schedule(training: TrainingSettings) -> ScheduleConfig:
    """The lr schedule of the settings (updates counted to ``--max-steps``)."""
    try:
        return training.optim.schedule_over(training.loop.max_steps)
    except ValueError as err:
        raise UserError(f"schedule options: {err}") from err


def require_text_field(utterances: Sequence[Utterance], manifest: str | Path,
                       field: str) -> None:
    """Every utterance must carry a non-empty string in ``field``; else name the line."""
    for utt in utterances:
        value = utt.text if field == "text" else utt.row.get(field)
        if isinstance(value, str) and value.strip():
            continue
        line = _line_of(manifest, utt.id)
        raise UserError(f"{manifest}:{line}: utterance {utt.id!r} has no `{field}` transcript; "
                        f"every training row needs one (or choose the field with --text-field)")


def require_languages(utterances: Sequence[Utterance], manifest: str | Path,
                      why: str) -> None:
    """Every utterance must name its language; else name the first line without one."""
    for utt in utterances:
        if not utt.language:
            raise UserError(f"{manifest}:{_line_of(manifest, utt.id)}: utterance {utt.id!r} has "
                            f"no `language`; {why}")


def _line_of(manifest: str | Path, utt_id: str) -> int | str:
    for number, row in iter_jsonl(manifest):
        if str(row.get("id")) == utt_id:
            return number
    return "?"


@dataclass
class TrainingSession:
    """One training stage's run; create it with :meth:`start` (see the module docstring)."""

    training: TrainingSettings
    trust_remote_code: bool
    env: DistEnv
    stage: str
    settings: dict[str, Any]
    started: float
    stage_settings: Any = None
    lock: RunLock | None = None
    packed_audio_windows: bool = False

    @classmethod
    def start(cls, training: TrainingSettings, *, stage: str, identity: Any,
              inputs: dict[str, str | Path], trust_remote_code: bool = False,
              packed_audio_windows: bool = False) -> TrainingSession:
        """Check the settings, set threads, join the process group and seed. ``identity``: the
        stage's whole settings dataclass, hashed (without its volatile settings) with
        fingerprints of ``inputs`` into every checkpoint. Use it as a context manager (``with
        TrainingSession.start(...) as session:``): leaving the block leaves the process group."""
        set_threads(training.threads)
        session_schedule(training)  # option errors before anything starts
        env = init_distributed(None if training.device == "auto" else training.device)
        if env.device.type == "cuda":
            # cuDNN's attention backward returns NaN gradients for some masked sequence lengths
            # (pytorch/pytorch#196678, since torch 2.11; seen here as ~6% skipped steps of
            # both demo models' audio encoders on an H100). Flash / memory-efficient kernels
            # give the same results without it.
            torch.backends.cuda.enable_cudnn_sdp(False)
        lock = None
        try:
            if not env.is_main:  # one voice in the log; warnings and errors come from all
                logging.getLogger().setLevel(logging.WARNING)
            batch = training.batch_size
            if batch < 1 or batch % env.world_size:
                raise UserError(f"--batch-size {batch} is not a positive multiple of the "
                                f"{env.world_size} rank(s); it is the global batch, split "
                                "evenly")
            lock = _lock_run_folder(Path(training.loop.output_dir), env)
            seed_everything(training.loop.seed)  # same weights on every rank before sharding
            session = cls(training=training, trust_remote_code=trust_remote_code,
                          packed_audio_windows=packed_audio_windows, env=env,
                          stage=stage, settings=identity_settings(identity, inputs),
                          started=time.perf_counter(), stage_settings=identity, lock=lock)
        except BaseException:
            if lock is not None:
                lock.release()
            shutdown()
            raise
        log.info("%s: %d rank(s) on %s, global batch %d (%d per rank), %d thread(s)", stage,
                 env.world_size, env.device, training.batch_size, session.batch_per_rank,
                 torch.get_num_threads())
        return session

    @property
    def batch_per_rank(self) -> int:
        return self.training.batch_size // self.env.world_size

    @property
    def output_dir(self) -> Path:
        return Path(self.training.loop.output_dir)

    def load_trainee(self, path: str | Path, *, family: str | None = None) -> AsrAdapter:
        """The model to train, behind its adapter, fp32 master weights sharded with FSDP2 (bf16
        compute on CUDA). ``adapter.model`` is the wrapped model."""
        adapter = load_adapter(str(path), family=family, device=self.env.device,
                               dtype=torch.float32, trust_remote_code=self.trust_remote_code,
                               packed_audio_windows=self.packed_audio_windows)
        shard_model(adapter.model, self.env)
        return adapter

    def read_data(self, *, text_field: str | None) -> list[Utterance]:
        """The validated training manifest; with ``text_field``, every row must have one."""
        utterances = read_utterances(self.training.train)
        if text_field is not None:
            require_text_field(utterances, self.training.train, text_field)
        return utterances

    def checkpointer(self) -> Checkpointer:
        """The run's checkpoints; their config hash leaves out the lr schedule, which is
        recorded and compared on its own (``--resume-with-new-schedule``)."""
        training = self.training
        config = {k: v for k, v in self.settings.items() if k not in SCHEDULE_SETTINGS}
        return Checkpointer(self.output_dir / "checkpoints", keep_last=training.loop.keep_last,
                            config=config,
                            schedule=training.optim.schedule_record(training.loop.max_steps),
                            stale=training.stale_checkpoints,
                            new_schedule=training.resume_with_new_schedule)

    def train(self, adapter: AsrAdapter, objective: Objective, utterances: Sequence[Utterance],
              *, base_model: str | Path, hooks: Sequence[StepHook] = (),
              extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Build optimizer, schedule, sampler and checkpointer, run the loop to ``--max-steps``,
        then export (``--export-dir``) and write the summary. Returns the summary."""
        training, env = self.training, self.env
        model = adapter.model
        optimizer = build_optimizer(model, training.optim.optimizer())
        scheduler = build_scheduler(optimizer, session_schedule(training))
        sampler = ResumableSampler(len(utterances), self.batch_per_rank, rank=env.rank,
                                   world_size=env.world_size, seed=training.loop.seed)
        batches = BatchSource(utterances, sampler, load_batch)
        checkpointer = self.checkpointer()
        summary_path = self.output_dir / SUMMARY_FILE
        if env.is_main:  # it describes a completed run: an older one must not outlive a new start
            summary_path.unlink(missing_ok=True)

        rows: list[dict[str, Any]] = []
        try:
            result = train(model, objective, optimizer, scheduler, batches, checkpointer,
                           training.loop, env,
                           hooks=[lambda step, row: rows.append(row), *hooks])
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err}. To resume the last checkpoint at half the learning "
                                   f"rate:\n  {self.rerun_command(lr=training.optim.lr / 2)}"
                                   ) from err
        exported = None
        # The summary marks the run complete: an export without it would look like one.
        with outputs_together(*((training.export_dir, summary_path) if env.is_main else ())):
            if training.export_dir is not None:
                exported = save_hf_folder(model, base_model, training.export_dir, env,
                                          trust_remote_code=self.trust_remote_code,
                                          dtype=EXPORT_DTYPES[training.export_dtype])
            summary = self._summary(result, rows, exported, base_model, extra_summary or {})
            if env.is_main:
                write_json(summary_path, summary)
        if env.is_main:
            log.info("%s finished at step %d (final loss %s) in %.1f s; summary %s", self.stage,
                     summary["steps"], _fmt(summary["final_loss"]), summary["seconds"],
                     self.output_dir / SUMMARY_FILE)
        return summary

    def _summary(self, result: TrainResult, rows: list[dict[str, Any]], exported: Path | None,
                 base_model: str | Path, extra: dict[str, Any]) -> dict[str, Any]:
        history = _metric_rows(self.output_dir / "metrics.jsonl") if self.env.is_main else rows
        losses = [r["loss"] for r in history if r.get("loss") is not None and not r["skipped"]]
        tail = losses[-10:]
        return {
            "stage": self.stage,
            "steps": result.step,
            "optimizer_steps": result.optimizer_steps,
            "skipped_steps": result.skipped_steps,
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "final_loss_mean_last_10": sum(tail) / len(tail) if tail else None,
            "steps_this_run": len(rows),
            "resumed_from": str(result.resumed_from) if result.resumed_from else None,
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "base_model": str(base_model),
            "export_dir": str(exported) if exported else None,
            "world_size": self.env.world_size,
            "global_batch": self.training.batch_size,
            "device": str(self.env.device),
            "seconds": round(time.perf_counter() - self.started, 2),
            **extra,
            "settings": self.settings,
            "provenance": provenance(self.settings),
        }

    def rerun_command(self, *, lr: float) -> str:
        """The command that resumes this run's last checkpoint with peak learning rate ``lr``
        (the same settings otherwise; the launcher as this run was started)."""
        argv = settings_argv(self.stage_settings)
        for flag, values in (("--lr", 1), ("--resume", 1), ("--resume-with-new-schedule", 0)):
            while flag in argv:  # replaced below
                index = argv.index(flag)
                del argv[index:index + 1 + values]
        argv += ["--lr", f"{lr:.3g}", "--resume", "auto", "--resume-with-new-schedule"]
        launcher = "python"
        if self.env.world_size > 1:
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", self.env.world_size))
            nodes = self.env.world_size // max(per_node, 1)
            launcher = (f"torchrun --nproc_per_node {per_node}"
                        + (f" --nnodes {nodes} <your rendezvous options>" if nodes > 1 else ""))
        return f"{launcher} -m stages.{self.stage} {shlex.join(argv)}"

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
        shutdown()

    def __enter__(self) -> TrainingSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _lock_run_folder(output_dir: Path, env: DistEnv) -> RunLock | None:
    """Rank 0 takes the run folder's lock; every rank learns whether it could."""
    lock, refusal = None, None
    if env.is_main:
        lock = RunLock(output_dir)
        try:
            lock.acquire()
        except UserError as err:
            refusal = str(err)
        except OSError as err:  # a read-only or full output folder
            refusal = str(storage_error(err, path=lock.path, doing="creating the run lock"))
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise UserError(refusal)
    return lock


def _metric_rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
