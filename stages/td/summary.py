"""Teacher-data reports: additive counts per shard, rates derived from them, and a readable view.

A report keeps two blocks apart: ``counts`` holds only sums (rows, seconds, error counts, time),
so shard reports merge by adding them (``add_counts``); ``summary`` holds everything derived
(hours, fractions, corpus error rates, throughput) and is always recomputed from ``counts`` by
``summarize`` -- rates are never averaged across shards.

Teacher error rate: corpus CER (errors / reference characters) over the zh/yue/ja/ko rows that
have a reference, and corpus WER over the other rows with a reference (en normalizer for en,
basic for the rest), once over every transcribed row ("before" filtering) and once over the
kept rows ("after").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stages.eval.scoring import METRICS
from stages.td.filters import FILTERS, REPETITION_CHECKS, Verdict, metric_for

LANGUAGE_SOURCES = ("manifest", "detected", "none")
UNKNOWN_LANGUAGE = "unknown"  # per-language key of rows whose language is not known
_ERROR_FIELDS = ("rows", "errors", "substitutions", "deletions", "insertions", "ref_len")


def _error_block() -> dict[str, int]:
    return dict.fromkeys(_ERROR_FIELDS, 0)


def empty_counts() -> dict[str, Any]:
    return {
        "rows": {"input": 0, "kept": 0, "dropped": 0, "with_reference": 0},
        "seconds": {"input": 0.0, "kept": 0.0, "dropped": 0.0},
        "dropped_by_reason": dict.fromkeys(FILTERS, 0),
        "failed_by_filter": dict.fromkeys(FILTERS, 0),
        "repetition_checks": dict.fromkeys(REPETITION_CHECKS, 0),
        "language_sources": dict.fromkeys(LANGUAGE_SOURCES, 0),
        "languages": {},
        "teacher_errors": {"before": {m: _error_block() for m in METRICS},
                           "after": {m: _error_block() for m in METRICS}},
        "timing": {"batches": 0, "batches_run": 0, "transcribed_rows": 0, "resumed_rows": 0,
                   "transcribed_audio_seconds": 0.0, "transcribe_seconds": 0.0,
                   "load_seconds": 0.0, "filter_seconds": 0.0, "wall_seconds": 0.0},
    }


def _add_errors(block: dict[str, int], verdict: Verdict) -> None:
    counts = verdict.counts
    block["rows"] += 1
    block["errors"] += counts.errors
    block["substitutions"] += counts.substitutions
    block["deletions"] += counts.deletions
    block["insertions"] += counts.insertions
    block["ref_len"] += counts.ref_len


def shard_counts(rows: Sequence[Mapping[str, Any]], verdicts: Sequence[Verdict]
                 ) -> dict[str, Any]:
    """Counts over a shard's teacher rows (kept and dropped) and their verdicts."""
    counts = empty_counts()
    for row, verdict in zip(rows, verdicts, strict=True):
        seconds = float(row["duration"])
        outcome = "kept" if verdict.kept else "dropped"
        counts["rows"]["input"] += 1
        counts["rows"][outcome] += 1
        counts["seconds"]["input"] += seconds
        counts["seconds"][outcome] += seconds
        if verdict.reasons:
            counts["dropped_by_reason"][verdict.reasons[0]] += 1
        for reason in verdict.reasons:
            counts["failed_by_filter"][reason] += 1
        for check in verdict.repetition_checks:
            counts["repetition_checks"][check] += 1
        counts["language_sources"][row["language_source"]] += 1
        lang = counts["languages"].setdefault(row.get("language") or UNKNOWN_LANGUAGE, {
            "rows": 0, "kept": 0, "seconds": 0.0, "kept_seconds": 0.0,
            "errors": 0, "ref_len": 0, "kept_errors": 0, "kept_ref_len": 0})
        lang["rows"] += 1
        lang["seconds"] += seconds
        if verdict.kept:
            lang["kept"] += 1
            lang["kept_seconds"] += seconds
        if verdict.counts is not None:
            counts["rows"]["with_reference"] += 1
            _add_errors(counts["teacher_errors"]["before"][verdict.metric], verdict)
            lang["errors"] += verdict.counts.errors
            lang["ref_len"] += verdict.counts.ref_len
            if verdict.kept:
                _add_errors(counts["teacher_errors"]["after"][verdict.metric], verdict)
                lang["kept_errors"] += verdict.counts.errors
                lang["kept_ref_len"] += verdict.counts.ref_len
    return counts


def add_counts(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Element-wise sum of two counts blocks (nested dicts of numbers; missing keys are 0)."""
    out: dict[str, Any] = {}
    for key in list(a) + [k for k in b if k not in a]:
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) or isinstance(y, Mapping):
            out[key] = add_counts(x or {}, y or {})
        else:
            out[key] = (x or 0) + (y or 0)
    return out


def _rate(errors: int, ref_len: int) -> float | None:
    return round(errors / ref_len, 6) if ref_len else None


def summarize(counts: Mapping[str, Any]) -> dict[str, Any]:
    """Everything derived from ``counts``: hours, fractions, error rates, throughput."""
    rows, seconds, timing = counts["rows"], counts["seconds"], counts["timing"]
    errors = counts["teacher_errors"]
    languages = {}
    for name in sorted(counts["languages"]):
        lang = counts["languages"][name]
        metric = metric_for(None if name == UNKNOWN_LANGUAGE else name)
        languages[name] = {
            "rows": lang["rows"], "kept": lang["kept"],
            "hours": round(lang["seconds"] / 3600, 6),
            "kept_hours": round(lang["kept_seconds"] / 3600, 6),
            "metric": metric,
            "error_rate_before": _rate(lang["errors"], lang["ref_len"]),
            "error_rate_after": _rate(lang["kept_errors"], lang["kept_ref_len"]),
        }
    run_seconds = timing["transcribe_seconds"]
    return {
        "rows": rows["input"], "kept": rows["kept"], "dropped": rows["dropped"],
        "kept_fraction": round(rows["kept"] / rows["input"], 6) if rows["input"] else None,
        "hours": round(seconds["input"] / 3600, 6),
        "kept_hours": round(seconds["kept"] / 3600, 6),
        "dropped_by_reason": dict(counts["dropped_by_reason"]),
        "teacher_error_rate": {
            stage: {m: _rate(errors[stage][m]["errors"], errors[stage][m]["ref_len"])
                    for m in METRICS}
            for stage in ("before", "after")},
        "languages": languages,
        "audio_seconds_per_second": (round(timing["transcribed_audio_seconds"] / run_seconds, 3)
                                     if run_seconds > 0 else None),
    }


# ---- markdown ----------------------------------------------------------------------------------

def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if percent:
        return f"{100 * value:.2f} %"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render_markdown(report: Mapping[str, Any]) -> str:
    """A readable view of a shard or merged report."""
    counts, summary = report["counts"], report["summary"]
    title = report.get("title", "Teacher data")
    lines = [f"# {title}", ""]
    lines += [f"- teacher: `{report['teacher']['path']}` ({report['teacher']['family']})",
              f"- pool: `{report['pool']['path']}` ({report['pool']['rows']} rows)",
              f"- shards: {report['shards']['count']}"
              + (f" (this is shard {report['shards']['index']})"
                 if report["shards"].get("index") is not None else ""),
              f"- kept {summary['kept']} of {summary['rows']} rows "
              f"({_fmt(summary['kept_fraction'], True)}), {summary['kept_hours']:.3f} h of "
              f"{summary['hours']:.3f} h",
              f"- throughput: {_fmt(summary['audio_seconds_per_second'])} audio s/s over "
              f"{counts['timing']['transcribed_rows']} rows transcribed "
              f"({counts['timing']['resumed_rows']} resumed from earlier runs)", ""]
    lines += ["## Dropped rows", "", "| filter | dropped (first reason) | failed (any) |",
              "|---|---:|---:|"]
    for name in FILTERS:
        lines.append(f"| {name} | {counts['dropped_by_reason'][name]} | "
                     f"{counts['failed_by_filter'][name]} |")
    checks = ", ".join(f"{k} {v}" for k, v in counts["repetition_checks"].items())
    lines += ["", f"Repetition checks fired: {checks}.", ""]
    lines += ["## Teacher error rate on the pool references", "",
              f"{counts['rows']['with_reference']} rows have a reference.", "",
              "| metric | before filtering | after filtering |", "|---|---:|---:|"]
    for metric in METRICS:
        before = counts["teacher_errors"]["before"][metric]
        after = counts["teacher_errors"]["after"][metric]
        rates = summary["teacher_error_rate"]
        lines.append(f"| {metric.upper()} | {_fmt(rates['before'][metric], True)} "
                     f"({before['errors']}/{before['ref_len']}, {before['rows']} rows) | "
                     f"{_fmt(rates['after'][metric], True)} "
                     f"({after['errors']}/{after['ref_len']}, {after['rows']} rows) |")
    lines += ["", "## Languages", "",
              "| language | rows | kept | kept hours | metric | error before | error after |",
              "|---|---:|---:|---:|---|---:|---:|"]
    for name, lang in summary["languages"].items():
        lines.append(f"| {name} | {lang['rows']} | {lang['kept']} | {lang['kept_hours']:.4f} | "
                     f"{lang['metric']} | {_fmt(lang['error_rate_before'], True)} | "
                     f"{_fmt(lang['error_rate_after'], True)} |")
    sources = ", ".join(f"{k} {v}" for k, v in counts["language_sources"].items())
    lines += ["", f"Language source: {sources}.", ""]
    return "\n".join(lines)
