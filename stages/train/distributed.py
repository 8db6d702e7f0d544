"""Process-group setup and the few collectives the trainer needs.

Every run has a process group, also a plain single process: then a world of one over an in-memory
store (no port, no torchrun). That keeps one code path: the model is always FSDP2-wrapped, its
state dict always holds DTensors, and a checkpoint written by one process reshards onto many and
back exactly as one written by many does.

Backend: NCCL when the device is CUDA, gloo on CPU.

A rank started by a launcher (torchrun) dies with it. torchrun starts every worker in a process
session of its own, so killing the launcher's process group (a scheduler cancelling a job, a
terminal's Ctrl-C, ``kill -- -PGID``) would leave the workers running on: they would finish the
run, write checkpoints and metrics beside a retry. :func:`exit_with_launcher` asks Linux to
SIGKILL the worker when its parent exits (``prctl(PR_SET_PDEATHSIG)``), and elsewhere watches the
parent pid from a thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, its device and the collective backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_launcher(poll_seconds: float = 1.0) -> str:
    """Make this process die (SIGKILL) when the process that started it exits; returns how
    ("prctl" or "watchdog"). Call it early in a worker, before any real work."""
    parent = os.getppid()
    how = "watchdog"
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):  # no libc prctl: fall back to watching
            pass
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "watchdog":
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(poll_seconds)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()
    return how


def init_distributed(device: str | None = None) -> DistEnv:
    """Join (or create) the default process group and return this process's place in it.

    ``device``: "cpu", "cuda", or None for CUDA when available. Under torchrun the group comes from
    the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); otherwise a world of one is
    made over an in-memory store. Calling it again returns the existing group's env.
    """
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    backend = "nccl" if kind == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")

    if not dist.is_initialized():
        if _launched_by_torchrun():
            exit_with_launcher()
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    elif dist.get_backend() != backend:
        raise RuntimeError(
            f"a process group with backend {dist.get_backend()!r} already exists; "
            f"device {kind!r} needs {backend!r}"
        )
    env = DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        backend=backend,
    )
    if env.is_main:
        log.info("process group: %d rank(s), backend %s, device %s",
                 env.world_size, backend, dev.type)
    return env


def shutdown() -> None:
    """Leave the process group (safe to call when none exists)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def dist_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def dist_world() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (used so all ranks agree on a path or a decision)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) with the same value.

    Call it with the same seed on every rank before building the model: FSDP2 shards each rank's
    own local copy of the parameters (it does not broadcast), so a randomly initialized model must
    come out identical on every rank.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """This process's random-generator states (python, numpy, torch CPU, CUDA if present)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
