"""Quality filters for teacher transcripts (pseudo-labels), before anything trains on them.

A teacher transcript is dropped when it fails any enabled filter; filters run in this order and
the first failure is the row's ``reason`` (all failures are its ``reasons``):

``empty``
    The transcript is empty (or only whitespace).
``unfinished``
    The teacher never wrote its stop token within ``max_new_tokens``: the transcript is cut off,
    and a response that runs to the cap is almost always a repetition loop.
``repetition``
    Hallucination loops, four checks (the row's ``details`` name the one that fired):
    ``ngram``: a unit n-gram (1 <= n <= ``max_repeat_ngram``) repeated back to back more than
    ``max_repeats`` times; ``char_run``: one non-space character repeated more than
    ``max_char_run`` times in a row; ``compression``: zlib compression ratio of the UTF-8
    transcript above ``max_compression_ratio`` (Whisper's hallucination test, 2.4);
    ``rate``: more spoken units per second of audio than the language's bound.
    Units: characters for zh/yue/ja/ko, words for other languages. Spoken units for the rate:
    letters and digits for zh/yue/ja/ko (Chinese characters, kana, Hangul syllables), letters
    for others. Default bounds (units/s), about twice fast read speech: zh/yue 12 (typical 4-6),
    ja 15 (kana/kanji; typical 6-8), ko 12 (typical 5-7), every other language 25 letters/s
    (typical 12-16).
``low_logprob``
    The mean log-probability of the generated tokens is below ``min_mean_logprob`` (default
    -1.0, Whisper's ``logprob_threshold``): the teacher itself was unsure.
``high_error_rate``
    Only where the pool row has a reference: the normalized error rate against it is above the
    metric's bound. CER with the zh normalizer for zh/yue/ja/ko, WER with Whisper's English
    normalizer for en, WER with the basic normalizer for every other (or unknown) language.
    Default bound 0.1 for both (distil-whisper drops pseudo-labels above 10 % WER). An empty
    normalized reference fails only if the transcript is not empty too.

Error counts against the reference are computed for every row that has one, whether or not the
filter is enabled: the report needs them (teacher error rate before and after filtering).
"""

from __future__ import annotations

import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any, Literal, get_args

from stages.common.settings import setting
from stages.eval.normalize import Normalizer, normalize_zh, normalizer
from stages.eval.scoring import ErrorCounts, count_errors_batch

FilterName = Literal["empty", "unfinished", "repetition", "low_logprob", "high_error_rate"]
FILTERS: tuple[str, ...] = get_args(FilterName)
REPETITION_CHECKS = ("ngram", "char_run", "compression", "rate")
# Languages scored by characters (and whose repetition units are characters).
CER_LANGUAGES = frozenset({"zh", "yue", "ja", "ko"})
DEFAULT_LANGUAGE_KEY = "default"  # the rate bound of every language not listed
DEFAULT_MAX_UNITS_PER_SECOND = MappingProxyType(
    {"zh": 12.0, "yue": 12.0, "ja": 15.0, "ko": 12.0, DEFAULT_LANGUAGE_KEY: 25.0})


@dataclass(frozen=True, kw_only=True)
class FilterSettings:
    """filters (each counted; --filters picks the ones that drop rows)"""

    filters: tuple[FilterName, ...] = setting(
        FILTERS, metavar="NAME", help="filters that drop rows; give none to keep every row")
    max_repeats: int = setting(4, help="most back-to-back copies of an n-gram")
    max_repeat_ngram: int = setting(10, help="longest n-gram checked for back-to-back repeats, "
                                             "in units")
    max_char_run: int = setting(10, help="longest run of one non-space character")
    max_compression_ratio: float = setting(2.4, help="highest zlib compression ratio of a "
                                                     "transcript")
    max_units_per_second: dict[str, float] = setting(
        dict(DEFAULT_MAX_UNITS_PER_SECOND), metavar="LANG=N",
        help="per-language bounds on spoken units per second (characters for zh/yue/ja/ko, "
             "letters else), merged into the defaults; `default` covers the unlisted languages")
    min_mean_logprob: float = setting(-1.0, help="lowest teacher mean token log-prob")
    max_cer: float = setting(0.1, help="highest CER vs the reference, zh/yue/ja/ko")
    max_wer: float = setting(0.1, help="highest WER vs the reference, other languages")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.filters) - set(FILTERS))
        if unknown:
            raise ValueError(f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(FILTERS)}")
        for name in ("max_repeats", "max_repeat_ngram", "max_char_run"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_compression_ratio", "max_cer", "max_wer"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if DEFAULT_LANGUAGE_KEY not in self.max_units_per_second:
            raise ValueError(f"max_units_per_second needs a {DEFAULT_LANGUAGE_KEY!r} entry")
        if any(not v > 0 for v in self.max_units_per_second.values()):
            raise ValueError("max_units_per_second bounds must be > 0")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able settings, for reports and provenance."""
        return {"enabled": list(self.filters), "max_repeats": self.max_repeats,
                "max_repeat_ngram": self.max_repeat_ngram, "max_char_run": self.max_char_run,
                "max_compression_ratio": self.max_compression_ratio,
                "max_units_per_second": dict(sorted(self.max_units_per_second.items())),
                "min_mean_logprob": self.min_mean_logprob, "max_cer": self.max_cer,
                "max_wer": self.max_wer}


# ---- languages ---------------------------------------------------------------------------------

def metric_for(language: str | None) -> str:
    """cer for languages written without word spaces (zh/yue/ja/ko), wer for the rest."""
    return "cer" if language in CER_LANGUAGES else "wer"


def normalizer_name_for(language: str | None) -> str:
    if language in CER_LANGUAGES:
        return "zh"
    return "en" if language == "en" else "basic"


@cache
def _normalizer(name: str) -> Normalizer:
    return normalizer(name)


# ---- repetition --------------------------------------------------------------------------------

def units(text: str, language: str | None) -> list[str]:
    """Repetition units of a transcript: characters (CER languages) or words, after the zh
    normalizer's language-neutral folding (NFKC, lower-case, punctuation removed)."""
    folded = normalize_zh(text)
    if language in CER_LANGUAGES:
        return [char for char in folded if not char.isspace()]
    return folded.split()


def longest_tandem_repeat(seq: Sequence[str], max_ngram: int) -> tuple[int, int]:
    """(copies, n) of the n-gram repeated back to back most often, n in 1..max_ngram.

    For a shift n, a stretch of m consecutive positions k with seq[k] == seq[k + n] is a tandem
    repeat of period n covering m + n items, i.e. (m + n) // n copies; one pass per n.
    """
    best = (1, 1) if seq else (0, 0)
    for n in range(1, min(max_ngram, len(seq) // 2) + 1):
        run = 0
        for k in range(len(seq) - n):
            run = run + 1 if seq[k] == seq[k + n] else 0
            copies = (run + n) // n
            if copies > best[0]:
                best = (copies, n)
    return best


def longest_char_run(text: str) -> tuple[int, str]:
    """(length, char) of the longest run of one non-space character."""
    best, best_char, run, previous = 0, "", 0, None
    for char in text:
        if char.isspace():
            run, previous = 0, None
            continue
        run = run + 1 if char == previous else 1
        previous = char
        if run > best:
            best, best_char = run, char
    return best, best_char


def compression_ratio(text: str) -> float:
    """UTF-8 length over zlib-compressed length (Whisper's repetition measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def spoken_units(text: str, language: str | None) -> int:
    """What the per-second bound counts: letters and digits (CER languages) or letters."""
    text = unicodedata.normalize("NFKC", text)
    if language in CER_LANGUAGES:
        return sum(1 for char in text if unicodedata.category(char)[0] in "LN")
    return sum(1 for char in text if char.isalpha())


def rate_bound(language: str | None, settings: FilterSettings) -> float:
    bounds = settings.max_units_per_second
    return bounds.get(language or "", bounds[DEFAULT_LANGUAGE_KEY])


def repetition_problems(text: str, language: str | None, duration: float,
                        settings: FilterSettings) -> dict[str, str]:
    """The repetition checks a transcript fails: check name -> what was found."""
    problems = {}
    copies, n = longest_tandem_repeat(units(text, language), settings.max_repeat_ngram)
    if copies > settings.max_repeats:
        problems["ngram"] = (f"a {n}-gram repeated {copies} times in a row "
                             f"(max {settings.max_repeats})")
    run, char = longest_char_run(text)
    if run > settings.max_char_run:
        problems["char_run"] = f"{char!r} repeated {run} times (max {settings.max_char_run})"
    ratio = compression_ratio(text)
    if ratio > settings.max_compression_ratio:
        problems["compression"] = (f"compression ratio {ratio:.2f} "
                                   f"(max {settings.max_compression_ratio})")
    bound = rate_bound(language, settings)
    count = spoken_units(text, language)
    if duration > 0 and count / duration > bound:
        problems["rate"] = (f"{count / duration:.1f} units/s over {duration:.2f} s "
                            f"(max {bound:g} for {language or 'unknown language'})")
    return problems


# ---- verdicts ----------------------------------------------------------------------------------

@dataclass
class Verdict:
    """What the filters say about one transcript."""

    reasons: list[str]  # failed filters, in FILTERS order (empty: keep)
    details: dict[str, str]  # failed filter -> what was found
    repetition_checks: list[str] = field(default_factory=list)  # REPETITION_CHECKS that fired
    metric: str | None = None  # cer/wer when the row has a reference
    counts: ErrorCounts | None = None  # errors against the reference (normalized)

    @property
    def kept(self) -> bool:
        return not self.reasons

    @property
    def error_rate(self) -> float | None:
        if self.counts is None:
            return None
        if self.counts.ref_len == 0:  # empty reference: any output unit is infinitely wrong
            return float("inf") if self.counts.errors else 0.0
        return self.counts.rate


@dataclass(frozen=True)
class Candidate:
    """The fields the filters read from one teacher-transcribed row."""

    text: str
    language: str | None
    duration: float
    mean_logprob: float
    stopped: bool
    reference: str | None = None


def reference_counts(candidates: Sequence[Candidate]) -> list[tuple[str, ErrorCounts] | None]:
    """(metric, counts) against the reference for rows that have one, batched per normalizer."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, c in enumerate(candidates):
        if c.reference is not None:
            key = (metric_for(c.language), normalizer_name_for(c.language))
            groups.setdefault(key, []).append(index)
    out: list[tuple[str, ErrorCounts] | None] = [None] * len(candidates)
    for (metric, name), indices in groups.items():
        normalize = _normalizer(name)
        refs = [normalize(candidates[i].reference) for i in indices]
        hyps = [normalize(candidates[i].text) for i in indices]
        for index, counts in zip(indices, count_errors_batch(refs, hyps, metric), strict=True):
            out[index] = (metric, counts)
    return out


def judge(candidates: Sequence[Candidate], settings: FilterSettings) -> list[Verdict]:
    """Run every enabled filter on each candidate; one verdict per candidate, same order."""
    enabled = set(settings.filters)
    verdicts = []
    for c, scored in zip(candidates, reference_counts(candidates), strict=True):
        metric, counts = scored or (None, None)
        verdict = Verdict([], {}, metric=metric, counts=counts)
        fails: dict[str, str] = {}
        if not c.text.strip():
            fails["empty"] = "empty transcript"
        if not c.stopped:
            fails["unfinished"] = "no stop token within max_new_tokens"
        problems = repetition_problems(c.text, c.language, c.duration, settings)
        if problems:
            fails["repetition"] = "; ".join(f"{k}: {v}" for k, v in problems.items())
        if c.mean_logprob < settings.min_mean_logprob:
            fails["low_logprob"] = (f"mean log-prob {c.mean_logprob:.3f} "
                                    f"(min {settings.min_mean_logprob})")
        rate = verdict.error_rate
        if rate is not None:
            bound = settings.max_cer if verdict.metric == "cer" else settings.max_wer
            if rate > bound:
                fails["high_error_rate"] = f"{verdict.metric} {rate:.3f} (max {bound})"
        verdict.reasons = [name for name in FILTERS if name in fails and name in enabled]
        verdict.details = {name: fails[name] for name in verdict.reasons}
        verdict.repetition_checks = [k for k in REPETITION_CHECKS if k in problems]
        verdicts.append(verdict)
    return verdicts
