"""Model adapters (one per family), how stages load them, and batched transcription.

``load_adapter(path_or_id)`` is the entry point for every stage: it reads the checkpoint's
``model_type``, picks the family and returns an :class:`AsrAdapter`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from transformers import AutoConfig

from stages.common.errors import UserError
from stages.common.settings import setting
from stages.models.audio_chat_lm import AudioChatLmAdapter
from stages.models.base import AsrAdapter
from stages.models.qwen3_asr import Qwen3AsrAdapter
from stages.models.whisper import WhisperAdapter
from stages.models.window_attention import use_packed_window_attention

log = logging.getLogger(__name__)

FAMILIES: dict[str, type[AsrAdapter]] = {
    Qwen3AsrAdapter.family: Qwen3AsrAdapter,
    AudioChatLmAdapter.family: AudioChatLmAdapter,
    WhisperAdapter.family: WhisperAdapter,
}
# The family names as a type, for settings that name one.
Family = Literal["qwen3_asr", "audio_chat_lm", "whisper"]
assert set(get_args(Family)) == set(FAMILIES), "Family must list every adapter family"
# transformers model_type -> family, for checkpoints that do not name their family.
MODEL_TYPE_FAMILY = {
    "qwen3_asr": Qwen3AsrAdapter.family,
    "glmasr": AudioChatLmAdapter.family,
    "whisper": WhisperAdapter.family,
}

__all__ = ["FAMILIES", "MODEL_TYPE_FAMILY", "AsrAdapter", "AudioChatLmAdapter",
           "Family", "ModelLoading", "Qwen3AsrAdapter", "WhisperAdapter", "family_of",
           "load_adapter"]


@dataclass(frozen=True, kw_only=True)
class ModelLoading:
    """How a stage loads its model (for :func:`load_adapter`)."""

    family: Family | None = setting(None, help="adapter family (default: from the checkpoint's "
                                               "model_type)")
    trust_remote_code: bool = setting(False, help="allow checkpoints that ship their own model "
                                                  "code")
    packed_audio_windows: bool = setting(
        False, help="Qwen3-ASR audio towers: every attention window in one SDPA call instead of "
        "transformers' per-window loop (3-4x faster encoder on an H200, the same results up "
        "to rounding; off until multi-seed training runs confirm it, README 'The GPU study')")


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
                 trust_remote_code: bool = False, packed_audio_windows: bool = False,
                 **options: Any) -> AsrAdapter:
    """Load a checkpoint behind the adapter of its family (``family`` overrides detection).

    ``packed_audio_windows``: a Qwen3-ASR audio tower attends in one call for all windows
    (:mod:`stages.models.window_attention`); other models are unchanged. ``options`` go to the
    adapter: ``stop_token`` (any family), ``instruction`` (audio_chat_lm).
    """
    if family is None:
        family = family_of(path_or_id, trust_remote_code=trust_remote_code)
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; known families: "
                        f"{', '.join(FAMILIES)}")
    adapter = FAMILIES[family].load(path_or_id, device=device, dtype=dtype,
                                    trust_remote_code=trust_remote_code, **options)
    if packed_audio_windows and use_packed_window_attention(adapter.model):
        log.info("%s: audio attention windows packed into one call", path_or_id)
    return adapter
