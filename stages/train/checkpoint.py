"""Checkpoints with torch.distributed.checkpoint (DCP) that a killed run can always resume from.

Layout of ``<root>/step_<n>/``, n the loop step in 8 digits (``step_00000850``)::

    .metadata, __*_*.distcp   DCP: {"model": ..., "optim": ...}, every rank writes its shards
    rng/rank_XXXXX.pt         each rank's python/numpy/torch(/CUDA) generator states
    metrics.jsonl             the run's metrics rows up to this step (its history)
    meta.json                 step counters, data position, scheduler state and shape, world size
                              at save, config hash, provenance
    checksums.json            size and SHA-256 of every file above (``integrity.py``)

Atomicity: everything is written into ``.step_<n>.tmp``; after a barrier the ranks hash the files
(each a share), rank 0 writes ``meta.json``, then ``checksums.json``, and renames the folder: the
commit point. A kill at any moment leaves the previous checkpoints untouched plus a tmp folder, or
the new complete one. Older ones beyond ``keep_last`` are pruned after a newer one is complete,
each first renamed to ``.step_<n>.prune`` (no longer a checkpoint) and then deleted, so a kill
while deleting never leaves a partial folder that looks complete. Leftovers of a killed save,
re-save (``.step_<n>.old``: restored when its step is missing) or prune are cleaned up when the
next run resolves what to resume. All ranks must see the same folder (a shared file system).

Resuming (:meth:`Checkpointer.resolve`): ``auto``/``latest`` take the newest checkpoint that is
*intact* (every checksum matches) and of this run's settings. A corrupt one is named, moved to
``<root>.corrupt/`` and the next older one is tried; the warning goes to the log and to
``events`` (the loop writes them to metrics.jsonl). Only when no checkpoint is intact is it an
error (nothing is moved then). A checkpoint of other settings is refused, or, with
``stale="set-aside"`` under ``auto``, moved to ``<root>.stale-<hash>/``; checkpoints of this
run's settings are never set aside. The lr schedule's shape is compared on its own: another
shape (a changed peak lr, warmup, kind, floor or, for cosine, length) counts as other settings
unless ``new_schedule`` is on; then the run continues at the same update on the new shape and the
log shows both.

Model and optimizer state go through ``get_state_dict``/``set_state_dict`` (optimizer flattened
by parameter name): the saved tensors are FSDP2 DTensor shards that DCP reshards on load, so a run
saved on N ranks resumes on M ranks.

RNG on resume: same world size, each rank gets back its own generator states, so the continued
run is bitwise identical to one that never stopped. A different world size cannot match an
uninterrupted run anyway (the per-rank streams differ); each rank is then re-seeded from
(seed, step, rank) and a warning says so. The data order does not depend on the RNG: it follows
the sampler position, which is exact on any world size.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from stages.common.errors import UserError, storage_error, storage_failure
from stages.common.fsutil import publish_dir
from stages.common.jsonl import read_json, write_json
from stages.common.provenance import config_hash, provenance
from stages.train.data import ResumableSampler
from stages.train.distributed import (
    DistEnv,
    barrier,
    broadcast_object,
    dist_rank,
    gather_objects,
    rng_state,
    seed_everything,
    set_rng_state,
)
from stages.train.integrity import (
    CHECKSUM_FILE,
    describe,
    hash_files,
    hash_files_shared,
    verify_files,
    write_checksums,
)
from stages.train.optim import describe_schedule, rebase_schedule

log = logging.getLogger(__name__)

META_FILE = "meta.json"
HISTORY_FILE = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_LEFTOVER = re.compile(r"^\.step_(\d{8})\.(tmp|old|prune)$")
_META_KEYS = ("step", "optimizer_steps", "skipped_steps", "consecutive_skips", "world_size",
              "config_hash", "sampler", "scheduler")
_DSD_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
StalePolicy = Literal["refuse", "set-aside"]


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


@dataclass
class Progress:
    """Loop counters. ``step`` counts loop steps, skipped ones included (each consumed data);
    ``optimizer_steps`` counts applied updates (what the lr schedule follows)."""

    step: int = 0
    optimizer_steps: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0


@dataclass
class TrainState:
    """Everything a checkpoint restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: ResumableSampler
    progress: Progress = field(default_factory=Progress)


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, folder), oldest first (not verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / META_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / META_FILE).is_file():
        raise UserError(f"{ckpt_dir}: not a complete checkpoint (no {META_FILE}); pass a "
                        "step_<n> folder written by the training stage")
    return read_json(ckpt_dir / META_FILE)


def _meta_problems(ckpt_dir: Path) -> list[str]:
    try:
        meta = read_meta(ckpt_dir)
    except UserError as err:
        return [str(err)]
    if not isinstance(meta, dict):
        return [f"{META_FILE} is not a JSON object"]
    missing = [key for key in _META_KEYS if key not in meta]
    return [f"{META_FILE} lacks {', '.join(missing)}"] if missing else []


def verify_checkpoint(ckpt_dir: str | Path) -> list[str]:
    """What is wrong with checkpoint ``ckpt_dir`` (empty: intact). Collective: every rank calls
    it and gets the same list. A checkpoint written before checksums existed is checked for
    structure only, with a warning."""
    ckpt_dir = Path(ckpt_dir)
    problems = broadcast_object(_meta_problems(ckpt_dir) if dist_rank() == 0 else None)
    files, checksummed = verify_files(ckpt_dir)
    if not checksummed and not files and dist_rank() == 0:
        log.warning("%s has no %s (written by an older version): only its structure was "
                    "checked", ckpt_dir, CHECKSUM_FILE)
    return problems + files


def newest_intact(root: str | Path) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """(newest intact checkpoint under ``root`` or None, the newer corrupt ones with their
    problems). Collective; moves nothing."""
    corrupt = []
    for _, path in reversed(broadcast_object(list_checkpoints(root) if dist_rank() == 0
                                             else None)):
        problems = verify_checkpoint(path)
        if not problems:
            return path, corrupt
        corrupt.append((path, problems))
    return None, corrupt


def derived_seed(seed: int, step: int, rank: int) -> int:
    """A seed for rank ``rank`` at ``step``, independent across ranks and steps."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def root_cause(err: BaseException) -> str:
    """The first rank's error inside a DCP CheckpointException (else the error itself)."""
    if isinstance(err, CheckpointException) and err.failures:
        inner, _ = next(iter(err.failures.values()))
        return describe(inner)
    return describe(err)


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.<k>`` when that is taken."""
    target, k = folder / name, 1
    while target.exists():
        target, k = folder / f"{name}.{k}", k + 1
    return target


def _agree(error: BaseException | None, *, doing: str, path: Path,
           cleanup: Callable[[], None] | None = None) -> None:
    """Collective: raise on every rank when ``error`` happened on any rank. A full, read-only or
    forbidden file system is a UserError (one line naming the path); any other error is
    re-raised where it happened and named on the other ranks. ``cleanup`` runs on rank 0."""
    report = None
    if error is not None:
        problem = storage_failure(error, path)
        report = ((str(storage_error(problem, path=path, doing=doing)), True)
                  if problem is not None else (root_cause(error), False))
    failed = [(rank, item) for rank, item in enumerate(gather_objects(report)) if item]
    if not failed:
        return
    if cleanup is not None and dist_rank() == 0:
        cleanup()
    rank, (message, is_storage) = failed[0]
    if is_storage:
        raise UserError(message) from error
    if error is not None:
        raise error
    raise RuntimeError(f"{path}: {doing} failed on rank {rank}: {message}")


def _on_main(action: Callable[[], Any], *, doing: str, path: Path) -> Any:
    """Run ``action`` on rank 0 only; its result, or its failure, reaches every rank."""
    result, error, refusal = None, None, None
    if dist_rank() == 0:
        try:
            result = action()
        except UserError as err:
            refusal = str(err)
        except Exception as err:  # noqa: BLE001 - agreed on (and kept) in _agree
            error = err
    _agree(error, doing=doing, path=path)
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise UserError(refusal)
    return broadcast_object(result)


def _valid_meta(ckpt_dir: Path) -> dict[str, Any] | None:
    """A checkpoint's meta.json when it reads as one (rank 0 reads, every rank gets it)."""
    return broadcast_object(read_meta(ckpt_dir) if dist_rank() == 0
                            and not _meta_problems(ckpt_dir) else None)


class Checkpointer:
    """Saves and restores a ``TrainState`` under ``root`` (usually ``OUTPUT/checkpoints``).

    ``keep_last``: complete checkpoints to keep (None or 0: all). ``config``: the run's settings
    (JSON-able) without its lr schedule; its hash is stored and compared on resume, and it goes
    into the provenance block of ``meta.json``. ``schedule``: the lr schedule's record
    (``OptimSettings.schedule_record``), compared on resume on its own; None: not compared.
    ``stale`` and ``new_schedule``: what resuming does with checkpoints of other settings or
    another schedule (module docstring). ``events``: warnings of the last resolve and load, for
    the metrics file.
    """

    def __init__(self, root: str | Path, *, keep_last: int | None = 3, config: Any = None,
                 schedule: dict[str, Any] | None = None, stale: StalePolicy = "refuse",
                 new_schedule: bool = False) -> None:
        if keep_last is not None and keep_last < 0:
            raise ValueError(f"keep_last must be >= 0 (0 or None keeps all), got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last or None
        self.config = config if config is not None else {}
        self.config_hash = config_hash(self.config)
        self.schedule = json.loads(json.dumps(schedule)) if schedule is not None else None
        self.stale = stale
        self.new_schedule = new_schedule
        self.events: list[dict[str, Any]] = []

    # -- choosing what to resume -----------------------------------------------------------

    def resolve(self, spec: str) -> Path | None:
        """``none`` (fresh; refused when checkpoints exist here), ``latest`` (newest intact one
        of these settings; error if none), ``auto`` (the same, else fresh) or a checkpoint
        folder path (verified; its settings are not compared, its lr schedule is, in
        :meth:`load`). Collective: every rank gets the same answer. Cleans up leftovers of
        interrupted saves and prunes first."""
        _on_main(self._clean_leftovers, doing="cleaning up interrupted saves", path=self.root)
        if spec == "none":
            return _on_main(self._refuse_existing, doing="listing checkpoints", path=self.root)
        if spec in ("auto", "latest"):
            return self._newest_usable(spec)
        path = Path(spec)
        _on_main(lambda: read_meta(path), doing="reading the checkpoint", path=path)
        problems = verify_checkpoint(path)
        if problems:
            raise UserError(f"{path} is damaged: {'; '.join(problems)}. Resume another "
                            "checkpoint (--resume latest takes the newest intact one)")
        return path

    def _refuse_existing(self) -> None:
        latest = latest_checkpoint(self.root)
        if latest is not None:
            raise UserError(
                f"{self.root} already holds checkpoints (latest {latest.name}); resume with "
                "--resume auto or latest, or write the new run to another output folder")

    def _clean_leftovers(self) -> None:
        if not self.root.is_dir():
            return
        for child in sorted(self.root.iterdir()):
            match = _LEFTOVER.match(child.name)
            if not match:
                continue
            final = self.root / step_dir_name(int(match.group(1)))
            if match.group(2) == "old" and not final.exists():
                os.rename(child, final)  # a re-save was killed between its two renames
                log.warning("restored %s from %s (a re-save of that step was interrupted)",
                            final, child.name)
            else:
                shutil.rmtree(child)
                log.info("removed %s, left by an interrupted save or prune", child)

    def _verdict(self, meta: dict[str, Any]) -> str:
        """"same", "schedule" (only the lr schedule differs) or "other" settings."""
        if meta.get("config_hash") != self.config_hash:
            return "other"
        saved = meta.get("schedule")
        if self.schedule is not None and saved is not None and saved != self.schedule:
            return "schedule"
        return "same"

    def _newest_usable(self, spec: str) -> Path | None:
        found = broadcast_object(list_checkpoints(self.root) if dist_rank() == 0 else None)
        corrupt: list[tuple[Path, list[str]]] = []
        stale: list[tuple[Path, dict[str, Any]]] = []
        chosen = None
        for _, path in reversed(found):
            meta = _valid_meta(path)
            verdict = "corrupt" if meta is None else self._verdict(meta)
            if verdict == "schedule" and self.new_schedule:
                verdict = "same"
            if verdict in ("other", "schedule") and self._sets_aside(spec):
                stale.append((path, meta))  # not used whatever its bytes: no need to hash them
                continue
            problems = verify_checkpoint(path)  # settings are judged on intact bytes only
            if problems:
                corrupt.append((path, problems))
                continue
            if verdict == "same":
                chosen = path
                break
            raise UserError(self._stale_message(path, meta, verdict))
        if chosen is None and corrupt:
            listing = "; ".join(f"{p.name}: {', '.join(problems)}" for p, problems in corrupt)
            raise UserError(
                f"{self.root}: no intact checkpoint to resume ({listing}). Nothing was moved. "
                f"Move the damaged folders away (or delete {self.root}) to start fresh, or "
                "restore them from a copy")
        _on_main(lambda: self._move_aside(corrupt, stale), doing="setting checkpoints aside",
                 path=self.root)
        if chosen is None and spec == "latest":
            raise UserError(f"--resume latest: no complete checkpoint under {self.root}; "
                            "use --resume auto to start fresh when there is none")
        return chosen

    def _sets_aside(self, spec: str) -> bool:
        return self.stale == "set-aside" and spec == "auto"

    def _move_aside(self, corrupt: list[tuple[Path, list[str]]],
                    stale: list[tuple[Path, dict[str, Any]]]) -> None:
        for path, problems in corrupt:
            folder = self.root.with_name(f"{self.root.name}.corrupt")
            folder.mkdir(parents=True, exist_ok=True)
            target = _free_name(folder, path.name)
            os.rename(path, target)
            message = (f"checkpoint {path} is corrupt ({'; '.join(problems)}): moved to "
                       f"{target}; resuming from the newest intact one")
            log.warning("%s", message)
            self.events.append({"event": "checkpoint_corrupt", "checkpoint": str(path),
                                "moved_to": str(target), "problems": problems,
                                "warning": message})
        for path, meta in stale:
            saved = meta.get("config_hash")
            folder = self.root.with_name(f"{self.root.name}.stale-{saved}")
            folder.mkdir(parents=True, exist_ok=True)
            target = _free_name(folder, path.name)
            os.rename(path, target)
            message = (f"{path} holds a checkpoint of other settings (config hash {saved}, "
                       f"this run {self.config_hash}"
                       + (f"; schedule {describe_schedule(meta['schedule'])}"
                          if meta.get("schedule") else "")
                       + f"): moved to {target}")
            log.warning("%s", message)
            self.events.append({"event": "checkpoint_set_aside", "checkpoint": str(path),
                                "moved_to": str(target), "warning": message})

    def _stale_message(self, path: Path, meta: dict[str, Any], verdict: str) -> str:
        if verdict == "schedule":
            return (f"{path} was trained with another learning-rate schedule "
                    f"({describe_schedule(meta['schedule'])}; this run: "
                    f"{describe_schedule(self.schedule or {})}). Pass "
                    "--resume-with-new-schedule to continue it on the new schedule (the log "
                    "shows both), write the new run to another output folder, or "
                    "--stale-checkpoints set-aside to start over")
        return (f"{path} was written with other settings (config hash "
                f"{meta.get('config_hash')}, this run {self.config_hash}: a model, the data, an "
                "optimizer or objective option, or an input folder changed). Start the new run "
                f"in an empty output folder (or delete {self.root}), pass --resume {path} to "
                "continue it anyway, or --stale-checkpoints set-aside")

    # -- saving -----------------------------------------------------------------------------

    def save(self, state: TrainState, env: DistEnv, *, history: Path | None = None) -> Path:
        """Write a checkpoint of ``state`` at ``state.progress.step`` (collective: all ranks).
        ``history``: the metrics file so far, stored with the checkpoint (rank 0 reads it)."""
        step = state.progress.step
        final = self.root / step_dir_name(step)
        tmp = self.root / f".{step_dir_name(step)}.tmp"
        doing = f"writing checkpoint {final.name}"

        def prepare() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".step_*.tmp"):  # left by a save that was killed
                shutil.rmtree(stale)
            (tmp / "rng").mkdir(parents=True)

        def discard() -> None:
            shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs

        _on_main(prepare, doing=doing, path=tmp)
        error = None
        metadata = None
        try:
            model_sd, optim_sd = get_state_dict(state.model, state.optimizer,
                                                options=_DSD_OPTIONS)
            metadata = dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
            torch.save(rng_state(), tmp / "rng" / f"rank_{env.rank:05d}.pt")
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - agreed on below
            error = err
        _agree(error, doing=doing, path=tmp, cleanup=discard)

        names = broadcast_object(self._written_files(tmp, metadata, env.world_size)
                                 if env.is_main else None)
        entries, failure = hash_files_shared(tmp, names)
        if failure is not None:
            _on_main(discard, doing=doing, path=tmp)
            raise RuntimeError(f"{tmp}: hashing the checkpoint failed ({failure})")

        def commit() -> None:
            try:
                if history is not None and history.is_file():
                    shutil.copyfile(history, tmp / HISTORY_FILE)
                write_json(tmp / META_FILE, self._meta(state, env))
                own = [HISTORY_FILE, META_FILE] if (tmp / HISTORY_FILE).is_file() else [META_FILE]
                write_checksums(tmp, entries | hash_files(tmp, own))
                self._publish(tmp, final)
            except BaseException:
                discard()
                raise
            self._prune()
            log.info("saved checkpoint %s", final)

        _on_main(commit, doing=doing, path=tmp)
        return final

    def _publish(self, tmp: Path, final: Path) -> None:
        """Make the written folder visible under its final name (the commit point); a step
        saved again after resuming from an earlier checkpoint replaces the old folder."""
        publish_dir(tmp, final)

    @staticmethod
    def _written_files(tmp: Path, metadata: Any, world_size: int) -> list[str]:
        """The files DCP and the RNG saves wrote, named by DCP's own metadata (a directory
        listing can miss other nodes' files on a network file system)."""
        shards = {info.relative_path
                  for info in (getattr(metadata, "storage_data", None) or {}).values()}
        if not shards:
            shards = {p.name for p in tmp.glob("*.distcp")}
        rng = [f"rng/rank_{rank:05d}.pt" for rank in range(world_size)]
        return sorted(shards) + [".metadata", *rng]

    def _meta(self, state: TrainState, env: DistEnv) -> dict[str, Any]:
        return {
            **asdict(state.progress),
            "world_size": env.world_size,
            "config_hash": self.config_hash,
            "schedule": self.schedule,
            "sampler": state.sampler.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "saved_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "provenance": provenance(self.config),
        }

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for _, path in list_checkpoints(self.root)[:-self.keep_last]:
            doomed = path.with_name(f".{path.name}.prune")
            shutil.rmtree(doomed, ignore_errors=True)
            os.rename(path, doomed)  # from here on it is no checkpoint, whatever is left of it
            shutil.rmtree(doomed)
            log.info("removed old checkpoint %s", path.name)

    # -- loading ----------------------------------------------------------------------------

    def load(self, path: str | Path, state: TrainState, env: DistEnv, *, seed: int) -> None:
        """Restore ``state`` (in place) from checkpoint ``path`` (collective: all ranks)."""
        path = Path(path)
        meta = read_meta(path)
        saved_world = int(meta["world_size"])
        if env.is_main:
            if saved_world != env.world_size:
                log.info("resuming %s saved by %d rank(s) on %d rank(s): DCP reshards the model "
                         "and optimizer state", path, saved_world, env.world_size)
            else:
                log.info("resuming %s", path)
            if meta.get("config_hash") != self.config_hash:
                log.warning("the checkpoint was written with different settings (config hash "
                            "%s, now %s)", meta.get("config_hash"), self.config_hash)

        model_sd, optim_sd = get_state_dict(state.model, state.optimizer, options=_DSD_OPTIONS)
        sd = {"model": model_sd, "optim": optim_sd}
        try:
            dcp.load(sd, checkpoint_id=path)
        except (Exception, CheckpointException) as err:
            raise UserError(f"{path}: the checkpoint cannot be loaded ({root_cause(err)}). "
                            "Resume an older one with --resume <its step_<n> folder>, or move "
                            "this one away") from err
        set_state_dict(state.model, state.optimizer, model_state_dict=sd["model"],
                       optim_state_dict=sd["optim"], options=_DSD_OPTIONS)
        state.scheduler.load_state_dict(meta["scheduler"])
        self._continue_schedule(path, meta, state, env)
        state.sampler.load_state_dict(meta["sampler"])
        state.progress = Progress(**{k: int(meta[k]) for k in asdict(Progress())})

        rng_file = path / "rng" / f"rank_{env.rank:05d}.pt"
        if saved_world == env.world_size and rng_file.is_file():
            # Our own file inside the checkpoint (python/numpy states are not plain tensors).
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            seed_everything(derived_seed(seed, state.progress.step, env.rank))
            if env.is_main:
                log.warning("RNG states were saved by %d rank(s), this run has %d: every rank is "
                            "re-seeded from (seed, step, rank); the data order is unaffected",
                            saved_world, env.world_size)
        barrier()

    def _continue_schedule(self, path: Path, meta: dict[str, Any], state: TrainState,
                           env: DistEnv) -> None:
        """Keep the saved schedule, or with ``new_schedule`` move to this run's shape."""
        saved = meta.get("schedule")
        if self.schedule is None or saved is None or saved == self.schedule:
            return
        if not self.new_schedule:
            raise UserError(self._stale_message(path, meta, "schedule"))
        before = state.optimizer.param_groups[0]["lr"]
        rebase_schedule(state.scheduler, self.schedule["lr"])
        after = state.optimizer.param_groups[0]["lr"]
        message = (f"resuming {path.name} on a new lr schedule: was {describe_schedule(saved)} "
                   f"(next update's lr {before:.4g}), now {describe_schedule(self.schedule)} "
                   f"(next update's lr {after:.4g}) at update {state.scheduler.last_epoch}")
        if env.is_main:
            log.warning("%s", message)
        self.events.append({"event": "schedule_changed", "old": saved, "new": self.schedule,
                            "lr_before": before, "lr_after": after, "warning": message})


def load_model_weights(ckpt_dir: str | Path, model: nn.Module) -> nn.Module:
    """Load a checkpoint's model weights into a plain (unwrapped) ``model`` in this process alone.

    No process group is needed (DCP reads the shards of every rank and assembles full tensors).
    ``model`` must have the architecture that was trained; its tensors keep their dtype and device.
    """
    read_meta(ckpt_dir)
    state = model.state_dict()
    with warnings.catch_warnings():  # DCP warns on every single-process load; that is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": state}, checkpoint_id=Path(ckpt_dir), no_dist=True)
    model.load_state_dict(state)
    return model
