"""Where a stage computes: its device, dtype and threads settings, resolved one way.

``auto`` means CUDA when torch sees a GPU, else the CPU; the ``auto`` dtype is bfloat16 on CUDA
and float32 on the CPU (the dtype the models compute in there). Bad values are a
:class:`~stages.common.errors.UserError` that says what to give instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from stages.common.errors import UserError
from stages.common.settings import setting

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class Threads:
    """How many CPU threads torch uses (it does not change what a run computes)."""

    threads: int | None = setting(None, volatile=True,
                                  help="CPU threads for torch (default: torch's own choice)")


@dataclass(frozen=True, kw_only=True)
class Runtime(Threads):
    """Where a stage computes: its device and CPU threads (neither changes what a run is)."""

    device: str = setting("auto", volatile=True, metavar="DEVICE",
                          help="auto (cuda if available), cpu, cuda or cuda:N")


@dataclass(frozen=True, kw_only=True)
class InferenceRuntime(Runtime):
    """Where and in which dtype a stage runs a model it does not train."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", help="auto: bfloat16 on cuda, float32 on cpu")


def resolve_device(spec: str) -> torch.device:
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N`` as a device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise UserError(f"--device {spec!r}: not a device ({err}); use auto, cpu, cuda or "
                        "cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {spec}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine; use "
                        "--device cpu (or auto)")
    return device


def resolve_dtype(spec: str, device: torch.device | str) -> torch.dtype:
    """A --dtype name as a dtype; ``auto``: bfloat16 on CUDA, float32 on the CPU."""
    if spec == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[spec]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16`` (the --dtype spelling, for logs and reports)."""
    return str(dtype).removeprefix("torch.")


def set_threads(threads: int | None) -> None:
    """Apply --threads (None: leave torch's own choice)."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
