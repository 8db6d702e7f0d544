"""Utterances from validated manifests, and the batches models consume.

Stages downstream of ``validate`` read validated manifests (absolute ``audio``, ``id`` and
``duration`` present); this module turns their rows into ``Utterance`` records and loads the
audio of a batch on demand, so only the clips in flight are held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import UserError
from stages.common.jsonl import iter_jsonl
from stages.data.audio import load_audio

# Fields a validated manifest row always has (see stages/validate.py).
VALIDATED_FIELDS = ("audio", "id", "duration")


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str
    duration: float
    text: str | None = None
    language: str | None = None
    begin_time: float = -1
    end_time: float = -1
    row: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def load(self) -> np.ndarray:
        """The segment as mono float32 at 16 kHz."""
        return load_audio(self.audio, self.begin_time, self.end_time)


def read_utterances(path: str | Path, *, require_text: bool = False) -> list[Utterance]:
    """Read a validated manifest. Rows missing validated fields are an error naming the line:
    the file did not come out of the validate stage."""
    utterances = []
    for number, row in iter_jsonl(path, hint="run the validate stage on this manifest first"):
        missing = [key for key in VALIDATED_FIELDS if key not in row]
        if missing:
            raise UserError(f"{path}:{number}: missing {', '.join(missing)}; this stage reads "
                            "validated manifests (python -m stages.validate)")
        text = row.get("text")
        if require_text and not (isinstance(text, str) and text.strip()):
            raise UserError(f"{path}:{number}: no reference text; this stage needs `text`")
        utterances.append(Utterance(
            id=str(row["id"]), audio=row["audio"], duration=float(row["duration"]),
            text=text, language=row.get("language"),
            begin_time=row.get("begin_time", -1), end_time=row.get("end_time", -1), row=row,
        ))
    if not utterances:
        raise UserError(f"{path}: the manifest has no utterances")
    return utterances


@dataclass
class AudioBatch:
    """A batch with its audio loaded: what adapters take (16 kHz float32 clips)."""

    utterances: list[Utterance]
    audios: list[np.ndarray]

    @property
    def ids(self) -> list[str]:
        return [u.id for u in self.utterances]

    @property
    def texts(self) -> list[str | None]:
        return [u.text for u in self.utterances]

    @property
    def languages(self) -> list[str | None]:
        return [u.language for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)


def load_batch(utterances: Sequence[Utterance]) -> AudioBatch:
    return AudioBatch(list(utterances), [u.load() for u in utterances])


def duration_sorted_batches(utterances: Sequence[Utterance], batch_size: int
                            ) -> Iterator[list[Utterance]]:
    """Batches of similar duration (longest first, so memory problems show at once), for
    inference: less padding, and the first batch is the most demanding."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ordered = sorted(utterances, key=lambda u: (-u.duration, u.id))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start:start + batch_size]
