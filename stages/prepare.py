"""Prepare a raw manifest (JSONL) from a corpus in its own layout, for stages.validate.

Reads LibriSpeech, AISHELL-1, WenetSpeech, a Kaldi data folder or a Hugging Face dataset (the
layouts are listed below) and writes one row per utterance:
  {"audio": "/abs/path.flac", "text": "as the corpus gives it", "task": "asr",
   ["begin_time": 12.5, "end_time": 17.25,] "language": "en", "id": "1089-134686-0000"}
Audio paths are absolute; segment times appear only for corpora with segments (WenetSpeech, a
Kaldi folder with a segments file); nothing is cut or converted, except audio bytes held inside
a Hugging Face dataset, which are written once as FLAC files.

Every problem (missing audio, a transcript without audio, duplicate ids, unreadable audio, bad
segments, unsupported wav.scp commands, ...) is reported with its file and line; audio without a
transcript is skipped and counted. Nothing is dropped silently.

Outputs:
  --output    the manifest; with --on-error fail it is written only when there is no problem
              (a stale file from an earlier run is removed)
  --report    REPORT.json (default: <output stem>.report.json): entries, utterances, hours,
              languages, problems ({"file", "line" or "item", "reason", "detail"}),
              problem_counts, skipped (count and examples per reason), source notes,
              provenance; a readable REPORT.md beside it

Exit status: 0 when there is no problem, or with --on-error quarantine; 1 otherwise (after
reading the whole source) or on a usage error.

Examples:
  python -m stages.prepare --format librispeech --source /data/LibriSpeech --subset test-clean \\
      --output data/librispeech_test_clean.jsonl
  python -m stages.prepare --format kaldi --source /data/kaldi/test --language zh \\
      --output data/test.jsonl
  python -m stages.validate --input data/librispeech_test_clean.jsonl ...   # then, as always
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stages.common.cli import parser, run_stage
from stages.common.settings import add_settings, settings_from_args
from stages.data.corpora import FORMATS
from stages.data.corpora.base import PROBLEMS, SKIPS
from stages.data.prepare import PrepareOptions, prepare_manifest
from stages.data.prepare_report import where

log = logging.getLogger("stages.prepare")
SHOWN_ON_STDERR = 20  # problems echoed to the terminal; all of them are in the report


def _epilog() -> str:
    layouts = "\n\n".join(module.LAYOUT for module in FORMATS.values())
    problems = "\n".join(f"  {code:<20} {meaning}" for code, meaning in PROBLEMS.items())
    skips = "\n".join(f"  {code:<20} {meaning}" for code, meaning in SKIPS.items())
    return (f"formats and their layouts:\n{layouts}\n\nproblem codes:\n{problems}\n\n"
            f"skipped (counted, not errors):\n{skips}\n")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__, epilog=_epilog())
    p.prog = "python -m stages.prepare"
    p.add_argument("--source", required=True,
                   help="the corpus: a folder, a file, or (hf) a hub dataset id in the local "
                        "cache")
    p.add_argument("--output", required=True, type=Path, help="manifest to write (JSONL)")
    p.add_argument("--report", type=Path,
                   help="REPORT.json to write, REPORT.md beside it (default: <output "
                        "stem>.report.json)")
    p.add_argument("--audio-dir", type=Path,
                   help="hf: where audio bytes are written as FLAC (default: <output "
                        "stem>_audio/ beside the output)")
    add_settings(p, PrepareOptions)
    return p


def main(args: argparse.Namespace) -> int:
    options = settings_from_args(PrepareOptions, args)
    report_path = args.report or args.output.with_name(f"{args.output.stem}.report.json")
    report = prepare_manifest(args.source, args.output, report_path, options,
                              audio_dir=args.audio_dir)
    skipped = sum(block["count"] for block in report["skipped"].values())
    summary = (f"{report['utterances']} utterances, {report['hours']:.3f} h, {skipped} "
               f"skipped; report: {report['report_markdown']}")
    if not report["problems"]:
        log.info("%s; output: %s", summary, report["output"])
        return 0
    for problem in report["problems"][:SHOWN_ON_STDERR]:
        print(f"{where(problem)}: {problem['reason']}: {problem['detail']}", file=sys.stderr)
    more = len(report["problems"]) - SHOWN_ON_STDERR
    if more > 0:
        print(f"... and {more} more problem(s), all listed in {report_path}", file=sys.stderr)
    counts = ", ".join(f"{code} {n}" for code, n in report["problem_counts"].items())
    if options.on_error == "quarantine":
        log.warning("%s; %d problem(s) left out (%s)", summary, report["invalid"], counts)
        return 0
    print(f"error: {report['invalid']} problem(s) in {args.source} ({counts}); no manifest "
          f"written. Fix them (listed in {report['report_markdown']}), or rerun with "
          f"--on-error quarantine to keep only the good utterances.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
