"""Validate a whole manifest: per-line checks (fields and audio), a process pool, the report.

The expensive part is opening and decoding every audio segment, so lines travel to worker
processes in chunks and come back in input order; the main process only keeps what the report
and the duplicate check need (ids, durations, per-language totals, the rejected lines), never
decoded audio. A line gets exactly one reason code: the first check it fails, in the order
JSON -> fields -> duplicate id -> audio -> length limits.
"""

from __future__ import annotations

import os
import stat
import sys
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from stages.common.errors import UserError
from stages.common.fsutil import outputs_together
from stages.common.jsonl import atomic_writer, dumps_row, write_json
from stages.common.provenance import provenance
from stages.common.settings import finite_seconds, positive_int, setting
from stages.data.audio import SegmentError, segment_frames
from stages.data.manifest import (
    LANGUAGES,
    REASONS,
    LineProblem,
    check_fields,
    derive_id,
    parse_line,
    resolve_audio,
)

CHUNK_LINES = 1024  # lines per worker task: big enough to amortize pickling, small for progress
READ_BLOCK_FRAMES = 1 << 18  # audio is checked block by block so long files stay cheap in memory
NO_LANGUAGE = "unspecified"  # report key for lines without a language
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Settings:
    """What a line is checked against (sent to every worker)."""

    manifest_dir: str
    require_text: bool = True
    min_seconds: float = 0.0
    max_seconds: float | None = None
    # Codes the teacher can be prompted with (None: not known); others are counted, not refused.
    prompt_languages: frozenset[str] | None = None
    prompt_family: str | None = None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class ValidationOptions:
    """What a manifest is checked against and what happens to its bad lines."""

    on_error: Literal["fail", "quarantine"] = setting(
        "fail", help="fail: exit 1 if any line is bad and write no output manifest; "
                     "quarantine: exit 0, keep the good lines, bad lines go to --rejects")
    require_text: bool = setting(True, help="require a non-empty text field (turn off for a "
                                            "teacher-data pool)")
    min_seconds: float = setting(0.0, parse=finite_seconds,
                                 help="reject segments shorter than this (too_short)")
    max_seconds: float | None = setting(None, parse=finite_seconds,
                                        help="reject segments longer than this (too_long; "
                                             "default: no limit)")
    workers: int = setting(usable_cores(), parse=positive_int, volatile=True,
                           help="processes for the audio checks (default: all usable cores; "
                                "1 = no pool)")
    progress: bool = setting(True, volatile=True, help="progress bar on stderr")
    allow_empty: bool = setting(False, help="accept a manifest without a single line (an empty "
                                            "output manifest); by default it is an error, as "
                                            "it usually means a failed export upstream")

    def __post_init__(self) -> None:
        if self.max_seconds is not None and self.max_seconds < self.min_seconds:
            raise UserError(f"--max-seconds {self.max_seconds:g} is below --min-seconds "
                            f"{self.min_seconds:g}; give a range that can hold a segment")

    def line_settings(self, manifest_dir: str, *, prompt_languages: frozenset[str] | None = None,
                      prompt_family: str | None = None) -> Settings:
        """What every line of a manifest in ``manifest_dir`` is checked against; with
        ``prompt_languages`` the report counts the lines whose language the teacher (of
        ``prompt_family``) has no prompt for."""
        return Settings(manifest_dir=manifest_dir, require_text=self.require_text,
                        min_seconds=self.min_seconds, max_seconds=self.max_seconds,
                        prompt_languages=prompt_languages, prompt_family=prompt_family)


class LineResult(NamedTuple):
    """The verdict on one line. ``id`` is set whenever the fields passed, even if the audio did
    not, so a later line reusing it is still a duplicate."""

    line: int
    id: str | None
    reason: str | None  # None: the line is good
    detail: str
    row: str | None  # output JSONL text of a good line
    seconds: float
    language: str | None


# --- one line ---------------------------------------------------------------------------------

def probe_audio(path: str, begin: float = -1, end: float = -1) -> tuple[float, int]:
    """Open ``path``, decode the segment and check its samples; return (seconds, sample rate).

    Raises LineProblem: audio_not_found, audio_unreadable, audio_empty, segment_out_of_range,
    audio_not_finite.
    """
    try:
        handle = sf.SoundFile(path)
    except (sf.SoundFileError, RuntimeError, TypeError, OSError) as err:
        # Only a failed open pays for finding out why (most lines open fine).
        raise _open_problem(path, err) from None
    with handle:
        frames, rate = handle.frames, handle.samplerate
        if frames <= 0:
            raise LineProblem("audio_empty", f"{path} holds no samples")
        try:
            segment = segment_frames(frames, rate, begin, end)
        except SegmentError as err:
            reason = "segment_out_of_range" if err.kind == "out_of_range" else "audio_empty"
            raise LineProblem(reason, str(err)) from None
        try:
            handle.seek(segment.start)
            _check_samples(handle, segment.start, segment.stop, path)
        except (sf.SoundFileError, RuntimeError) as err:
            raise LineProblem("audio_unreadable", f"{path}: {_message(err)}") from None
    return (segment.stop - segment.start) / rate, rate


def _message(err: Exception) -> str:
    # libsndfile errors carry the bare reason in error_string; str() repeats the path.
    return getattr(err, "error_string", None) or str(err) or type(err).__name__


def _open_problem(path: str, err: Exception) -> LineProblem:
    """Classify a failed open: missing, not a file, empty, or unreadable."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return LineProblem("audio_not_found", f"{path} does not exist")
    except OSError as stat_err:
        return LineProblem("audio_unreadable", f"{path}: {stat_err.strerror}")
    if not stat.S_ISREG(info.st_mode):
        return LineProblem("audio_not_found", f"{path} is not a file")
    if info.st_size == 0:
        return LineProblem("audio_empty", f"{path} is an empty file (0 bytes)")
    # TypeError: soundfile refuses headerless (RAW) files without a given rate.
    return LineProblem("audio_unreadable", f"{path}: {_message(err)}")


def _check_samples(handle: sf.SoundFile, start: int, stop: int, path: str) -> None:
    """Decode [start, stop) block by block: every frame must arrive and be finite."""
    rate = handle.samplerate
    position = start
    while position < stop:
        block = handle.read(min(READ_BLOCK_FRAMES, stop - position), dtype="float32",
                            always_2d=True)
        if len(block) == 0:
            raise LineProblem("audio_unreadable", f"{path}: decoding stopped at "
                              f"{position / rate:.3f}s of {stop / rate:.3f}s (truncated or "
                              f"corrupt file)")
        finite = np.isfinite(block)
        if not finite.all():
            first = position + int(np.argmin(finite.all(axis=1)))
            raise LineProblem("audio_not_finite", f"{path}: NaN or infinite samples in the "
                              f"segment (the first at {first / rate:.3f}s in the file)")
        position += len(block)


def check_length(seconds: float, settings: Settings) -> None:
    if seconds < settings.min_seconds:
        raise LineProblem("too_short", f"segment lasts {seconds:.3f}s, below --min-seconds "
                                       f"{settings.min_seconds:g}")
    if settings.max_seconds is not None and seconds > settings.max_seconds:
        raise LineProblem("too_long", f"segment lasts {seconds:.3f}s, above --max-seconds "
                                      f"{settings.max_seconds:g}")


def check_line(number: int, raw: bytes | str, settings: Settings) -> LineResult:
    """Check one non-blank manifest line (duplicates are the caller's: they need all lines)."""
    utt_id = None
    if number == 1:  # some editors start UTF-8 files with a byte-order mark
        raw = raw.removeprefix(_BOM if isinstance(raw, bytes) else _BOM.decode())
    try:
        row = parse_line(raw)
        fields = check_fields(row, settings.require_text)
        path = resolve_audio(fields.audio, settings.manifest_dir)
        utt_id = fields.id if fields.id is not None else derive_id(
            fields, path, settings.manifest_dir)
        seconds, rate = probe_audio(path, fields.begin, fields.end)
        check_length(seconds, settings)
    except LineProblem as problem:
        return LineResult(number, utt_id, problem.reason, problem.detail, None, 0.0, None)
    row.update(audio=path, id=utt_id, duration=round(seconds, 3), sample_rate=rate)
    return LineResult(number, utt_id, None, "", dumps_row(row), seconds, fields.language)


def check_chunk(settings: Settings, chunk: list[tuple[int, bytes]]) -> list[LineResult]:
    """Worker task: check a chunk of (line number, raw line) pairs."""
    return [check_line(number, raw, settings) for number, raw in chunk]


# --- the whole file ---------------------------------------------------------------------------

def count_lines(path: Path) -> int:
    """Number of lines (a last line without newline counts), read in 1 MiB blocks."""
    count, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _chunks(path: Path, tally: Tally) -> Iterator[list[tuple[int, bytes]]]:
    """Chunks of non-blank (line number, raw bytes without line ending); counts blanks."""
    chunk: list[tuple[int, bytes]] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                tally.blank_lines += 1
                continue
            chunk.append((number, raw))
            if len(chunk) >= CHUNK_LINES:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _checked(chunks: Iterator[list[tuple[int, bytes]]], settings: Settings,
             pool: ProcessPoolExecutor | None, in_flight: int
             ) -> Iterator[tuple[list[tuple[int, bytes]], list[LineResult]]]:
    """(chunk, results) in input order; with a pool, at most ``in_flight`` chunks pending."""
    if pool is None:
        for chunk in chunks:
            yield chunk, check_chunk(settings, chunk)
        return
    pending: deque[tuple[list[tuple[int, bytes]], Future]] = deque()
    for chunk in chunks:
        pending.append((chunk, pool.submit(check_chunk, settings, chunk)))
        if len(pending) >= in_flight:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


def _start_pool(workers: int) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(max_workers=workers)
    # Start the workers now, before tqdm's monitor thread exists: forking a process that
    # runs threads can deadlock the child (Python 3.12+ warns about it).
    pool.submit(int).result()
    return pool


class _DiscardOutput(Exception):
    """Raised inside the output writer to abandon it (fail mode with bad lines)."""


@dataclass
class Tally:
    """Running totals for the report; memory grows with ids and rejected lines only."""

    total: int = 0  # non-blank lines
    blank_lines: int = 0
    valid: int = 0
    seconds: float = 0.0
    durations: array = field(default_factory=lambda: array("d"))
    language_lines: Counter = field(default_factory=Counter)
    language_seconds: Counter = field(default_factory=Counter)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    first_line_of_id: dict[str, int] = field(default_factory=dict)

    def judge(self, result: LineResult) -> LineResult:
        """Apply the duplicate rule to a worker verdict and count it; returns the final one."""
        self.total += 1
        if result.id is not None:
            first = self.first_line_of_id.setdefault(result.id, result.line)
            if first != result.line:
                result = result._replace(
                    reason="duplicate_id", row=None,
                    detail=f"id {result.id!r} was first used on line {first}; ids must be "
                           f"unique (give this line its own \"id\")")
        if result.reason is not None:
            self.rejected.append((result.line, result.reason, result.detail))
            return result
        self.valid += 1
        self.seconds += result.seconds
        self.durations.append(result.seconds)
        language = result.language or NO_LANGUAGE
        self.language_lines[language] += 1
        self.language_seconds[language] += result.seconds
        return result


def validate_manifest(input_path: str | Path, output_path: str | Path,
                      report_path: str | Path, settings: Settings | None = None, *,
                      on_error: str = "fail", rejects_path: str | Path | None = None,
                      workers: int = 1, progress: bool = True,
                      allow_empty: bool = False) -> dict[str, Any]:
    """Check every line of ``input_path``; write the outputs; return the report dict.

    ``on_error="fail"``: the output manifest is written only if every line is good (a stale one
    is removed). ``"quarantine"``: good lines go to ``output_path`` and bad lines, byte for byte,
    to ``rejects_path`` (default ``rejects.jsonl`` beside the output). A manifest without lines
    gets no output manifest unless ``allow_empty``. The report (JSON and a Markdown twin with
    the same stem) is written in every case; the outputs appear together or not at all (a full
    disk while writing the report removes the manifest too).
    """
    if on_error not in ("fail", "quarantine"):
        raise ValueError(f"on_error must be 'fail' or 'quarantine', got {on_error!r}")
    input_path, output_path = Path(input_path).absolute(), Path(output_path).absolute()
    report_path = Path(report_path).absolute()
    if on_error == "quarantine":
        rejects_path = Path(rejects_path or output_path.with_name("rejects.jsonl")).absolute()
    else:
        rejects_path = None
    markdown_path = report_path.with_suffix(".md")
    _check_paths(input_path, output_path, report_path, markdown_path, rejects_path)
    settings = settings or Settings(manifest_dir=str(input_path.parent))
    output_path.unlink(missing_ok=True)  # never leave a stale manifest that looks validated

    tally = Tally()
    with outputs_together(output_path, rejects_path, report_path, markdown_path):
        report = _write_outputs(input_path, output_path, report_path, markdown_path,
                                rejects_path, settings, tally, on_error=on_error,
                                workers=workers, progress=progress, allow_empty=allow_empty)
    return report


def _write_outputs(input_path: Path, output_path: Path, report_path: Path, markdown_path: Path,
                   rejects_path: Path | None, settings: Settings, tally: Tally, *,
                   on_error: str, workers: int, progress: bool,
                   allow_empty: bool) -> dict[str, Any]:
    try:
        with ExitStack() as stack:
            pool = None
            if workers > 1:
                pool = _start_pool(workers)
                stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            bar = stack.enter_context(tqdm(
                total=count_lines(input_path), unit="line", desc="validate", file=sys.stderr,
                disable=not progress, dynamic_ncols=True, mininterval=0.5))
            out = stack.enter_context(atomic_writer(output_path))
            rejects = (stack.enter_context(atomic_writer(rejects_path, "wb"))
                       if rejects_path else None)
            done_lines = 0
            for chunk, results in _checked(_chunks(input_path, tally), settings, pool,
                                           in_flight=4 * workers):
                for (_, raw), result in zip(chunk, results, strict=True):
                    verdict = tally.judge(result)
                    if verdict.reason is None:
                        out.write(verdict.row + "\n")
                    elif rejects is not None:
                        rejects.write(raw + b"\n")
                bar.update(chunk[-1][0] - done_lines)
                done_lines = chunk[-1][0]
            bar.update(bar.total - done_lines)
            if (on_error == "fail" and tally.rejected) or (not tally.total and not allow_empty):
                raise _DiscardOutput  # atomic_writer drops its temporary file
    except _DiscardOutput:
        pass
    output_written = output_path.is_file()

    report = build_report(tally, settings, input_path=input_path,
                          output_path=output_path, output_written=output_written,
                          rejects_path=rejects_path, report_path=report_path,
                          on_error=on_error, workers=workers, allow_empty=allow_empty)
    write_json(report_path, report)
    with atomic_writer(markdown_path) as handle:
        handle.write(render_markdown(report))
    return report


def _check_paths(input_path: Path, output_path: Path, report_path: Path, markdown_path: Path,
                 rejects_path: Path | None) -> None:
    if not input_path.is_file():
        raise UserError(f"{input_path}: manifest not found; pass an existing JSONL file as "
                        f"--input")
    named = {"--output": output_path, "--report": report_path,
             "the Markdown report": markdown_path}
    if rejects_path is not None:
        named["--rejects"] = rejects_path
    seen: dict[Path, str] = {input_path.resolve(): "--input"}
    for option, path in named.items():
        other = seen.setdefault(path.resolve(), option)
        if other != option:
            raise UserError(f"{path}: {option} would overwrite {other}; give distinct paths")


# --- the report -------------------------------------------------------------------------------

def _hours(seconds: float) -> float:
    return round(seconds / 3600, 6)


def duration_stats(durations: array) -> dict[str, float | None]:
    """min/mean/median/p95/max seconds of the good lines (None when there are none)."""
    if not durations:
        return dict.fromkeys(("min", "mean", "median", "p95", "max"))
    values = np.frombuffer(durations, dtype=np.float64)
    return {"min": round(float(values.min()), 3), "mean": round(float(values.mean()), 3),
            "median": round(float(np.median(values)), 3),
            "p95": round(float(np.percentile(values, 95)), 3),
            "max": round(float(values.max()), 3)}


def build_report(tally: Tally, settings: Settings, *, input_path: Path,
                 output_path: Path, output_written: bool, rejects_path: Path | None,
                 report_path: Path, on_error: str, workers: int,
                 allow_empty: bool = False) -> dict[str, Any]:
    """The REPORT.json document (every rejected line is listed, in input order)."""
    options = {"on_error": on_error, "require_text": settings.require_text,
               "min_seconds": settings.min_seconds, "max_seconds": settings.max_seconds,
               "allow_empty": allow_empty, "workers": workers}
    languages = {
        code: {"lines": lines, "hours": _hours(tally.language_seconds[code]),
               "name": LANGUAGES.get(code, "")}
        for code, lines in sorted(tally.language_lines.items(), key=lambda kv: (-kv[1], kv[0]))
    }
    reason_counts = Counter(reason for _, reason, _ in tally.rejected)
    unpromptable = None
    if settings.prompt_languages is not None:
        unpromptable = {"family": settings.prompt_family, "lines": {
            code: entry["lines"] for code, entry in languages.items()
            if code != NO_LANGUAGE and code not in settings.prompt_languages}}
    return {
        "input": str(input_path),
        "output": str(output_path),
        "output_written": output_written,
        "rejects": str(rejects_path) if rejects_path else None,
        "report_markdown": str(report_path.with_suffix(".md")),
        "options": options,
        "total": tally.total,
        "valid": tally.valid,
        "invalid": len(tally.rejected),
        "blank_lines_ignored": tally.blank_lines,
        "seconds": round(tally.seconds, 3),
        "hours": _hours(tally.seconds),
        "languages": languages,
        "unpromptable_languages": unpromptable,
        "durations": duration_stats(tally.durations),
        "reason_counts": dict(sorted(reason_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "rejected": [{"line": line, "reason": reason, "detail": detail}
                     for line, reason, detail in tally.rejected],
        "provenance": provenance({"stage": "validate", **options}),
    }


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any], max_rejected: int = 50) -> str:
    """A human summary of a report: totals, languages, durations, reasons, first bad lines."""
    verdict = ("all lines valid" if not report["invalid"] else
               f"{report['invalid']} bad line(s), "
               + ("quarantined" if report["options"]["on_error"] == "quarantine"
                  else "output NOT written"))
    if not report["total"]:
        verdict = "no lines, " + ("empty output written (--allow-empty)"
                                  if report["output_written"] else "output NOT written")
    lines = [
        f"# Manifest validation: {Path(report['input']).name}",
        "",
        f"**{verdict}**",
        "",
        "| | |", "|---|---|",
        f"| input | `{report['input']}` |",
        f"| output | `{report['output']}`"
        f"{'' if report['output_written'] else ' (not written)'} |",
    ]
    if report["rejects"]:
        lines.append(f"| rejects | `{report['rejects']}` |")
    lines += [
        f"| lines checked | {report['total']} |",
        f"| valid | {report['valid']} |",
        f"| rejected | {report['invalid']} |",
        f"| blank lines ignored | {report['blank_lines_ignored']} |",
        f"| audio of valid lines | {report['hours']:.3f} h ({report['seconds']:.1f} s) |",
        f"| options | {_cell(', '.join(f'{k}={v}' for k, v in report['options'].items()))} |",
        "",
        "## Languages", "",
        "| language | name | lines | hours |", "|---|---|---:|---:|",
    ]
    lines += [f"| {code} | {entry['name']} | {entry['lines']} | {entry['hours']:.3f} |"
              for code, entry in report["languages"].items()] or ["| (none) | | 0 | 0 |"]
    unpromptable = (report.get("unpromptable_languages") or {}).get("lines")
    if unpromptable:
        lines += ["", f"**Warning:** {sum(unpromptable.values())} valid line(s) have a language "
                      f"the {report['unpromptable_languages']['family']} teacher has no prompt "
                      f"for ({', '.join(f'{c} {n}' for c, n in unpromptable.items())}); OPD "
                      "prompts the teacher with a detected language for them."]
    durations = report["durations"]
    lines += ["", "## Durations (seconds, valid lines)", "",
              "| min | mean | median | p95 | max |", "|---:|---:|---:|---:|---:|",
              "| " + " | ".join("-" if durations[k] is None else f"{durations[k]:.3f}"
                               for k in ("min", "mean", "median", "p95", "max")) + " |"]
    lines += ["", "## Reasons", ""]
    if report["reason_counts"]:
        lines += ["| reason | lines | meaning |", "|---|---:|---|"]
        lines += [f"| `{code}` | {count} | {_cell(REASONS[code])} |"
                  for code, count in report["reason_counts"].items()]
    else:
        lines.append("No line was rejected.")
    rejected = report["rejected"]
    if rejected:
        shown = rejected[:max_rejected]
        lines += ["", f"## Rejected lines (first {len(shown)} of {len(rejected)}; all are in "
                      f"the JSON report)", "", "| line | reason | detail |", "|---:|---|---|"]
        lines += [f"| {item['line']} | `{item['reason']}` | {_cell(item['detail'])} |"
                  for item in shown]
    prov = report["provenance"]
    lines += ["", f"_git {prov['git_commit']}, config {prov['config_hash']}, "
                  f"{prov['created_utc']}_", ""]
    return "\n".join(lines)
