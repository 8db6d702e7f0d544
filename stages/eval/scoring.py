"""Error counting: jiwer's alignment per utterance, corpus totals, and scored rows worst first.

Units: CER counts characters (Unicode code points) with all whitespace removed, so a reference
written with spaces between Chinese characters scores the same as one without, and each Latin
letter inside Chinese text is one character. WER counts whitespace-separated words.

Both metrics go through ``jiwer.process_words``: the text is cut into units here and joined with
single spaces, so jiwer's word alignment is an alignment of exactly those units. One batched call
covers the corpus; per-utterance substitutions, deletions and insertions are read off jiwer's
alignment chunks. An empty reference is valid: every predicted unit is then an insertion, and the
utterance's error rate is undefined (``None``, JSON null).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import jiwer
from tqdm import tqdm

from stages.common.errors import UserError
from stages.common.settings import setting
from stages.eval.normalize import Normalizer, NormalizerName, default_normalizer
from stages.eval.normalize import normalizer as make_normalizer

Metric = Literal["cer", "wer"]
METRICS: tuple[str, ...] = get_args(Metric)

# Fields score_rows adds to each row; stale copies from an earlier scoring are replaced.
SCORE_FIELDS = ("ref_norm", "pred_norm", "errors", "substitutions", "deletions", "insertions",
                "ref_len", "error_rate", *(f"{metric}_errors" for metric in METRICS))

# Units are joined with one space and contain no whitespace, so splitting on " " recovers them.
_SPLIT_UNITS = jiwer.ReduceToListOfListOfWords(word_delimiter=" ")

# Normalize with a progress bar only when there is enough work to watch.
_PROGRESS_MIN_ROWS = 20_000


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations of one utterance (or a corpus) against a reference of ``ref_len`` units."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_len: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def hits(self) -> int:
        return self.ref_len - self.substitutions - self.deletions

    @property
    def rate(self) -> float | None:
        """errors / ref_len; ``None`` when the reference is empty (the rate is undefined)."""
        return self.errors / self.ref_len if self.ref_len else None

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(self.substitutions + other.substitutions,
                           self.deletions + other.deletions,
                           self.insertions + other.insertions,
                           self.ref_len + other.ref_len)


@dataclass(frozen=True, kw_only=True)
class Scoring:
    """How transcripts are scored: the metric and the text normalizer."""

    metric: Metric = setting(help="cer or wer")
    normalizer: NormalizerName | None = setting(
        None, help="text normalizer (default: zh for cer, en for wer)")
    en_spelling: str | None = setting(None, metavar="JSON", help="spelling map for the en "
                                      "normalizer (e.g. a Whisper normalizer.json)")

    def normalizer_name(self) -> str:
        return self.normalizer or default_normalizer(self.metric)

    def make_normalizer(self) -> Normalizer:
        return make_normalizer(self.normalizer_name(), english_spelling=self.en_spelling)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def units(text: str, metric: str) -> list[str]:
    """The units errors are counted in: characters without whitespace (cer) or words (wer)."""
    _check_metric(metric)
    if metric == "cer":
        return [char for char in text if not char.isspace()]
    return text.split()


def count_errors_batch(refs: Sequence[str], hyps: Sequence[str], metric: str) -> list[ErrorCounts]:
    """Per-utterance counts for aligned lists of (already normalized) references and hypotheses."""
    _check_metric(metric)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return []
    ref_units = [units(ref, metric) for ref in refs]
    hyp_units = [units(hyp, metric) for hyp in hyps]
    output = jiwer.process_words(
        [" ".join(u) for u in ref_units], [" ".join(u) for u in hyp_units],
        reference_transform=_SPLIT_UNITS, hypothesis_transform=_SPLIT_UNITS,
    )
    counts = []
    for ref, chunks in zip(ref_units, output.alignments, strict=True):
        subs = dels = ins = 0
        for chunk in chunks:
            if chunk.type == "substitute":
                subs += chunk.ref_end_idx - chunk.ref_start_idx
            elif chunk.type == "delete":
                dels += chunk.ref_end_idx - chunk.ref_start_idx
            elif chunk.type == "insert":
                ins += chunk.hyp_end_idx - chunk.hyp_start_idx
        counts.append(ErrorCounts(subs, dels, ins, len(ref)))
    return counts


def count_errors(ref: str, hyp: str, metric: str) -> ErrorCounts:
    """Counts for one (already normalized) reference/hypothesis pair."""
    return count_errors_batch([ref], [hyp], metric)[0]


def total(counts: Iterable[ErrorCounts]) -> ErrorCounts:
    """Corpus totals: the corpus rate is total errors / total reference units."""
    return sum(counts, ErrorCounts())


def _check_fields(rows: Sequence[dict[str, Any]], keys: Sequence[str], source: str,
                  line_numbers: Sequence[int] | None) -> None:
    """Every row needs string values under ``keys``; report every row that lacks one."""
    problems = []
    for index, row in enumerate(rows):
        line = line_numbers[index] if line_numbers is not None else index + 1
        for key in keys:
            if key not in row:
                problems.append(f"{source}:{line}: field {key!r} is missing")
            elif not isinstance(row[key], str):
                kind = "null" if row[key] is None else type(row[key]).__name__
                problems.append(f"{source}:{line}: field {key!r} is {kind}, expected a string")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(
            f"{len(problems)} problem(s) in {source}; every row needs the reference "
            f"{keys[0]!r} and the prediction {keys[1]!r} as strings (an empty prediction is \"\"; "
            f"other field names are chosen with the ref/hyp key options):\n  {shown}{more}"
        )


def _worst_first_key(row: dict[str, Any]) -> tuple[int, float]:
    rate = row["error_rate"]
    if rate is None:  # empty reference: any insertion there is worse than any finite rate
        rate = math.inf if row["errors"] else 0.0
    return (-row["errors"], -rate)


def score_rows(
    rows: Sequence[dict[str, Any]],
    metric: str,
    normalizer: str | Callable[[str], str],
    ref_key: str = "text",
    hyp_key: str = "pred_text",
    *,
    source: str = "<rows>",
    line_numbers: Sequence[int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score prediction rows; returns (scored rows worst first, corpus summary).

    Each returned row is a copy of the input with ``SCORE_FIELDS`` set: normalized texts, counts,
    ``error_rate`` (``None`` for an empty reference) and ``<metric>_errors`` (= ``errors``, the
    name existing eval tooling sorts by). Order: errors descending, then error rate descending,
    then input order. ``source`` and ``line_numbers`` (one per row) name the place of a bad row
    in the UserError raised when a reference or prediction is missing or not a string.
    """
    _check_metric(metric)
    if line_numbers is not None and len(line_numbers) != len(rows):
        raise ValueError(f"{len(line_numbers)} line numbers for {len(rows)} rows")
    _check_fields(rows, (ref_key, hyp_key), source, line_numbers)
    if isinstance(normalizer, str):
        name, normalize = normalizer, make_normalizer(normalizer)
    else:
        name, normalize = getattr(normalizer, "__name__", "custom"), normalizer

    # mininterval: under Snakemake stderr is a log file, where every refresh is a new line.
    progress = tqdm(rows, desc=f"normalize ({name})", unit="utt", mininterval=5,
                    disable=len(rows) < _PROGRESS_MIN_ROWS)
    ref_norm, hyp_norm = [], []
    for row in progress:
        ref_norm.append(normalize(row[ref_key]))
        hyp_norm.append(normalize(row[hyp_key]))
    counts = count_errors_batch(ref_norm, hyp_norm, metric)

    scored = []
    for row, ref, hyp, count in zip(rows, ref_norm, hyp_norm, counts, strict=True):
        out = {key: value for key, value in row.items() if key not in SCORE_FIELDS}
        out.update(
            ref_norm=ref, pred_norm=hyp, errors=count.errors,
            substitutions=count.substitutions, deletions=count.deletions,
            insertions=count.insertions, ref_len=count.ref_len, error_rate=count.rate,
        )
        out[f"{metric}_errors"] = count.errors
        scored.append(out)
    scored.sort(key=_worst_first_key)  # list.sort is stable: ties keep input order

    corpus = total(counts)
    summary = {
        "metric": metric,
        "normalizer": name,
        "ref_key": ref_key,
        "hyp_key": hyp_key,
        "utterances": len(rows),
        "rate": corpus.rate,
        metric: corpus.rate,
        "errors": corpus.errors,
        "substitutions": corpus.substitutions,
        "deletions": corpus.deletions,
        "insertions": corpus.insertions,
        "hits": corpus.hits,
        "ref_len": corpus.ref_len,
        "empty_predictions": sum(1 for hyp in hyp_norm if not units(hyp, metric)),
        "empty_references": sum(1 for count in counts if count.ref_len == 0),
    }
    return scored, summary
