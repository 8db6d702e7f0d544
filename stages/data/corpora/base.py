"""What a corpus reader hands the prepare driver: utterance entries, problems and skips.

A reader (one module per format in this package) walks a corpus' own layout and yields, in the
corpus' order, an :class:`Entry` per utterance it could describe, a :class:`Problem` for each
thing that stops an utterance from becoming a manifest row (named by file and line), and a
:class:`Skip` for audio that is deliberately left out (audio without a transcript). The driver
(``stages.data.prepare``) checks ids, languages and audio, writes the rows and counts the rest:
nothing a reader sees disappears without a trace in the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.errors import UserError

# Problem code -> what it means (`python -m stages.prepare --help` and the report list them).
PROBLEMS: dict[str, str] = {
    "bad_line": "a line (or row, or JSON item) does not have the format's fields",
    "audio_not_found": "a transcript names audio that does not exist",
    "audio_unreadable": "soundfile cannot open the audio (or decode the row's audio bytes)",
    "unsupported_command": "a wav.scp pipe command that is not a plain decode of one file",
    "unknown_recording": "a Kaldi segment names a recording that wav.scp lacks",
    "bad_segment": "segment times that are not numbers, negative, or end <= begin",
    "duplicate_id": "an utterance id used before (the detail names the first place)",
    "empty_text": "an empty transcript",
    "bad_language": "a language that is not an accepted ISO 639-1 code",
    "no_language": "no language for the utterance (utt2lang/column lacks it, no --language)",
}

# Skip code -> what it means. Skips are not errors; the report counts them with examples.
SKIPS: dict[str, str] = {
    "no_transcript": "audio (a file or a segment) that no transcript line names",
}

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Origin:
    """Where an entry or problem comes from: a file and a 1-based line, or an item inside a
    file without useful lines (``audios[3].segments[1]`` of a JSON file, ``row 12`` of a
    dataset)."""

    file: str
    line: int | None = None
    item: str | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        return f"{self.file} [{self.item}]" if self.item else self.file

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "item": self.item}


@dataclass(frozen=True)
class Entry:
    """One utterance as the corpus describes it. ``audio`` is a file path, or ``audio_bytes``
    holds encoded audio that the driver stores as FLAC (``name`` hints its file name).
    ``begin``/``end`` are set only for corpora with segments (``end`` -1: to the end of the
    file). ``language`` None: the --language option or the format's default applies."""

    id: str
    text: str
    origin: Origin
    audio: str | None = None
    audio_bytes: bytes | None = field(default=None, repr=False)
    begin: float | None = None
    end: float | None = None
    language: str | None = None
    note: str = ""  # where the audio came from, for messages ("wav.scp:4")

    @property
    def segmented(self) -> bool:
        return self.begin is not None


@dataclass(frozen=True)
class Problem:
    origin: Origin
    reason: str
    detail: str

    def __post_init__(self) -> None:
        if self.reason not in PROBLEMS:
            raise ValueError(f"unknown problem code {self.reason!r}")


@dataclass(frozen=True)
class Skip:
    reason: str
    what: str  # the audio path or segment left out

    def __post_init__(self) -> None:
        if self.reason not in SKIPS:
            raise ValueError(f"unknown skip code {self.reason!r}")


Item = Entry | Problem | Skip


@dataclass
class Listing:
    """A reader's answer: its items (a list, or a lazy iterator for large datasets), their
    number when known (for the progress bar), and facts about the source for the report."""

    items: Iterable[Item]
    total: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def text_lines(path: Path) -> Iterator[tuple[Origin, str] | Problem]:
    """(origin, line without its ending) for every non-blank line of a UTF-8 text file; a line
    that is not UTF-8 becomes a bad_line problem instead of stopping the file."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:  # some editors start UTF-8 files with a byte-order mark
                raw = raw.removeprefix(_BOM)
            origin = Origin(str(path), number)
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                yield Problem(origin, "bad_line", f"not valid UTF-8 (byte {err.start}); "
                                                  f"convert the file, e.g. iconv -t UTF-8")
                continue
            if line.strip():
                yield origin, line


def keyed_lines(path: Path) -> Iterator[tuple[Origin, str, str] | Problem]:
    """(origin, key, rest) for lines ``<key> <rest>`` (Kaldi's and the corpora's transcript
    form); the rest is stripped and may be empty."""
    for item in text_lines(path):
        if isinstance(item, Problem):
            yield item
            continue
        origin, line = item
        key, _, rest = line.strip().partition(" ")
        if "\t" in key:  # a tab separates as well as a space
            key, _, more = key.partition("\t")
            rest = f"{more} {rest}"
        yield origin, key, rest.strip()


def choose(value: str | None, available: Iterable[str], *, what: str, where: str,
           hint: str = "") -> str:
    """``value`` if it is one of ``available``; else a UserError that lists them."""
    names = sorted(available)
    shown = ", ".join(names) if names else "none"
    if value is None:
        raise UserError(f"{where}: give --subset, the {what} to prepare (found: {shown}){hint}")
    if value not in names:
        raise UserError(f"{where}: unknown {what} {value!r}; found: {shown}{hint}")
    return value
