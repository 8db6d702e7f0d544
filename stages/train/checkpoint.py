"""Checkpoints with torch.distributed.checkpoint (DCP) that a killed run can always resume from.

Layout of ``<root>/step_<n>/``, n the loop step in 8 digits (``step_00000850``)::

    .metadata, __*_*.distcp   DCP: {"model": ..., "optim": ...}, every rank writes its shards
    rng/rank_XXXXX.pt         each rank's python/numpy/torch(/CUDA) generator states
    meta.json                 step counters, data position, scheduler state, world size at save,
                              config hash, provenance; written last: it marks the folder complete

Atomicity: everything is written into ``.step_<n>.tmp``; after a barrier rank 0 writes
``meta.json`` and renames the folder. A kill at any moment leaves either the previous complete
checkpoints untouched plus a tmp folder (ignored, removed by the next save) or the new complete
one. ``latest`` is the newest folder named ``step_<n>`` that holds ``meta.json``. Older ones
beyond ``keep_last`` are deleted only after a newer one is complete. All ranks must see the same
folder (a shared file system across nodes).

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

import logging
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from stages.common.errors import UserError
from stages.common.fsutil import publish_dir
from stages.common.jsonl import read_json, write_json
from stages.common.provenance import config_hash, provenance
from stages.train.data import ResumableSampler
from stages.train.distributed import (
    DistEnv,
    barrier,
    broadcast_object,
    rng_state,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger(__name__)

META_FILE = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_DSD_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


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
    """Complete checkpoints under ``root`` as (step, folder), oldest first."""
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


def derived_seed(seed: int, step: int, rank: int) -> int:
    """A seed for rank ``rank`` at ``step``, independent across ranks and steps."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def dist_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class Checkpointer:
    """Saves and restores a ``TrainState`` under ``root`` (usually ``OUTPUT/checkpoints``).

    ``keep_last``: complete checkpoints to keep (None or 0: all). ``config``: the run's settings
    (JSON-able); its hash is stored and compared on resume, and it goes into the provenance block
    of ``meta.json``.
    """

    def __init__(self, root: str | Path, *, keep_last: int | None = 3, config: Any = None) -> None:
        if keep_last is not None and keep_last < 0:
            raise ValueError(f"keep_last must be >= 0 (0 or None keeps all), got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last or None
        self.config = config if config is not None else {}
        self.config_hash = config_hash(self.config)

    # -- choosing what to resume -----------------------------------------------------------

    def resolve(self, spec: str) -> Path | None:
        """``none`` (fresh; refused when checkpoints exist here), ``latest`` (newest complete;
        error if none), ``auto`` (latest if any, else fresh) or a checkpoint folder path.
        Decided on rank 0 and broadcast, so all ranks load the same one."""
        decision: Path | str | None = None
        if dist_rank() == 0:
            try:
                decision = self._resolve_here(spec)
            except UserError as err:
                decision = f"error: {err}"
        decision = broadcast_object(decision)
        if isinstance(decision, str):
            raise UserError(decision.removeprefix("error: "))
        return decision

    def _resolve_here(self, spec: str) -> Path | None:
        latest = latest_checkpoint(self.root)
        if spec == "none":
            if latest is not None:
                raise UserError(
                    f"{self.root} already holds checkpoints (latest {latest.name}); resume with "
                    "--resume auto or latest, or write the new run to another output folder"
                )
            return None
        if spec == "auto":
            return latest
        if spec == "latest":
            if latest is None:
                raise UserError(f"--resume latest: no complete checkpoint under {self.root}; "
                                "use --resume auto to start fresh when there is none")
            return latest
        path = Path(spec)
        read_meta(path)  # raises a clear error when it is not a complete checkpoint
        return path

    # -- saving -----------------------------------------------------------------------------

    def save(self, state: TrainState, env: DistEnv) -> Path:
        """Write a checkpoint of ``state`` at ``state.progress.step`` (collective: all ranks)."""
        step = state.progress.step
        final = self.root / step_dir_name(step)
        tmp = self.root / f".{step_dir_name(step)}.tmp"
        if env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".step_*.tmp"):  # left by a save that was killed
                shutil.rmtree(stale)
            (tmp / "rng").mkdir(parents=True)
        barrier()

        model_sd, optim_sd = get_state_dict(state.model, state.optimizer, options=_DSD_OPTIONS)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        torch.save(rng_state(), tmp / "rng" / f"rank_{env.rank:05d}.pt")
        barrier()

        if env.is_main:
            write_json(tmp / META_FILE, self._meta(state, env))
            self._publish(tmp, final)
            self._prune()
            log.info("saved checkpoint %s", final)
        barrier()
        return final

    def _meta(self, state: TrainState, env: DistEnv) -> dict[str, Any]:
        return {
            **asdict(state.progress),
            "world_size": env.world_size,
            "config_hash": self.config_hash,
            "sampler": state.sampler.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "saved_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "provenance": provenance(self.config),
        }

    def _publish(self, tmp: Path, final: Path) -> None:
        """Make the written folder visible under its final name (the commit point); a step
        saved again after resuming from an earlier checkpoint replaces the old folder."""
        publish_dir(tmp, final)

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for _, path in list_checkpoints(self.root)[:-self.keep_last]:
            shutil.rmtree(path)
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
        dcp.load(sd, checkpoint_id=path)
        set_state_dict(state.model, state.optimizer, model_state_dict=sd["model"],
                       optim_state_dict=sd["optim"], options=_DSD_OPTIONS)
        state.scheduler.load_state_dict(meta["scheduler"])
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
