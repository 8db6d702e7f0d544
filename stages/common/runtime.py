"""Where a stage computes: its --device, --dtype and --threads options, resolved one way.

``auto`` means CUDA when torch sees a GPU, else the CPU; the ``auto`` dtype is bfloat16 on CUDA
and float32 on the CPU (the dtype the models compute in there). Bad values are a
:class:`~stages.common.errors.UserError` that says what to give instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from stages.common.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_runtime_arguments(parser: argparse.ArgumentParser | Any, *, device: str = "auto",
                          devices: Sequence[str] | None = None,
                          dtypes: Sequence[str] | None = None) -> None:
    """Add ``--device`` (default ``device``; ``devices``: the only accepted values, else auto,
    cpu, cuda or cuda:N), ``--dtype`` (only when ``dtypes`` names the choices besides auto) and
    ``--threads`` to a parser or an argument group."""
    if devices is None:
        parser.add_argument("--device", default=device,
                            help=f"auto (cuda if available), cpu, cuda or cuda:N ({device})")
    else:
        parser.add_argument("--device", choices=list(devices), default=device,
                            help=f"auto: CUDA when available ({device})")
    if dtypes is not None:
        parser.add_argument("--dtype", choices=["auto", *dtypes], default="auto",
                            help="auto: bfloat16 on cuda, float32 on cpu (auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice)")


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
