"""Audio files as prepare sees them: a header probe (frames and rate), and audio bytes stored
once as FLAC.

Prepare opens only headers (duration for the report and segment bounds); decoding every sample
is validation's job.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

import soundfile as sf

from stages.common.jsonl import atomic_writer

# Source sample formats that need more than 16 bits in FLAC; everything else (16-bit and
# narrower PCM, mu-law, lossy codecs) fits 16 bits without loss of what it holds.
_WIDE_SUBTYPES = frozenset({"PCM_24", "PCM_32", "FLOAT", "DOUBLE"})
_FLAC_MAGIC = b"fLaC"


class AudioProblem(Exception):
    """Audio that cannot be used: ``reason`` is a prepare problem code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _message(err: Exception) -> str:
    return getattr(err, "error_string", None) or str(err) or type(err).__name__


@lru_cache(maxsize=4096)  # segments of one recording come together; keep recent files only
def probe(path: str) -> tuple[int, int]:
    """(frames, sample rate) of an audio file from its header; AudioProblem if it is missing,
    unreadable or empty."""
    if not os.path.isfile(path):
        raise AudioProblem("audio_not_found", f"{path} does not exist")
    try:
        info = sf.info(path)
    except (sf.SoundFileError, RuntimeError, TypeError, OSError) as err:
        raise AudioProblem("audio_unreadable", f"{path}: {_message(err)}") from None
    if info.frames <= 0:
        raise AudioProblem("audio_unreadable", f"{path} holds no samples")
    return info.frames, info.samplerate


def store_flac(data: bytes, path: Path) -> tuple[int, int]:
    """Write encoded audio ``data`` (any format soundfile reads) to ``path`` as FLAC, verbatim
    when it already is FLAC; returns (frames, sample rate). Channels are kept."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as source:
            rate, wide = source.samplerate, source.subtype in _WIDE_SUBTYPES
            samples = None
            if data[:4] == _FLAC_MAGIC:
                frames = source.frames
            else:
                samples = source.read(dtype="int32" if wide else "int16", always_2d=True)
                frames = len(samples)
    except (sf.SoundFileError, RuntimeError, TypeError) as err:
        raise AudioProblem("audio_unreadable", f"the row's audio bytes: {_message(err)}") from None
    if frames <= 0:
        raise AudioProblem("audio_unreadable", "the row's audio bytes hold no samples")
    try:
        with atomic_writer(path, "wb") as handle:
            if samples is None:
                handle.write(data)
            else:
                sf.write(handle, samples, rate, format="FLAC",
                         subtype="PCM_24" if wide else "PCM_16")
    except (sf.SoundFileError, RuntimeError, ValueError) as err:  # e.g. > 8 channels
        raise AudioProblem("audio_unreadable", f"cannot store the row's audio as FLAC: "
                                               f"{_message(err)}") from None
    return frames, rate
