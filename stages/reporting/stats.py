"""How sure the results table is: bootstrap intervals over utterances, paired comparisons with
the base, and mean ± sd over training seeds. Pure numbers (numpy); no files, no argv.

Rates are corpus-level, as :mod:`stages.eval.scoring` defines them: total edits / total
reference units. A bootstrap resample draws N utterances with replacement and recomputes that
ratio from the resampled per-utterance ``(errors, ref_len)`` counts, never a mean of
per-utterance rates, so long utterances weigh in a resample as they do in the point estimate.
Resamples are stored as multiplicities (how often each utterance was drawn), which turns every
resampled total into one matrix product.

Seeds. A model trained once per seed has S evaluations of the same N utterances. Its cell is the
mean of the S corpus rates, with their sd (ddof=1; one seed has no sd, None, shown as n/a). The
utterance bootstrap resamples utterances, not seeds: one draw of utterance indices is applied to
every seed (and to every other model on the preset, which makes comparisons paired), and the
resample's value is the mean of the seeds' resampled rates. The interval is thus the
test-set uncertainty of the seed mean (how far the number would move on another test set drawn
the same way), while the sd beside it says how far it moves between training runs. Resampling
the seeds as well (a two-level bootstrap) would mix the two, and with the three seeds a study
affords it would add noise rather than information.

Paired comparison with the base: the share of resamples in which the model's rate is strictly
lower than the base's (``p_better``) and strictly higher (``p_worse``); equal rates are ties,
neither better nor worse. A model is told apart from the base when one share reaches the
confidence level (default 0.95); otherwise the cell is *not distinguishable*. A model identical
to the base ties in every resample: both shares are 0 and it is not distinguishable.

The average over presets is a stratified bootstrap: presets are resampled independently and a
resample's average is the mean of the presets' resampled rates, paired with the base's in the
same way. Resample indices depend only on the bootstrap seed, the preset name and the number of
utterances, so adding or removing a row never moves another row's interval.
"""

from __future__ import annotations

import argparse
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stages.common.settings import positive_int, setting

Verdict = Literal["better", "worse", "not distinguishable"]

# Utterance slots per resampling chunk: bounds memory at ~16 M float64 (128 MiB) whatever N is.
_CHUNK_CELLS = 1 << 24


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0.5, 1), got {text!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class Bootstrap:
    """How intervals and paired comparisons are computed."""

    resamples: int = setting(1000, parse=positive_int,
                             help="bootstrap resamples over utterances, per preset")
    bootstrap_seed: int = setting(0, help="seed of the resampling RNG")
    confidence: float = setting(
        0.95, parse=_confidence,
        help="level of the percentile interval, and the share of paired resamples in which a "
             "model must beat (or lose to) the base to count as distinguishable from it")

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")

    def rng(self, stream: str) -> np.random.Generator:
        """The RNG of one preset: a function of the seed and the preset name alone (crc32 is
        stable across runs and platforms, unlike ``hash``)."""
        return np.random.default_rng([self.bootstrap_seed, zlib.crc32(stream.encode())])


def corpus_rate(errors: Sequence[int] | np.ndarray, ref_len: Sequence[int] | np.ndarray
                ) -> float | None:
    """Total errors / total reference units over the last axis (None: empty reference)."""
    den = int(np.sum(ref_len))
    return float(np.sum(errors)) / den if den else None


def seed_mean_sd(rates: Sequence[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and sample sd (ddof=1) of per-seed rates; the sd of one seed is None (unknown),
    never 0."""
    values = np.asarray(rates, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no seed rates")
    sd = float(np.std(values, ddof=1)) if values.size > 1 else None
    return float(np.mean(values)), sd


def resample_weights(n: int, resamples: int, rng: np.random.Generator
                     ) -> Iterator[np.ndarray]:
    """Chunks of a (resamples, n) matrix of multiplicities: row b counts how often each of the
    n utterances is drawn in resample b (each row sums to n)."""
    if n < 1:
        raise ValueError("cannot resample zero utterances")
    per_chunk = max(1, _CHUNK_CELLS // n)
    done = 0
    while done < resamples:
        b = min(per_chunk, resamples - done)
        draws = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def bootstrap_rates(errors: np.ndarray, ref_len: np.ndarray, resamples: int,
                    rng: np.random.Generator, seeds: Sequence[int] | None = None) -> np.ndarray:
    """Resampled corpus rates of K count vectors on the same N utterances, paired.

    ``errors``: (K, N) per-utterance edit counts (K models or seeds); ``ref_len``: (N,) reference
    units (the same references for all K). ``seeds``: (K,) number of seeds summed into each row
    of ``errors`` (default 1 each); the row's rate is then the mean of its seeds' rates, since
    the seeds share ``ref_len``. Returns (resamples, K); a resample whose drawn utterances hold
    no reference unit at all has NaN (its rate is undefined).
    """
    errors = np.atleast_2d(np.asarray(errors, dtype=np.float64))
    ref_len = np.asarray(ref_len, dtype=np.float64)
    if errors.shape[1] != ref_len.shape[0]:
        raise ValueError(f"errors cover {errors.shape[1]} utterances, ref_len "
                         f"{ref_len.shape[0]}")
    scale = np.ones(errors.shape[0]) if seeds is None else np.asarray(seeds, dtype=np.float64)
    out = []
    for weights in resample_weights(ref_len.shape[0], resamples, rng):
        # Integer totals are exact in float64 (below 2**53) and each rate is one division of
        # two of them, so equal rates compare equal: a seed mean of S copies of the base's
        # counts is (S * e) / (S * n), bit for bit the base's e / n, and ties stay ties.
        den = (weights @ ref_len)[:, None] * scale[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((weights @ errors.T) / np.where(den > 0, den, np.nan))
    return np.concatenate(out, axis=0)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Percentile bootstrap interval (NaN resamples left out; None when none is finite)."""
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_shares(model: np.ndarray, base: np.ndarray) -> tuple[float, float] | None:
    """(share of resamples with model < base, share with model > base); ties count in neither.
    Resamples where either rate is undefined are left out (None when none is left)."""
    model, base = np.asarray(model), np.asarray(base)
    both = np.isfinite(model) & np.isfinite(base)
    if not both.any():
        return None
    m, b = model[both], base[both]
    return float(np.mean(m < b)), float(np.mean(m > b))


def verdict(p_better: float, p_worse: float, confidence: float) -> Verdict:
    if p_better >= confidence:
        return "better"
    if p_worse >= confidence:
        return "worse"
    return "not distinguishable"


@dataclass(frozen=True)
class CellStats:
    """One table cell: a model on a preset (or on the average of the presets)."""

    seed_rates: tuple[float, ...]  # each seed's corpus rate (one entry: a single evaluation)
    mean: float
    sd: float | None  # None: one seed
    interval: tuple[float, float] | None  # bootstrap percentile interval of the seed mean
    p_better: float | None = None  # None: the base itself, or no base to compare with
    p_worse: float | None = None
    verdict: Verdict | None = None
    samples: np.ndarray | None = None  # (resamples,) seed-mean rates, for the average column

    @property
    def seeds(self) -> int:
        return len(self.seed_rates)

    @property
    def indistinguishable(self) -> bool:
        return self.verdict == "not distinguishable"


def _cell(seed_rates: np.ndarray, samples: np.ndarray, base_samples: np.ndarray | None,
          confidence: float) -> CellStats:
    mean, sd = seed_mean_sd(seed_rates)
    shares = paired_shares(samples, base_samples) if base_samples is not None else None
    p_better, p_worse = shares if shares is not None else (None, None)
    return CellStats(
        seed_rates=tuple(float(r) for r in seed_rates), mean=mean, sd=sd,
        interval=percentile_interval(samples, confidence), p_better=p_better, p_worse=p_worse,
        verdict=verdict(p_better, p_worse, confidence) if shares is not None else None,
        samples=samples)


def preset_stats(errors: Mapping[str, np.ndarray], ref_len: np.ndarray, *, stream: str,
                 base: str | None, settings: Bootstrap) -> dict[str, CellStats]:
    """Cells of every model on one preset, all resampled with the same utterance draws.

    ``errors``: model → (S, N) per-seed, per-utterance edit counts, utterances in one common
    order (S may differ between models; the base is typically one evaluation, OPD models one per
    seed). ``ref_len``: (N,) reference units. ``stream``: the preset name (seeds the RNG).
    ``base``: the model the others are compared with (None or absent: no comparisons).
    """
    names = list(errors)
    blocks = [np.atleast_2d(np.asarray(errors[n])) for n in names]
    if any(b.shape[0] == 0 for b in blocks):
        raise ValueError("a model with no seeds")
    ref_len = np.asarray(ref_len)
    if int(ref_len.sum()) == 0:
        raise ValueError(f"{stream}: the references hold no unit; the rate is undefined")
    # Seeds share the references, so the mean of their rates on a draw is their summed errors
    # over (seeds x reference units): one row per model.
    summed = np.stack([b.sum(axis=0) for b in blocks])
    resampled = bootstrap_rates(summed, ref_len, settings.resamples, settings.rng(stream),
                                seeds=[b.shape[0] for b in blocks])
    samples = {n: resampled[:, i] for i, n in enumerate(names)}
    rates = {n: b.sum(axis=1) / ref_len.sum() for n, b in zip(names, blocks, strict=True)}
    base_samples = samples.get(base) if base is not None else None
    return {n: _cell(rates[n], samples[n], None if n == base else base_samples,
                     settings.confidence) for n in names}


def average_stats(cells: Sequence[Mapping[str, CellStats]], *, base: str | None,
                  confidence: float) -> dict[str, CellStats]:
    """Cells of the average over presets (one mapping per preset, as :func:`preset_stats`
    returns), for the models present on every preset with the same number of seeds; a seed's
    average is the mean of its rates over the presets (seeds in the same order everywhere)."""
    if not cells:
        return {}
    names = [n for n in cells[0] if all(n in c for c in cells)
             and len({c[n].seeds for c in cells}) == 1]
    samples = {n: np.mean([c[n].samples for c in cells], axis=0) for n in names}
    seed_rates = {n: np.mean([c[n].seed_rates for c in cells], axis=0) for n in names}
    base_samples = samples.get(base) if base is not None else None
    return {n: _cell(seed_rates[n], samples[n], None if n == base else base_samples,
                     confidence) for n in names}


def format_interval(interval: tuple[float, float] | None, scale: float = 100.0,
                    digits: int = 2) -> str:
    """``[low, high]`` in percent (``n/a`` when undefined)."""
    if interval is None or not all(map(math.isfinite, interval)):
        return "n/a"
    low, high = interval
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
