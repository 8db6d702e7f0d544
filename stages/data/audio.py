"""Audio loading: soundfile read, mono mix, segment cut, soxr resampling to the model rate.

Every model in the pipeline consumes 16 kHz mono float32; this is the one place that produces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

TARGET_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Segment:
    """Frame bounds of a manifest segment inside its source file."""

    start: int
    stop: int
    sample_rate: int

    @property
    def seconds(self) -> float:
        return (self.stop - self.start) / self.sample_rate


class SegmentError(ValueError):
    """A segment that does not fit its file.

    ``kind`` says why, so callers need not parse the message: ``"out_of_range"`` (a bound at or
    past the end of the file) or ``"empty"`` (the range holds no frames).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def segment_frames(frames: int, sample_rate: int, begin: float = -1, end: float = -1) -> Segment:
    """Frame range of [begin, end) seconds; a negative bound means the file's start or end.

    Raises SegmentError (a ValueError) for an empty or inverted range or bounds past the end of
    the file; the validate stage maps its ``kind`` to a reason code.
    """
    start = 0 if begin is None or begin < 0 else round(begin * sample_rate)
    stop = frames if end is None or end < 0 else round(end * sample_rate)
    if start >= frames:
        raise SegmentError(f"segment starts at {start / sample_rate:.3f}s, past the end of the "
                           f"file ({frames / sample_rate:.3f}s)", "out_of_range")
    if stop > frames:
        raise SegmentError(f"segment ends at {stop / sample_rate:.3f}s, past the end of the "
                           f"file ({frames / sample_rate:.3f}s)", "out_of_range")
    if stop <= start:
        raise SegmentError(f"segment end {stop / sample_rate:.3f}s is not after its begin "
                           f"{start / sample_rate:.3f}s", "empty")
    return Segment(start, stop, sample_rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels of a (frames, channels) array; 1-D input is returned as is. One
    channel is taken as it is: a mean over a length-1 axis costs as much as reading the file."""
    if samples.ndim != 2:
        return samples
    return samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)


def resample(samples: np.ndarray, source_rate: int, target_rate: int = TARGET_SAMPLE_RATE
             ) -> np.ndarray:
    if source_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, source_rate, target_rate, quality="HQ").astype(np.float32)


def load_audio(path: str | Path, begin: float = -1, end: float = -1,
               target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Read a segment of ``path`` as mono float32 at ``target_rate``."""
    with sf.SoundFile(str(path)) as handle:
        seg = segment_frames(handle.frames, handle.samplerate, begin, end)
        handle.seek(seg.start)
        samples = handle.read(seg.stop - seg.start, dtype="float32", always_2d=True)
    return resample(to_mono(samples), seg.sample_rate, target_rate)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> None:
    """Write float samples as 16-bit PCM WAV (clipped to [-1, 1])."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16")
