"""Prepare a raw manifest from a corpus in its own layout (LibriSpeech, AISHELL-1, WenetSpeech,
a Kaldi data folder, a Hugging Face dataset).

A format's reader (``stages.data.corpora``) lists entries, problems and skips; this driver gives
every entry the same checks (unique id, a language, audio that exists and opens, segment bounds
inside the file, a transcript), stores audio bytes as FLAC where a dataset holds them, writes the
manifest rows and the report. As in validation, every problem is reported with its file and
line: ``on_error="fail"`` writes no manifest when there is one, ``"quarantine"`` writes the
good rows and counts the rest. The rows then go through ``stages.validate`` like any manifest.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from tqdm import tqdm

from stages.common.errors import UserError
from stages.common.jsonl import atomic_writer, dumps_row, write_json
from stages.common.settings import flag_of, setting
from stages.data.audio import SegmentError, segment_frames
from stages.data.corpora import FORMATS, Format
from stages.data.corpora.audio_files import AudioProblem, probe, store_flac
from stages.data.corpora.base import Entry, Listing, Origin, Problem, Skip
from stages.data.manifest import LineProblem, check_language
from stages.data.prepare_report import build_report, render_markdown

FILES_PER_FOLDER = 1000  # stored FLAC files go in numbered sub-folders of this many
SKIP_EXAMPLES = 20  # skipped items listed by name in the report (all are counted)


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    """Which corpus layout to read, which part of it, and what to do with bad entries."""

    format: Format = setting(help="the corpus layout (listed below)")
    subset: str | None = setting(
        None, help="the part to prepare: LibriSpeech subset (test-clean), AISHELL-1 split "
                   "(test), WenetSpeech subset (TEST_MEETING), or the dataset split (hf)")
    language: str | None = setting(
        None, help="ISO 639-1 code for rows without their own (default: the corpus' language: "
                   "en for librispeech, zh for aishell and wenetspeech; kaldi and hf need it "
                   "unless utt2lang / --language-column give every row one)")
    text_column: str = setting("text", help="hf: the transcript column")
    audio_column: str = setting("audio", help="hf: the audio column")
    id_column: str | None = setting(
        None, help="hf: the id column (default: \"id\" when present, else <split>-<row>)")
    language_column: str | None = setting(
        None, help="hf: a column of ISO 639-1 codes (null entries take --language)")
    on_error: Literal["fail", "quarantine"] = setting(
        "fail", help="fail: exit 1 if any entry has a problem and write no manifest; "
                     "quarantine: write the good rows, count and list the problems in the report")
    progress: bool = setting(True, volatile=True, help="progress bar on stderr")

    def __post_init__(self) -> None:
        if self.language is not None:
            try:
                check_language(self.language)
            except LineProblem as problem:
                raise UserError(f"--language: {problem.detail}") from None


def check_options(options: PrepareOptions, audio_dir: Path | None) -> None:
    """Refuse an option the chosen format does not read: it would be silently ignored."""
    uses = FORMATS[options.format].USES
    given = [f.name for f in dataclasses.fields(options)
             if f.name not in ("format", "on_error", "progress")
             and getattr(options, f.name) != f.default]
    if audio_dir is not None:
        given.append("audio_dir")
    for name in given:
        if name not in uses:
            users = [fmt for fmt, module in FORMATS.items() if name in module.USES]
            raise UserError(f"{flag_of(name)} is not used by --format {options.format} (only "
                            f"by {', '.join(users)}); drop it")


def default_audio_dir(output: Path) -> Path:
    """Where a dataset's audio bytes go unless --audio-dir says: beside the manifest."""
    return output.with_name(f"{output.stem}_audio")


@dataclass
class Tally:
    """Running totals for the report."""

    rows: int = 0
    seconds: float = 0.0
    language_rows: Counter = field(default_factory=Counter)
    language_seconds: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    skip_counts: Counter = field(default_factory=Counter)
    skip_examples: dict[str, list[str]] = field(default_factory=dict)
    stored_files: int = 0
    first_origin: dict[str, Origin] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        """Utterances the source describes: rows plus entries with a problem."""
        return self.rows + len(self.problems)

    def skip(self, skip: Skip) -> None:
        self.skip_counts[skip.reason] += 1
        examples = self.skip_examples.setdefault(skip.reason, [])
        if len(examples) < SKIP_EXAMPLES:
            examples.append(skip.what)

    def count(self, seconds: float, language: str) -> None:
        self.rows += 1
        self.seconds += seconds
        self.language_rows[language] += 1
        self.language_seconds[language] += seconds


class _Refused(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


class _DiscardOutput(Exception):
    """Raised inside the output writer to abandon it (fail mode with problems)."""


@dataclass
class _Rows:
    """Turns entries into manifest rows (the checks every format shares)."""

    default_language: str | None
    audio_dir: Path
    tally: Tally

    def row(self, entry: Entry) -> tuple[dict[str, Any], float, str]:
        """(manifest row, seconds, language) of an entry, or _Refused with its problem."""
        first = self.tally.first_origin.get(entry.id)
        if first is not None:
            self._refuse(entry, "duplicate_id", f"id {entry.id!r} was first used at {first}")
        self.tally.first_origin[entry.id] = entry.origin
        if not entry.text.strip():
            self._refuse(entry, "empty_text", f"utterance {entry.id} has an empty transcript")
        language = self._language(entry)
        path, frames, rate = self._audio(entry)
        seconds = self._seconds(entry, path, frames, rate)
        row: dict[str, Any] = {"audio": path, "text": entry.text, "task": "asr"}
        if entry.segmented:
            row.update(begin_time=entry.begin, end_time=entry.end)
        row.update(language=language, id=entry.id)
        return row, seconds, language

    def _refuse(self, entry: Entry, reason: str, detail: str) -> NoReturn:
        raise _Refused(Problem(entry.origin, reason, detail))

    def _language(self, entry: Entry) -> str:
        language = entry.language or self.default_language
        if language is None:
            self._refuse(entry, "no_language", f"utterance {entry.id} has no language; give "
                                               f"--language")
        try:
            return check_language(language)
        except LineProblem as problem:
            self._refuse(entry, "bad_language", f"utterance {entry.id}: {problem.detail}")

    def _audio(self, entry: Entry) -> tuple[str, int, int]:
        try:
            if entry.audio_bytes is not None:
                path = self._stored_path(entry.id)
                frames, rate = store_flac(entry.audio_bytes, path)
                self.tally.stored_files += 1
                return str(path), frames, rate
            frames, rate = probe(entry.audio)
            return entry.audio, frames, rate
        except AudioProblem as problem:
            where = f" (named by {entry.note})" if entry.note else ""
            self._refuse(entry, problem.reason, f"utterance {entry.id}: {problem.detail}{where}")

    def _stored_path(self, utt: str) -> Path:
        number = self.tally.stored_files
        name = re.sub(r"[^\w.-]+", "_", utt).strip("._")[:100] or "utt"
        return (self.audio_dir / f"{number // FILES_PER_FOLDER:04d}"
                / f"{number:08d}_{name}.flac")

    def _seconds(self, entry: Entry, path: str, frames: int, rate: int) -> float:
        if not entry.segmented:
            return frames / rate
        begin, end = entry.begin, entry.end
        if not (math.isfinite(begin) and math.isfinite(end)) or begin < 0 or (
                end < 0 and end != -1):
            self._refuse(entry, "bad_segment", f"segment {entry.id}: begin {begin:g}, end "
                                               f"{end:g} (seconds >= 0; end -1 = end of file)")
        try:
            return segment_frames(frames, rate, begin, end).seconds
        except SegmentError as err:
            self._refuse(entry, "bad_segment", f"segment {entry.id} of {path}: {err}")


def prepare_manifest(source: str, output: str | Path, report_path: str | Path,
                     options: PrepareOptions, *, audio_dir: str | Path | None = None
                     ) -> dict[str, Any]:
    """Read ``source`` in ``options.format``; write the manifest and the report (JSON and a
    Markdown twin with the same stem); return the report."""
    output, report_path = Path(output).absolute(), Path(report_path).absolute()
    check_options(options, None if audio_dir is None else Path(audio_dir))
    if report_path.resolve() == output.resolve():
        raise UserError(f"{report_path}: --report would overwrite --output; give distinct paths")
    stored_dir = Path(audio_dir).absolute() if audio_dir else default_audio_dir(output)
    fmt = FORMATS[options.format]
    output.unlink(missing_ok=True)  # never leave a stale manifest that looks prepared
    probe.cache_clear()  # files may have changed since an earlier call in this process
    listing = fmt.read(source, options)
    tally = Tally()
    rows = _Rows(options.language or fmt.DEFAULT_LANGUAGE, stored_dir, tally)
    try:
        with ExitStack() as stack:
            bar = stack.enter_context(tqdm(
                total=listing.total, unit="utt", desc=f"prepare {options.format}",
                file=sys.stderr, disable=not options.progress, dynamic_ncols=True,
                mininterval=0.5))
            out = stack.enter_context(atomic_writer(output))
            for row in _rows(listing, rows, tally, bar):
                out.write(dumps_row(row) + "\n")
            if options.on_error == "fail" and tally.problems:
                raise _DiscardOutput  # atomic_writer drops its temporary file
    except _DiscardOutput:
        pass
    report = build_report(tally, listing.notes, source=source, output=output,
                          output_written=output.is_file(), report_path=report_path,
                          audio_dir=stored_dir if tally.stored_files else None,
                          options=options)
    write_json(report_path, report)
    with atomic_writer(report_path.with_suffix(".md")) as handle:
        handle.write(render_markdown(report))
    return report


def _rows(listing: Listing, rows: _Rows, tally: Tally, bar: tqdm) -> Iterator[dict[str, Any]]:
    for item in listing.items:
        bar.update()
        if isinstance(item, Skip):
            tally.skip(item)
            continue
        if isinstance(item, Problem):
            tally.problems.append(item)
            continue
        try:
            row, seconds, language = rows.row(item)
        except _Refused as refused:
            tally.problems.append(refused.problem)
            continue
        tally.count(seconds, language)
        yield row
