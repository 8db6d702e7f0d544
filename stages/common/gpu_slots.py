"""Spread single-GPU jobs over a machine's GPUs when nothing else says which GPU a job gets.

Snakemake's local executor counts a ``gpu`` resource but never tells a job *which* GPU it holds,
so on a machine with several GPUs every job would start on the first one. Before CUDA starts, a
stage that may use CUDA takes a slot: it holds an exclusive ``flock`` on a file
``gpu<id>.slot<n>`` (released by the kernel when the process ends, however it ends, so a
crashed job frees its slot) on the GPU whose slots are least taken, and narrows
``CUDA_VISIBLE_DEVICES`` to that GPU. A lock file that every job takes while choosing
serializes the choice, so jobs that start together do not all pick the same GPU.

- The candidates are the entries of ``CUDA_VISIBLE_DEVICES`` when it is set, else every GPU the
  driver (NVML) reports. One candidate (Slurm's single-GPU job, a user's choice) or none (a CPU
  machine): nothing to do.
- A rank started by torchrun (``LOCAL_RANK``) uses its rank's GPU; it takes that GPU's slot
  without changing anything, so the single-GPU jobs beside it see it.
- The slots live in ``$AUDIO_OPD_GPU_SLOTS_DIR``, by default a folder per user in the system's
  temporary directory: every pipeline of that user on the machine shares them.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SLOTS_DIR_ENV = "AUDIO_OPD_GPU_SLOTS_DIR"

# The slot this process holds: its open file keeps the lock for the process's lifetime.
_held: IO[str] | None = None


@dataclass(frozen=True)
class Claim:
    gpu: str        # the CUDA_VISIBLE_DEVICES entry of the GPU taken
    slot: int       # its slot file's number
    others: int     # slots of that GPU other processes held when it was taken
    candidates: int


def slots_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"audio-opd-gpu-slots-{os.getuid()}"
    return Path(os.environ.get(SLOTS_DIR_ENV) or default)


def nvml_gpu_count() -> int:
    """GPUs the NVIDIA driver reports, without starting CUDA (which would freeze
    CUDA_VISIBLE_DEVICES for this process); 0 without a driver."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    if nvml.nvmlInit_v2() != 0:
        return 0
    try:
        count = ctypes.c_uint(0)
        return count.value if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
    finally:
        nvml.nvmlShutdown()


def candidate_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [entry.strip() for entry in visible.split(",") if entry.strip()]
    return [str(index) for index in range(nvml_gpu_count())]


def wants_slot(device: object) -> bool:
    """Whether a stage's ``--device`` leaves the GPU to be chosen (auto or a bare cuda)."""
    return device in ("auto", "cuda")


def claim_gpu_slot() -> Claim | None:
    """Take a slot on the least-taken GPU (see the module docstring); None when there is no
    choice to make. Call before anything starts CUDA; a second call returns None."""
    global _held
    gpus = candidate_gpus()
    if _held is not None or len(gpus) < 2:
        return None
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and int(local_rank) >= len(gpus):
        return None  # the launcher's business; nothing to record
    folder = slots_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "choose.lock", "a") as choosing:
            fcntl.flock(choosing, fcntl.LOCK_EX)  # released when the with block closes it
            taken = {gpu: _taken_slots(folder, gpu) for gpu in gpus}
            if local_rank is not None:
                gpu = gpus[int(local_rank)]
            else:
                gpu = min(gpus, key=lambda entry: len(taken[entry]))  # ties: the first listed
            slot, handle = _lock_free_slot(folder, gpu, taken[gpu])
    except OSError as err:
        # The job can still run, only without spreading; say why so a pile-up is explained.
        log.warning("GPU slots unusable (%s; set %s to a writable folder): keeping "
                    "CUDA_VISIBLE_DEVICES as it is", err, SLOTS_DIR_ENV)
        return None
    _held = handle
    claim = Claim(gpu=gpu, slot=slot, others=len(taken[gpu]), candidates=len(gpus))
    if local_rank is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("GPU %s of %d (slot %d; %d other pipeline job(s) on it)", gpu, len(gpus), slot,
             claim.others)
    return claim


def _slot_prefix(gpu: str) -> str:
    """The name of ``gpu``'s slot files before their number (safe for any entry, e.g. UUIDs)."""
    return f"gpu{re.sub(r'[^A-Za-z0-9_-]', '_', gpu)}.slot"


def _taken_slots(folder: Path, gpu: str) -> set[int]:
    """Numbers of ``gpu``'s slot files that another process holds locked."""
    prefix = _slot_prefix(gpu)
    taken = set()
    for path in folder.glob(f"{prefix}*"):
        number = path.name[len(prefix):]
        if not number.isdigit():
            continue
        with open(path, "a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                taken.add(int(number))
    return taken


def _lock_free_slot(folder: Path, gpu: str, taken: set[int]) -> tuple[int, IO[str]]:
    slot = next(number for number in range(len(taken) + 1) if number not in taken)
    handle = open(folder / f"{_slot_prefix(gpu)}{slot}", "a+")  # noqa: SIM115 (held for life)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: checked under choose.lock
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}\n")  # who holds it, for a person looking
    handle.flush()
    return slot, handle
