"""td_merge: gather teacher-data shards into one TD manifest and one report.

Inputs:
  --shards    the kept rows of every shard (python -m stages.teacher_data --output)
  --reports   their reports (--report), one per shard, in the same order as --shards
  --order     optional: the TD pool the shards were made from. The merged rows then follow the
              pool's order, which makes the result byte-identical to a single-shard run;
              without it rows are sorted by id. The pool's checksum must match the reports'.
  --rejects   optional: the shards' rejects files, merged the same way into --rejects-output

Checks (each failure names the files): every shard index of the run exactly once, the same pool,
teacher weights and settings in every report, shards that do not overlap, row counts that match
the reports, and shards that add up to the pool.

Outputs (atomic):
  --output          the TD manifest (valid manifest rows: `text` is the teacher's transcript)
  --report          JSON: the shards' counts summed, and every rate (kept fraction, corpus
                    CER/WER of the teacher before and after filtering, audio seconds per
                    second) recomputed from the sums, never averaged; per-shard lines;
                    provenance
  REPORT.md         beside --report (same stem): the readable version
  --rejects-output  with --rejects: every dropped row with its reasons
The stage fails (after writing everything) when fewer than --min-kept rows pass the filters:
adapting a student on (next to) no data is a configuration error, not a result.

Example:
  python -m stages.td_merge --shards results/td/shards/shard_{0,1,2}.jsonl \\
      --reports results/td/shards/shard_{0,1,2}.report.json --order results/data/td_pool.jsonl \\
      --output results/td/td.jsonl --report results/td/report.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.fsutil import file_sha256, outputs_together
from stages.common.jsonl import atomic_writer, read_json, read_jsonl, write_json, write_jsonl
from stages.common.provenance import provenance
from stages.data.batching import read_utterances
from stages.td.merge import check_reports, gather, merged_report
from stages.td.summary import render_markdown

log = logging.getLogger("stages.td_merge")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--shards", nargs="+", required=True, help="shard manifests (JSONL)")
    p.add_argument("--reports", nargs="+", required=True, help="shard reports (JSON)")
    p.add_argument("--order", default=None, metavar="POOL",
                   help="the TD pool: merged rows follow its order (default: sorted by id)")
    p.add_argument("--rejects", nargs="+", default=None, help="shard rejects files (JSONL)")
    p.add_argument("--output", required=True, help="merged TD manifest (JSONL)")
    p.add_argument("--report", required=True, help="merged report (JSON; .md beside it)")
    p.add_argument("--rejects-output", default=None, help="merged rejects (JSONL)")
    p.add_argument("--min-kept", type=int, default=1,
                   help="fail (after writing the report) when fewer rows are kept (1)")
    return p


def _check_counts(files: list[str], reports: list[tuple[str, dict]], key: str, what: str
                  ) -> list[tuple[str, list[dict]]]:
    loaded = []
    for path, (report_path, report) in zip(files, reports, strict=True):
        rows = read_jsonl(path)
        expected = report["counts"]["rows"][key]
        if len(rows) != expected:
            raise UserError(f"{path}: {len(rows)} rows, but {report_path} counts {expected} "
                            f"{what}; give the files of one run, in the same shard order")
        loaded.append((path, rows))
    return loaded


def main(args: argparse.Namespace) -> int:
    if len(args.shards) != len(args.reports):
        raise UserError(f"{len(args.shards)} --shards but {len(args.reports)} --reports; give "
                        "one report per shard, in the same order")
    if (args.rejects is None) != (args.rejects_output is None):
        raise UserError("--rejects and --rejects-output go together")
    if args.rejects is not None and len(args.rejects) != len(args.shards):
        raise UserError(f"{len(args.rejects)} --rejects for {len(args.shards)} shards")
    markdown = Path(args.report).with_suffix(".md")
    reports = [(path, read_json(path)) for path in args.reports]
    check_reports(reports)
    order = None
    if args.order is not None:
        pool_sha = reports[0][1]["pool"]["sha256"]
        if file_sha256(args.order) != pool_sha:
            raise UserError(f"--order {args.order} is not the pool the shards were transcribed "
                            f"from (checksum differs from {reports[0][0]}); give that pool")
        order = [u.id for u in read_utterances(args.order, require_text=False)]

    rows = gather(_check_counts(args.shards, reports, "kept", "kept rows"), order)
    report = merged_report(reports)
    report["outputs"] = {"output": str(args.output), "rejects": args.rejects_output,
                         "markdown": str(markdown)}
    report["provenance"] = provenance({"shards": args.shards, "order": args.order,
                                       "settings": report["settings"]})
    with outputs_together(args.rejects_output if args.rejects is not None else None,
                          args.output, args.report, markdown):  # all of them, or none
        if args.rejects is not None:
            rejects = gather(_check_counts(args.rejects, reports, "dropped", "dropped rows"),
                             order)
            write_jsonl(args.rejects_output, rejects)
        write_jsonl(args.output, rows)
        write_json(args.report, report)
        with atomic_writer(markdown) as handle:
            handle.write(render_markdown(report))
    summary = report["summary"]
    if summary["kept"] < args.min_kept:
        dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped_by_reason"].items() if v)
        raise UserError(f"only {summary['kept']} of {summary['rows']} teacher transcripts passed "
                        f"the filters (dropped: {dropped}; --min-kept {args.min_kept}); see "
                        f"{markdown}. Relax the filter bounds (config teacher_data.*) or use a "
                        "stronger teacher")
    log.info("merged %d shards: kept %d of %d rows (%.3f h), dropped %s; teacher CER %s -> %s, "
             "WER %s -> %s (before -> after filtering) -> %s", len(reports), summary["kept"],
             summary["rows"], summary["kept_hours"],
             {k: v for k, v in summary["dropped_by_reason"].items() if v},
             *(summary["teacher_error_rate"][s][m] for m in ("cer", "wer")
               for s in ("before", "after")), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
