"""Validate an ASR manifest (JSONL) and write a checked copy plus a report.

Every line is checked: JSON, the fields of the manifest contract, the audio itself (opened with
soundfile, any rate or channel count; the segment is decoded and must hold finite samples) and
the duration limits. Every bad line is reported with its line number, a reason code and a detail;
nothing is dropped silently.

Input line (JSONL, UTF-8; blank lines are ignored):
  {"audio": "wav/utt1.wav", "text": "reference", "task": "asr", "begin_time": -1,
   "end_time": -1, "language": "zh", "id": "utt1"}
  audio       required; absolute, or relative to the MANIFEST's folder (not the working dir)
  text        required string (whitespace-only is empty_text) unless --no-require-text; when
              present it must still be a string
  task        optional; must be "asr"
  begin_time  optional seconds >= 0, or -1 = start of file
  end_time    optional seconds > begin_time, or -1 = end of file; either bound alone is fine
  language    optional lower-case ISO 639-1 code (zh, en, de, fr, ja, ko, ...; list below)
  id          optional non-empty string, unique in the manifest (later lines reusing an id
              are duplicate_id; the detail names the first line); when absent it is derived
              from the audio path (relative to the manifest, without extension) plus
              _<begin>-<end> for a segment, e.g. wav/long_12.5-17.25 or wav/long_60-end
  Optional fields set to null count as absent. Other fields are kept as they are.
  A bad line gets one reason code, for the first check it fails, in this order: JSON, fields,
  duplicate id, audio, length limits.

Outputs:
  --output    the good lines in input order, with every input field plus "id", "duration"
              (seconds of the segment, rounded to ms), "sample_rate" (of the source file) and
              "audio" made absolute. With --on-error fail it is written only if every line is
              good; a stale file from an earlier run is removed.
  --report    REPORT.json: total (non-blank lines), valid, invalid, rejected (every bad line:
              {"line", "reason", "detail"}), reason_counts, hours, languages (lines and hours
              per code; lines without one under "unspecified"), durations (min/mean/median/
              p95/max seconds), paths, options and provenance. A readable REPORT.md is written
              beside it (same stem).
  --rejects   quarantine mode only: the bad lines, verbatim (default: rejects.jsonl in the
              output's folder).

Exit status: 0 when every line is good or with --on-error quarantine; 1 when --on-error fail
(the default) finds bad lines (after checking all of them), when the manifest holds no line at
all (unless --allow-empty), on a usage error, or when an output cannot be written (a read-only
or full folder: one line naming the path; no output is then left without its report).

Example:
  python -m stages.validate --input data/train.jsonl --output results/train.valid.jsonl \\
      --report results/train.report.json --max-seconds 30 --workers 8
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.settings import add_settings, settings_from_args
from stages.data.manifest import LANGUAGES, REASONS
from stages.data.validation import ValidationOptions, validate_manifest

log = logging.getLogger("stages.validate")
SHOWN_ON_STDERR = 20  # bad lines echoed to the terminal; all of them are in the report
# The adapter families (stages.models.Family, spelled out: importing the models costs seconds;
# tests/test_opd_languages.py checks the two agree).
TEACHER_FAMILIES = ("audio_chat_lm", "qwen3_asr", "whisper")


def _epilog() -> str:
    reasons = "\n".join(f"  {code:<21} {meaning}" for code, meaning in REASONS.items())
    codes = textwrap.fill(" ".join(LANGUAGES), width=96, initial_indent="  ",
                          subsequent_indent="  ")
    return (f"reason codes:\n{reasons}\n\naccepted language codes (ISO 639-1, and the 639-3 "
            f"codes model families use):\n{codes}\n")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__, epilog=_epilog())
    p.prog = "python -m stages.validate"
    p.add_argument("--input", required=True, help="manifest to check (JSONL)")
    p.add_argument("--output", required=True, help="validated manifest to write (JSONL)")
    p.add_argument("--report", required=True,
                   help="REPORT.json to write; REPORT.md is written beside it")
    p.add_argument("--rejects", help="quarantine mode: where the bad lines go, verbatim "
                                     "(default: rejects.jsonl beside --output)")
    p.add_argument("--teacher-family", choices=TEACHER_FAMILIES, default=None,
                   help="count (and warn about) the lines whose language a teacher of this "
                        "family has no prompt for (default: no such check)")
    add_settings(p, ValidationOptions)
    return p


def main(args: argparse.Namespace) -> int:
    options = settings_from_args(ValidationOptions, args)
    if args.rejects and args.on_error != "quarantine":
        raise UserError("--rejects is only used with --on-error quarantine; add that option "
                        "or drop --rejects")
    family = None
    if args.teacher_family:  # model code only when asked: it costs seconds to import
        from stages.models import FAMILIES

        family = FAMILIES[args.teacher_family]
    settings = options.line_settings(
        os.path.dirname(os.path.abspath(args.input)),
        prompt_languages=family.prompt_languages if family else None,
        prompt_family=args.teacher_family)
    report = validate_manifest(args.input, args.output, args.report, settings,
                               on_error=options.on_error, rejects_path=args.rejects,
                               workers=options.workers, progress=options.progress,
                               allow_empty=options.allow_empty)
    summary = (f"{report['valid']} of {report['total']} lines valid, {report['hours']:.3f} h; "
               f"report: {report['report_markdown']}")
    unpromptable = (report["unpromptable_languages"] or {}).get("lines")
    if unpromptable:
        log.warning("%d valid line(s) have a language the %s teacher has no prompt for (%s); "
                    "OPD prompts the teacher with a detected language for them",
                    sum(unpromptable.values()), args.teacher_family,
                    ", ".join(f"{c} {n}" for c, n in unpromptable.items()))
    if not report["total"]:
        if not options.allow_empty:
            raise UserError(f"{report['input']}: holds no manifest lines, so there is nothing "
                            f"to validate; no output manifest written (report: "
                            f"{report['report_markdown']}). Check the step that wrote it, or "
                            "pass --allow-empty if an empty manifest is expected")
        log.warning("%s holds no lines: the output manifest is empty (--allow-empty)",
                    report["input"])
    if not report["rejected"]:
        log.info("%s; output: %s", summary, report["output"])
        return 0
    for item in report["rejected"][:SHOWN_ON_STDERR]:
        print(f"{report['input']}:{item['line']}: {item['reason']}: {item['detail']}",
              file=sys.stderr)
    more = len(report["rejected"]) - SHOWN_ON_STDERR
    if more > 0:
        print(f"... and {more} more bad line(s), all listed in {args.report}", file=sys.stderr)
    counts = ", ".join(f"{code} {n}" for code, n in report["reason_counts"].items())
    if args.on_error == "quarantine":
        log.warning("%s; %d line(s) quarantined to %s (%s)", summary, report["invalid"],
                    report["rejects"], counts)
        return 0
    print(f"error: {report['invalid']} bad line(s) in {report['input']} ({counts}); no output "
          f"manifest written. Fix the lines listed in {report['report_markdown']}, or rerun "
          f"with --on-error quarantine to keep only the good ones.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
