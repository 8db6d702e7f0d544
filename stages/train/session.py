"""What every training stage (``stages.sft``, ``stages.train_opd``) sets up the same way.

A :class:`TrainingSession` joins the process group (torchrun's, or a world of one), sets the
torch threads and seeds, loads the trainee behind its adapter and shards it with FSDP2, builds
AdamW and the schedule, a resumable sampler over a validated manifest, the checkpointer and the
loop config, runs the shared loop, and at the end exports the trained model as a Hugging Face
folder and writes ``train_summary.json``. The stage modules only add their objective.

Batch size: ``--batch-size`` is the *global* batch (utterances per optimizer step over all
ranks, times ``--grad-accum`` micro-batches); each rank takes ``batch-size / world size`` of it.
The same command therefore trains the same way on 1 or N ranks.

Resuming: ``--resume auto`` (the default) continues the newest complete checkpoint in
``OUTPUT/checkpoints``. A checkpoint written with other *settings* (model, data, optimizer,
objective options, seed, or a changed input folder: each input's file sizes and modification
times are fingerprinted) is refused under ``auto`` and ``latest``, so a workflow rerun after an
upstream change never silently continues a stale run; pass the checkpoint folder itself to
force it, or ``--stale-checkpoints set-aside`` to move such checkpoints to
``checkpoints.stale-<hash>/`` and start fresh (the workflow rules do). ``--max-steps``,
``--save-every``, the output folder, threads, device and export options may change between
resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.common.errors import UserError
from stages.common.jsonl import iter_jsonl, read_jsonl, write_json
from stages.common.provenance import provenance
from stages.common.runtime import add_runtime_arguments, set_threads
from stages.data.batching import Utterance, load_batch, read_utterances
from stages.models import load_adapter
from stages.models.base import AsrAdapter
from stages.train.checkpoint import Checkpointer, read_meta
from stages.train.data import BatchSource, ResumableSampler
from stages.train.distributed import (
    DistEnv,
    barrier,
    init_distributed,
    seed_everything,
    shutdown,
)
from stages.train.fsdp import shard_model
from stages.train.hf_save import EXPORT_DTYPES, save_hf_folder
from stages.train.loop import (
    Objective,
    TrainResult,
    add_loop_arguments,
    loop_config_from_args,
    train,
)
from stages.train.optim import (
    OptimizerConfig,
    ScheduleConfig,
    build_optimizer,
    build_scheduler,
)

log = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
# Options that may change between a run and its resumption (not part of the settings hash).
VOLATILE_OPTIONS = frozenset({
    "max_steps", "save_every", "keep_last", "resume", "threads", "device", "output_dir",
    "export_dir", "export_dtype", "no_tensorboard", "verbose", "calibration",
    "max_consecutive_skips", "stale_checkpoints",
})

StepHook = Callable[[int, dict[str, Any]], None]


def add_training_arguments(parser: argparse.ArgumentParser, *, lr: float, warmup_steps: int,
                           schedule: str = "cosine", weight_decay: float = 0.005) -> None:
    """Data, optimizer, schedule, loop, runtime and export options (defaults per stage)."""
    data = parser.add_argument_group("data")
    data.add_argument("--train", required=True, type=Path,
                      help="validated training manifest (python -m stages.validate)")
    data.add_argument("--output-dir", required=True, type=Path,
                      help="run folder: checkpoints/, metrics.jsonl, tensorboard/, "
                           f"{SUMMARY_FILE}")
    data.add_argument("--batch-size", type=int, default=8,
                      help="global batch: utterances per micro-batch over all ranks; must be a "
                           "multiple of the number of ranks (default 8)")

    opt = parser.add_argument_group("optimizer and schedule (AdamW, betas 0.9/0.95)")
    opt.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    opt.add_argument("--warmup-steps", type=int, default=warmup_steps,
                     help=f"linear warmup over this many updates (default {warmup_steps})")
    opt.add_argument("--schedule", choices=["cosine", "constant"], default=schedule,
                     help=f"after warmup: cosine decay to min-lr-ratio × lr at --max-steps, or "
                          f"constant (default {schedule})")
    opt.add_argument("--min-lr-ratio", type=float, default=0.1,
                     help="cosine floor as a fraction of --lr (default 0.1)")
    opt.add_argument("--weight-decay", type=float, default=weight_decay,
                     help=f"decoupled weight decay on matrices (default {weight_decay})")

    add_loop_arguments(parser)

    run = parser.add_argument_group("runtime and export")
    add_runtime_arguments(run, devices=("auto", "cpu", "cuda"))  # --threads: per process
    run.add_argument("--trust-remote-code", action="store_true",
                     help="allow checkpoints that ship their own model code")
    run.add_argument("--export-dir", type=Path, default=None,
                     help="write the trained model here as a Hugging Face folder when training "
                          "completes (atomic: temporary folder, then rename)")
    run.add_argument("--stale-checkpoints", choices=["refuse", "set-aside"], default="refuse",
                     help="when --output-dir holds checkpoints of other settings: refuse (an "
                          "error), or set-aside (rename checkpoints/ to "
                          "checkpoints.stale-<hash>/ and start fresh; what workflows use)")
    run.add_argument("--export-dtype", choices=sorted(EXPORT_DTYPES), default="float32",
                     help="dtype of the exported weights (default float32: the trained master "
                          "weights exactly)")


def fingerprint(path: str | Path) -> str:
    """A short hash of a file's or folder's (relative name, size, mtime) entries; a hub id (no
    such path) fingerprints as its name. Cheap, and changes when an upstream stage rewrites it."""
    path = Path(path)
    if not path.exists():
        return f"id:{path}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.name if file == path else str(file.relative_to(path))
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def run_settings(args: argparse.Namespace, inputs: dict[str, str | Path]) -> dict[str, Any]:
    """The settings that define a run (hashed into every checkpoint): every option but the
    volatile ones, plus a fingerprint of each input path."""
    settings = {key: (str(value) if isinstance(value, Path) else value)
                for key, value in sorted(vars(args).items()) if key not in VOLATILE_OPTIONS}
    settings["input_fingerprints"] = {name: fingerprint(path) for name, path in inputs.items()}
    return settings


def session_schedule(args: argparse.Namespace) -> ScheduleConfig:
    """The lr schedule of the options (updates counted to ``--max-steps``)."""
    try:
        return ScheduleConfig(args.schedule, warmup_steps=args.warmup_steps,
                              total_steps=args.max_steps, min_lr_ratio=args.min_lr_ratio)
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

    args: argparse.Namespace
    env: DistEnv
    stage: str
    settings: dict[str, Any]
    started: float

    @classmethod
    def start(cls, args: argparse.Namespace, *, stage: str,
              inputs: dict[str, str | Path]) -> TrainingSession:
        """Check the options, set threads, join the process group and seed. Use it as a context
        manager (``with TrainingSession.start(...) as session:``): leaving the block leaves the
        process group."""
        set_threads(args.threads)
        session_schedule(args)  # option errors before anything starts
        try:
            loop_config_from_args(args, args.output_dir)
        except ValueError as err:
            raise UserError(f"training-loop options: {err}") from err
        env = init_distributed(None if args.device == "auto" else args.device)
        if env.device.type == "cuda":
            # cuDNN's attention backward returns NaN gradients for some masked sequence lengths
            # (pytorch/pytorch#196678, since torch 2.11; seen here as ~6% skipped steps of
            # both demo models' audio encoders on an H100). Flash / memory-efficient kernels
            # give the same results without it.
            torch.backends.cuda.enable_cudnn_sdp(False)
        try:
            if not env.is_main:  # one voice in the log; warnings and errors come from all
                logging.getLogger().setLevel(logging.WARNING)
            if args.batch_size < 1 or args.batch_size % env.world_size:
                raise UserError(f"--batch-size {args.batch_size} is not a positive multiple of "
                                f"the {env.world_size} rank(s); it is the global batch, split "
                                "evenly")
            seed_everything(args.seed)  # same weights on every rank before sharding
            session = cls(args=args, env=env, stage=stage, settings=run_settings(args, inputs),
                          started=time.perf_counter())
        except BaseException:
            shutdown()
            raise
        log.info("%s: %d rank(s) on %s, global batch %d (%d per rank), %d thread(s)", stage,
                 env.world_size, env.device, args.batch_size, session.batch_per_rank,
                 torch.get_num_threads())
        return session

    @property
    def batch_per_rank(self) -> int:
        return self.args.batch_size // self.env.world_size

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    def load_trainee(self, path: str | Path, *, family: str | None = None) -> AsrAdapter:
        """The model to train, behind its adapter, fp32 master weights sharded with FSDP2 (bf16
        compute on CUDA). ``adapter.model`` is the wrapped model."""
        adapter = load_adapter(str(path), family=family, device=self.env.device,
                               dtype=torch.float32, trust_remote_code=self.args.trust_remote_code)
        shard_model(adapter.model, self.env)
        return adapter

    def read_data(self, *, text_field: str | None) -> list[Utterance]:
        """The validated training manifest; with ``text_field``, every row must have one."""
        utterances = read_utterances(self.args.train)
        if text_field is not None:
            require_text_field(utterances, self.args.train, text_field)
        return utterances

    def checkpointer(self) -> Checkpointer:
        keep = self.args.keep_last
        return Checkpointer(self.output_dir / "checkpoints", keep_last=keep,
                            config=self.settings)

    def _handle_stale_checkpoint(self, checkpointer: Checkpointer) -> None:
        """Under auto/latest, a checkpoint from other settings is refused, or with
        ``--stale-checkpoints set-aside`` (and ``--resume auto``) moved away (module docstring)."""
        spec = self.args.resume
        if spec not in ("auto", "latest"):
            return
        found = checkpointer.resolve(spec)
        if found is None:
            return
        saved = read_meta(found).get("config_hash")
        if saved == checkpointer.config_hash:
            return
        if self.args.stale_checkpoints == "set-aside" and spec == "auto":
            aside = checkpointer.root.with_name(f"{checkpointer.root.name}.stale-{saved}")
            if self.env.is_main:
                if aside.exists():
                    shutil.rmtree(aside)
                os.rename(checkpointer.root, aside)
                log.warning("%s holds checkpoints of other settings (config hash %s, this run "
                            "%s): moved to %s; training starts fresh", checkpointer.root,
                            saved, checkpointer.config_hash, aside)
            barrier()
            return
        raise UserError(
            f"{found} was written with other settings (config hash {saved}, this run "
            f"{checkpointer.config_hash}: a model, the data, an optimizer or objective option, "
            "or an input folder changed). Start the new run in an empty output folder (or "
            f"delete its checkpoints/), pass --resume {found} to continue it anyway, or "
            "--stale-checkpoints set-aside")

    def train(self, adapter: AsrAdapter, objective: Objective, utterances: Sequence[Utterance],
              *, base_model: str | Path, hooks: Sequence[StepHook] = (),
              extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Build optimizer, schedule, sampler and checkpointer, run the loop to ``--max-steps``,
        then export (``--export-dir``) and write the summary. Returns the summary."""
        args, env = self.args, self.env
        model = adapter.model
        optimizer = build_optimizer(model, OptimizerConfig(lr=args.lr,
                                                           weight_decay=args.weight_decay))
        scheduler = build_scheduler(optimizer, session_schedule(args))
        sampler = ResumableSampler(len(utterances), self.batch_per_rank, rank=env.rank,
                                   world_size=env.world_size, seed=args.seed)
        batches = BatchSource(utterances, sampler, load_batch)
        checkpointer = self.checkpointer()
        self._handle_stale_checkpoint(checkpointer)
        loop = loop_config_from_args(args, self.output_dir)
        if env.is_main:  # it describes a completed run: an older one must not outlive a new start
            (self.output_dir / SUMMARY_FILE).unlink(missing_ok=True)

        rows: list[dict[str, Any]] = []
        result = train(model, objective, optimizer, scheduler, batches, checkpointer, loop, env,
                       hooks=[lambda step, row: rows.append(row), *hooks])
        exported = None
        if args.export_dir is not None:
            exported = save_hf_folder(model, base_model, args.export_dir, env,
                                      trust_remote_code=args.trust_remote_code,
                                      dtype=EXPORT_DTYPES[args.export_dtype])
        summary = self._summary(result, rows, exported, base_model, extra_summary or {})
        if env.is_main:
            write_json(self.output_dir / SUMMARY_FILE, summary)
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
            "global_batch": self.args.batch_size,
            "device": str(self.env.device),
            "seconds": round(time.perf_counter() - self.started, 2),
            **extra,
            "settings": self.settings,
            "provenance": provenance(self.settings),
        }

    def close(self) -> None:
        shutdown()

    def __enter__(self) -> TrainingSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _metric_rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
