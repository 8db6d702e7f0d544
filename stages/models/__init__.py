"""Model adapters (one per family) and the tiny demo-model factory.

``load_adapter(path_or_id)`` is the entry point for every stage: it reads the checkpoint's
``model_type``, picks the family and returns an :class:`AsrAdapter`.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from transformers import AutoConfig

from stages.common.errors import UserError
from stages.models.audio_chat_lm import AudioChatLmAdapter
from stages.models.base import AsrAdapter
from stages.models.qwen3_asr import Qwen3AsrAdapter

FAMILIES: dict[str, type[AsrAdapter]] = {
    Qwen3AsrAdapter.family: Qwen3AsrAdapter,
    AudioChatLmAdapter.family: AudioChatLmAdapter,
}
# transformers model_type -> family, for checkpoints that do not name their family.
MODEL_TYPE_FAMILY = {
    "qwen3_asr": Qwen3AsrAdapter.family,
    "glmasr": AudioChatLmAdapter.family,
}

__all__ = ["FAMILIES", "MODEL_TYPE_FAMILY", "AsrAdapter", "AudioChatLmAdapter",
           "Qwen3AsrAdapter", "add_model_arguments", "family_of", "load_adapter"]


def add_model_arguments(parser: argparse.ArgumentParser | Any, *,
                        trust_remote_code: bool = True) -> None:
    """The options of how a stage loads its model: ``--family`` and (unless the stage adds it
    elsewhere) ``--trust-remote-code``, for :func:`load_adapter`."""
    parser.add_argument("--family", choices=sorted(FAMILIES), default=None,
                        help="adapter family (default: from the checkpoint's model_type)")
    if trust_remote_code:
        parser.add_argument("--trust-remote-code", action="store_true",
                            help="allow checkpoints that ship their own model code")


def family_of(path_or_id: str, *, trust_remote_code: bool = False) -> str:
    """The adapter family for a checkpoint, from its config's ``model_type``."""
    try:
        config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{path_or_id}: cannot read the model config ({err}); give a model "
                        "folder or hub id with a config.json") from err
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPE_FAMILY:
        known = ", ".join(f"{t} ({f})" for t, f in MODEL_TYPE_FAMILY.items())
        raise UserError(f"{path_or_id}: model_type {model_type!r} has no known adapter family; "
                        f"name the family explicitly (one of {', '.join(FAMILIES)}); model types "
                        f"recognised on their own: {known}")
    return MODEL_TYPE_FAMILY[model_type]


def load_adapter(path_or_id: str, *, family: str | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False, **options: Any) -> AsrAdapter:
    """Load a checkpoint behind the adapter of its family (``family`` overrides detection).

    ``options`` go to the adapter: ``stop_token`` (any family), ``instruction`` (audio_chat_lm).
    """
    if family is None:
        family = family_of(path_or_id, trust_remote_code=trust_remote_code)
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; known families: "
                        f"{', '.join(FAMILIES)}")
    return FAMILIES[family].load(path_or_id, device=device, dtype=dtype,
                                 trust_remote_code=trust_remote_code, **options)
