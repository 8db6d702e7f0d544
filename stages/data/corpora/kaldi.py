"""A Kaldi data folder: wav.scp, text, and optionally segments and utt2lang.

Utterances come in the order of ``text``. Each is found through ``segments`` (when the folder
has one) and ``wav.scp``; a pipe command there resolves to the file it decodes
(``kaldi_pipes``). A transcript whose audio cannot be found, a segment naming an unknown
recording and a refused command are problems naming the line; recordings or segments without a
transcript are skipped and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stages.common.errors import UserError
from stages.data.corpora.base import (
    Entry,
    Listing,
    Origin,
    Problem,
    Skip,
    keyed_lines,
)
from stages.data.corpora.kaldi_pipes import UnsupportedCommand, piped_file
from stages.data.manifest import LineProblem, check_language

if TYPE_CHECKING:
    from stages.data.prepare import PrepareOptions

LAYOUT = """\
kaldi         --source data/test [--language zh]
    <source>/wav.scp    "<recording> <path>" or "<recording> <command> |": flac -c -d -s F |,
                        sox F -t wav - | and ffmpeg -i F -f wav - | read F (other pipes are
                        refused); relative paths start at the working directory, as in Kaldi
    <source>/text       "<utterance> <transcript>"
    <source>/segments   optional: "<utterance> <recording> <begin> <end>" in seconds (end -1:
                        to the end of the recording); without it utterance = recording
    <source>/utt2lang   optional: "<utterance> <ISO 639-1 code>"; --language for the others"""
USES = frozenset({"language"})
DEFAULT_LANGUAGE = None
_ARCHIVE = re.compile(r"\.ark:\d+$")


@dataclass(frozen=True)
class Recording:
    origin: Origin
    path: str | None  # None: refused, see ``reason``
    reason: str = ""


@dataclass(frozen=True)
class Segment:
    origin: Origin
    recording: str
    begin: float
    end: float


def read(source: str, options: PrepareOptions) -> Listing:
    folder = Path(source)
    missing = [name for name in ("wav.scp", "text") if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder}: not a Kaldi data folder ({' and '.join(missing)} missing); "
                        f"give the folder holding wav.scp and text as --source")
    has_languages = (folder / "utt2lang").is_file()
    if not has_languages and options.language is None:
        raise UserError(f"{folder}: no utt2lang file; give the language of the utterances "
                        f"with --language (e.g. --language zh)")
    problems: list[Problem] = []
    recordings = _recordings(folder / "wav.scp", problems)
    segments = (_segments(folder / "segments", problems)
                if (folder / "segments").is_file() else None)
    languages = _languages(folder / "utt2lang", problems) if has_languages else {}
    items: list[Entry | Problem | Skip] = list(problems)
    transcribed: set[str] = set()
    for item in keyed_lines(folder / "text"):
        if isinstance(item, Problem):
            items.append(item)
            continue
        origin, utt, text = item
        transcribed.add(utt)
        items.append(_utterance(origin, utt, text, recordings, segments, languages,
                                language_needed=options.language is None))
    if segments is None:
        items += [Skip("no_transcript", rec.path or f"recording {key}")
                  for key, rec in recordings.items() if key not in transcribed]
    else:
        items += [Skip("no_transcript", f"segment {utt} of {seg.recording} "
                                        f"({seg.begin:g}-{seg.end:g} s)")
                  for utt, seg in segments.items() if utt not in transcribed]
    notes = {"recordings": len(recordings), "segments": None if segments is None else
             len(segments), "utt2lang": has_languages}
    return Listing(items, total=len(items), notes=notes)


def _utterance(origin: Origin, utt: str, text: str, recordings: dict[str, Recording],
               segments: dict[str, Segment] | None, languages: dict[str, str | Problem],
               *, language_needed: bool) -> Entry | Problem:
    segment = None
    if segments is not None:
        segment = segments.get(utt)
        if segment is None:
            return Problem(origin, "audio_not_found", f"utterance {utt} has a transcript but "
                                                      f"no line in segments")
        recording = recordings.get(segment.recording)
        if recording is None:
            return Problem(segment.origin, "unknown_recording",
                           f"segment {utt} names recording {segment.recording}, which wav.scp "
                           f"does not list")
    else:
        recording = recordings.get(utt)
        if recording is None:
            return Problem(origin, "audio_not_found", f"utterance {utt} has a transcript but "
                                                      f"no line in wav.scp")
    if recording.path is None:
        return Problem(recording.origin, "unsupported_command",
                       f"utterance {utt}: {recording.reason}")
    language = languages.get(utt)
    if isinstance(language, Problem):
        return language
    if language is None and language_needed:
        return Problem(origin, "no_language", f"utterance {utt} has no utt2lang line; add one "
                                              f"or give --language")
    note = f"wav.scp:{recording.origin.line}"
    if segment is None:
        return Entry(id=utt, text=text, origin=origin, audio=recording.path,
                     language=language, note=note)
    return Entry(id=utt, text=text, origin=origin, audio=recording.path, begin=segment.begin,
                 end=segment.end, language=language, note=note)


def _first_line(problems: list[Problem], seen: dict, key: str, origin: Origin,
                what: str) -> bool:
    """True (and a duplicate_id problem) when ``key`` was seen before in the same file."""
    if key not in seen:
        return False
    problems.append(Problem(origin, "duplicate_id", f"{what} {key} was first listed on line "
                                                    f"{seen[key].origin.line}"))
    return True


def _recordings(path: Path, problems: list[Problem]) -> dict[str, Recording]:
    recordings: dict[str, Recording] = {}
    for item in keyed_lines(path):
        if isinstance(item, Problem):
            problems.append(item)
            continue
        origin, key, value = item
        if _first_line(problems, recordings, key, origin, "recording"):
            continue
        if not value:
            problems.append(Problem(origin, "bad_line", f"recording {key} has no path"))
            continue
        recordings[key] = _recording(origin, value)
    return recordings


def _recording(origin: Origin, value: str) -> Recording:
    if value.endswith("|"):
        try:
            value = piped_file(value[:-1])
        except UnsupportedCommand as err:
            return Recording(origin, None, f"pipe command {value!r}: {err}")
    elif _ARCHIVE.search(value):
        return Recording(origin, None, f"{value!r} is an offset into a Kaldi archive; write the "
                                       f"audio out as files first (wav-copy)")
    return Recording(origin, str(Path(value).absolute()))


def _segments(path: Path, problems: list[Problem]) -> dict[str, Segment]:
    segments: dict[str, Segment] = {}
    for item in keyed_lines(path):
        if isinstance(item, Problem):
            problems.append(item)
            continue
        origin, utt, rest = item
        fields = rest.split()
        if len(fields) != 3:
            problems.append(Problem(origin, "bad_line", f"expected '<utterance> <recording> "
                                                        f"<begin> <end>', got {len(fields) + 1} "
                                                        f"fields"))
            continue
        try:
            begin, end = float(fields[1]), float(fields[2])
        except ValueError:
            problems.append(Problem(origin, "bad_segment", f"segment {utt}: begin and end must "
                                                           f"be seconds, got {fields[1:]}"))
            continue
        if not _first_line(problems, segments, utt, origin, "segment"):
            segments[utt] = Segment(origin, fields[0], begin, end)
    return segments


def _languages(path: Path, problems: list[Problem]) -> dict[str, str | Problem]:
    """utterance -> code, or the bad_language problem of its line (reported only if the
    utterance is used)."""
    languages: dict[str, str | Problem] = {}
    for item in keyed_lines(path):
        if isinstance(item, Problem):
            problems.append(item)
            continue
        origin, utt, code = item
        try:
            languages[utt] = check_language(code)
        except LineProblem as problem:
            languages[utt] = Problem(origin, "bad_language", f"utterance {utt}: "
                                                             f"{problem.detail}")
    return languages
