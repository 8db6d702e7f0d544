"""teacher_data: transcribe one shard of the teacher-data (TD) pool with the teacher, then filter.

The teacher greedily transcribes the validated pool (python -m stages.validate --no-require-text)
in duration-sorted batches; batch k of the whole pool belongs to shard k mod --num-shards, so
shards are balanced and a clip's output does not depend on the number of shards (merging the
shards with stages.td_merge gives the same manifest as one shard). A manifest `language` is
forced into the teacher's prompt (Qwen3-ASR `language X<asr_text>` header) when the teacher has a
prompt for it; without one (or for a code it has none for, counted in the log) the teacher writes
the header and the detected language is recorded.

Input: --input, a validated TD-pool manifest; `text`, when present, is the reference.

Outputs (each written atomically when the shard is done):
  --output   kept rows, in pool order: every input field, with
               text                   the teacher's transcript (header dropped)
               reference_text         the pool row's `text`, when it had one
               teacher_text_raw       the raw decoded response (incl. a generated header)
               language               the manifest's, else the detected one (null: unknown)
               language_source        manifest | detected | none
               teacher_mean_logprob   mean log-prob of the generated tokens (header, text and
                                      stop token; fp32 log-softmax over the decoding
                                      distribution, blocked tokens excluded)
               teacher_tokens         generated tokens (stop token included)
               teacher_stopped        false: cut at --max-new-tokens
               teacher_error_rate     vs the reference (rows with one): CER or WER, normalized
  --rejects  dropped rows: the same fields plus reason (first failed filter), reasons (all) and
             details (what each filter found)
  --report   JSON: counts (additive: rows, seconds, dropped_by_reason, failed_by_filter,
             repetition checks, language sources, per-language rows/seconds/errors, teacher
             error counts before and after filtering, timing) and summary (derived: hours,
             kept fraction, corpus CER over zh/yue/ja/ko and WER over other rows with a
             reference, before and after filtering, audio seconds per second), settings, pool
             checksum, teacher, provenance.

Filters (in this order; python -c "import stages.td.filters as f; help(f)" for details):
  empty            empty transcript
  unfinished       no stop token within --max-new-tokens
  repetition       an n-gram (n <= --max-repeat-ngram units) repeated more than --max-repeats
                   times in a row; a character run over --max-char-run; zlib compression ratio
                   over --max-compression-ratio; more spoken units per second than
                   --max-units-per-second (units: characters for zh/yue/ja/ko, letters else)
  low_logprob      teacher_mean_logprob below --min-mean-logprob
  high_error_rate  rows with a reference: CER (zh normalizer; zh/yue/ja/ko) over --max-cer, WER
                   (en normalizer for en, basic otherwise) over --max-wer
--filters picks the ones that drop rows (default: all); the others are still counted.

Restart safety: every finished batch is appended to OUTPUT.partial (raw teacher outputs, before
filtering; fsynced). A killed shard rerun with the same command continues from there (a torn
last line is tolerated); filters run at the end, so thresholds may change between the runs.
A partial file from other settings (pool, shard, batch size, token cap, teacher, dtype) is
moved aside to OUTPUT.partial.stale. The partial file is removed when the shard is complete.

Options: --device auto picks cuda when available; --dtype auto is bfloat16 on cuda, float32 on
cpu. Results depend on --batch-size (batch mates share padding); use one value for all shards.

Example (shard 2 of 8):
  python -m stages.teacher_data --teacher models/teacher --input results/data/td_pool.jsonl \\
      --output results/td/shards/shard_2.jsonl --rejects results/td/shards/shard_2.rejects.jsonl \\
      --report results/td/shards/shard_2.report.json --shard 2 --num-shards 8 --batch-size 40
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.fsutil import file_sha256, fingerprint, outputs_together
from stages.common.jsonl import write_json, write_jsonl
from stages.common.provenance import provenance
from stages.common.runtime import (
    InferenceRuntime,
    dtype_name,
    resolve_device,
    resolve_dtype,
    set_threads,
)
from stages.common.settings import add_settings, group, setting, settings_from_args
from stages.data.batching import read_utterances
from stages.models import ModelLoading, family_of, load_adapter
from stages.models.transcribe import Decoding
from stages.td.filters import Candidate, FilterSettings, judge
from stages.td.shards import (
    PartialLog,
    shard_batches,
    teacher_row,
    transcribe_shard,
)
from stages.td.summary import shard_counts, summarize

log = logging.getLogger("stages.teacher_data")


@dataclass(frozen=True, kw_only=True)
class TeacherDataRun:
    """What one shard is transcribed and filtered with."""

    shard: int = setting(0, help="this shard's index, from 0")
    num_shards: int = setting(1, help="number of shards")
    decoding: Decoding = group("decoding")
    loading: ModelLoading = group("model")
    runtime: InferenceRuntime = group("runtime")
    filters: FilterSettings = group("filters (each counted; --filters picks the ones that drop "
                                    "rows)")


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--teacher", required=True, help="teacher model folder or hub id")
    p.add_argument("--input", required=True, help="validated TD-pool manifest (JSONL)")
    p.add_argument("--output", required=True, help="kept rows of this shard (JSONL)")
    p.add_argument("--rejects", required=True, help="dropped rows of this shard (JSONL)")
    p.add_argument("--report", required=True, help="shard report (JSON)")
    add_settings(p, TeacherDataRun)
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.num_shards < 1 or not 0 <= args.shard < args.num_shards:
        raise UserError(f"--shard {args.shard} --num-shards {args.num_shards}: need "
                        "0 <= shard < num-shards")
    paths = {"--input": args.input, "--output": args.output, "--rejects": args.rejects,
             "--report": args.report}
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        resolved = Path(path).resolve()
        if resolved in seen:
            raise UserError(f"{option} and {seen[resolved]} are the same file ({path})")
        seen[resolved] = option


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _check_args(args)
    settings = settings_from_args(TeacherDataRun, args).filters
    set_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    # Outputs describe the last complete run only.
    for path in (args.output, args.rejects, args.report):
        Path(path).unlink(missing_ok=True)

    pool = read_utterances(args.input, require_text=False)
    ids = [u.id for u in pool]
    if len(set(ids)) != len(ids):
        raise UserError(f"{args.input}: ids are not unique; validate the pool first "
                        "(python -m stages.validate)")
    batches = shard_batches(pool, args.batch_size, args.shard, args.num_shards)
    mine = {u.id for b in batches for u in b}
    utterances = [u for u in pool if u.id in mine]  # pool order
    family = args.family or family_of(args.teacher, trust_remote_code=args.trust_remote_code)
    # Loader processes compute features on the CPU (equal to the GPU's within 1e-5, but a
    # resumed shard should not mix the two).
    features_on = "cpu" if args.loader_workers > 0 else device.type
    generation = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                  "dtype": dtype_name(dtype), "device_type": device.type,
                  "features_on": features_on}
    header = {"pool_sha256": file_sha256(args.input), "shard": args.shard,
              "num_shards": args.num_shards, "teacher": str(args.teacher),
              "teacher_fingerprint": fingerprint(args.teacher), "family": family,
              **generation}
    log.info("shard %d of %d: %d clips in %d batches (pool: %d clips)", args.shard,
             args.num_shards, len(utterances), len(batches), len(pool))

    load_seconds = 0.0

    def load_teacher():
        nonlocal load_seconds
        start = time.perf_counter()
        log.info("loading teacher %s on %s (%s)", args.teacher, device, dtype_name(dtype))
        adapter = load_adapter(args.teacher, family=family, device=device, dtype=dtype,
                               trust_remote_code=args.trust_remote_code,
                               packed_audio_windows=args.packed_audio_windows)
        # Rows in a language the teacher has no prompt for are transcribed with an open prompt
        # (the teacher detects the language); their manifest language stays the row's.
        open_prompt = Counter(u.language for u in utterances
                              if u.language and not adapter.can_prompt(u.language))
        if open_prompt:
            log.warning("%d clip(s) have a language the %s teacher has no prompt for (%s); they "
                        "are transcribed without a forced language", sum(open_prompt.values()),
                        adapter.family, ", ".join(f"{c} {n}" for c, n in open_prompt.items()))
        load_seconds = time.perf_counter() - start
        return adapter

    partial = PartialLog(f"{args.output}.partial", header)
    run = transcribe_shard(load_teacher, batches, partial, max_new_tokens=args.max_new_tokens,
                           loader_workers=args.loader_workers)

    filter_start = time.perf_counter()
    rows = [teacher_row(u, run.records[u.id]) for u in utterances]
    candidates = [Candidate(text=row["text"], language=row["language"], duration=u.duration,
                            mean_logprob=row["teacher_mean_logprob"],
                            stopped=row["teacher_stopped"], reference=row.get("reference_text"))
                  for u, row in zip(utterances, rows, strict=True)]
    verdicts = judge(candidates, settings)
    kept, rejected = [], []
    for row, verdict in zip(rows, verdicts, strict=True):
        if verdict.counts is not None:  # null for an empty normalized reference
            rate = verdict.counts.rate
            row["teacher_error_rate"] = None if rate is None else round(rate, 6)
        if verdict.kept:
            kept.append(row)
        else:
            rejected.append({**row, "reason": verdict.reasons[0], "reasons": verdict.reasons,
                             "details": verdict.details})
    counts = shard_counts(rows, verdicts)
    counts["timing"].update(
        batches=run.batches, batches_run=run.batches_run, transcribed_rows=run.rows_run,
        resumed_rows=run.resumed_rows, transcribed_audio_seconds=run.audio_seconds_run,
        transcribe_seconds=run.transcribe_seconds, load_seconds=load_seconds,
        filter_seconds=time.perf_counter() - filter_start,
        wall_seconds=time.perf_counter() - started)
    report = {
        "title": f"Teacher data, shard {args.shard} of {args.num_shards}",
        "shards": {"index": args.shard, "count": args.num_shards},
        "pool": {"path": str(args.input), "sha256": header["pool_sha256"], "rows": len(pool),
                 "shard_rows": len(utterances)},
        "teacher": {"path": str(args.teacher), "family": family,
                    "fingerprint": header["teacher_fingerprint"]},
        "settings": {"generation": generation, "filters": settings.as_dict()},
        "counts": counts,
        "summary": summarize(counts),
        "outputs": {"output": str(args.output), "rejects": str(args.rejects)},
    }
    report["provenance"] = provenance({k: report[k] for k in ("shards", "pool", "teacher",
                                                             "settings")})
    with outputs_together(args.rejects, args.output, args.report):  # all three, or none
        write_jsonl(args.rejects, rejected)
        write_jsonl(args.output, kept)
        write_json(args.report, report)
    partial.remove()
    summary = report["summary"]
    log.info("kept %d of %d clips (%.3f h); dropped by reason: %s; teacher error before/after "
             "filtering: CER %s/%s, WER %s/%s; %s audio s/s -> %s", summary["kept"],
             summary["rows"], summary["kept_hours"],
             {k: v for k, v in summary["dropped_by_reason"].items() if v},
             *(summary["teacher_error_rate"][s][m] for m in ("cer", "wer")
               for s in ("before", "after")),
             summary["audio_seconds_per_second"], args.output)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
