"""Seeded signal degradations for the demo corpus (16 kHz mono float32 in, float32 out).

Each function is deterministic given its arguments; randomness comes only from the
``numpy.random.Generator`` passed in. SNR is defined over the whole clip (mean power of the clean
clip, silences included, over the mean power of the added noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import soxr

from stages.data.audio import TARGET_SAMPLE_RATE

_LN_1000 = float(np.log(1000.0))  # 60 dB of amplitude decay
TELEPHONE_RATE = 8_000
TELEPHONE_BAND = (300.0, 3400.0)


def signal_power(samples: np.ndarray) -> float:
    return float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0


def _unit_rms(samples: np.ndarray) -> np.ndarray:
    rms = np.sqrt(signal_power(samples))
    if rms == 0.0:
        raise ValueError("noise source is silent")
    return (samples / rms).astype(np.float32)


def white_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise with unit RMS."""
    return _unit_rms(rng.standard_normal(length))


def pink_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f power spectrum (white noise shaped in the frequency domain), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequencies = np.arange(spectrum.size, dtype=np.float64)
    frequencies[0] = 1.0  # keep DC finite; it is removed below
    spectrum /= np.sqrt(frequencies)
    spectrum[0] = 0.0
    return _unit_rms(np.fft.irfft(spectrum, n=length))


def babble_noise(sources: Sequence[np.ndarray], length: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """Several talkers at once: each source looped to ``length`` from a random offset, summed."""
    if not sources:
        raise ValueError("babble noise needs at least one speech source")
    mixture = np.zeros(length, dtype=np.float64)
    for source in sources:
        if source.size == 0:
            raise ValueError("babble source is empty")
        talker = _unit_rms(source)
        looped = np.resize(np.roll(talker, -int(rng.integers(talker.size))), length)
        mixture += looped
    return _unit_rms(mixture)


def add_noise(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``noise`` (at least as long) scaled to the requested whole-clip SNR."""
    if noise.size < signal.size:
        raise ValueError(f"noise has {noise.size} samples, fewer than the signal's {signal.size}")
    signal_pow = signal_power(signal)
    noise = noise[: signal.size].astype(np.float64)
    noise_pow = signal_power(noise)
    if signal_pow == 0.0 or noise_pow == 0.0:
        raise ValueError("cannot set an SNR with a silent signal or silent noise")
    scale = np.sqrt(signal_pow / (noise_pow * 10.0 ** (snr_db / 10.0)))
    return (signal + scale * noise).astype(np.float32)


def measure_snr(clean: np.ndarray, degraded: np.ndarray) -> float:
    """SNR in dB of ``degraded`` against ``clean``, invariant to an overall gain.

    The clean part is the projection of ``degraded`` onto ``clean``; the rest counts as noise.
    """
    clean = clean.astype(np.float64)
    degraded = degraded[: clean.size].astype(np.float64)
    gain = float(np.dot(degraded, clean) / np.dot(clean, clean))
    residual = degraded - gain * clean
    return 10.0 * float(np.log10(np.sum((gain * clean) ** 2) / np.sum(residual**2)))


def impulse_response(rt60: float, rng: np.random.Generator,
                     sample_rate: int = TARGET_SAMPLE_RATE, direct_to_reverb_db: float = 0.0,
                     predelay_s: float = 0.004) -> np.ndarray:
    """A synthetic room response: a unit direct path, then exponentially decaying noise.

    The tail's amplitude falls by 60 dB in ``rt60`` seconds and it lasts ``rt60`` seconds; its
    energy sits ``direct_to_reverb_db`` below the direct path's.
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    predelay = max(1, round(predelay_s * sample_rate))
    tail_length = max(1, round(rt60 * sample_rate))
    times = np.arange(tail_length) / sample_rate
    tail = rng.standard_normal(tail_length) * np.exp(-_LN_1000 * times / rt60)
    tail *= np.sqrt(10.0 ** (-direct_to_reverb_db / 10.0) / np.sum(tail**2))
    response = np.zeros(predelay + tail_length)
    response[0] = 1.0
    response[predelay:] = tail
    return response


def estimate_rt60(response: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> float:
    """RT60 from the Schroeder backward-integrated decay (the -5 to -25 dB slope, T20 x 3)."""
    energy = np.cumsum(np.square(response[::-1], dtype=np.float64))[::-1]
    decay_db = 10.0 * np.log10(energy / energy[0])
    start = int(np.argmax(decay_db <= -5.0))
    stop = int(np.argmax(decay_db <= -25.0))
    if stop <= start:
        raise ValueError("response does not decay by 25 dB")
    slope, _ = np.polyfit(np.arange(start, stop) / sample_rate, decay_db[start:stop], 1)
    return float(-60.0 / slope)


def _fft_convolve(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    length = signal.size + kernel.size - 1
    size = 1 << (length - 1).bit_length()
    product = np.fft.rfft(signal, size) * np.fft.rfft(kernel, size)
    return np.fft.irfft(product, size)[:length]


def reverberate(signal: np.ndarray, rt60: float, rng: np.random.Generator,
                sample_rate: int = TARGET_SAMPLE_RATE, direct_to_reverb_db: float = 0.0
                ) -> np.ndarray:
    """Convolve with :func:`impulse_response`; the output keeps the reverberant tail."""
    response = impulse_response(rt60, rng, sample_rate, direct_to_reverb_db)
    return _fft_convolve(signal.astype(np.float64), response).astype(np.float32)


def change_speed(signal: np.ndarray, factor: float, sample_rate: int = TARGET_SAMPLE_RATE
                 ) -> np.ndarray:
    """Play ``factor`` times faster (tempo and pitch together), by resampling with soxr."""
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return signal.astype(np.float32)
    return soxr.resample(signal, sample_rate * factor, sample_rate, quality="HQ"
                         ).astype(np.float32)


def mu_law_quantize(signal: np.ndarray, bits: int = 8) -> np.ndarray:
    """Mu-law companding to ``bits`` bits and back (G.711-style quantization noise)."""
    mu = float(2**bits - 1)
    clipped = np.clip(signal.astype(np.float64), -1.0, 1.0)
    companded = np.sign(clipped) * np.log1p(mu * np.abs(clipped)) / np.log1p(mu)
    codes = np.round((companded + 1.0) / 2.0 * mu)  # integers 0..mu
    decoded = codes / mu * 2.0 - 1.0
    return (np.sign(decoded) * np.expm1(np.abs(decoded) * np.log1p(mu)) / mu).astype(np.float32)


def _band_pass(signal: np.ndarray, sample_rate: int, low: float, high: float,
               transition: float = 100.0) -> np.ndarray:
    """Zero-phase band-pass by a frequency mask with raised-cosine edges."""
    spectrum = np.fft.rfft(signal.astype(np.float64))
    freqs = np.fft.rfftfreq(signal.size, 1.0 / sample_rate)
    rise = np.clip((freqs - (low - transition / 2)) / transition, 0.0, 1.0)
    fall = np.clip(((high + transition / 2) - freqs) / transition, 0.0, 1.0)
    mask = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))
    return np.fft.irfft(spectrum * mask, n=signal.size)


def telephone_codec(signal: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE, bits: int = 8
                    ) -> np.ndarray:
    """Codec-like degradation: 8 kHz telephone band (300-3400 Hz) plus 8-bit mu-law.

    The output is back at ``sample_rate`` and, by construction, has no energy above 4 kHz.
    """
    narrow = soxr.resample(signal.astype(np.float32), sample_rate, TELEPHONE_RATE, quality="HQ")
    narrow = _band_pass(narrow, TELEPHONE_RATE, *TELEPHONE_BAND)
    peak = float(np.max(np.abs(narrow))) if narrow.size else 0.0
    level = 0.9 / peak if peak > 0 else 1.0  # use the codec's full range, then restore level
    coded = mu_law_quantize(narrow * level, bits) / level
    return soxr.resample(coded, TELEPHONE_RATE, sample_rate, quality="HQ").astype(np.float32)


def apply_gain(signal: np.ndarray, gain_db: float) -> np.ndarray:
    return (signal * 10.0 ** (gain_db / 20.0)).astype(np.float32)


def peak_normalize(signal: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale so that the largest absolute sample is ``peak`` (silence is returned unchanged)."""
    current = float(np.max(np.abs(signal))) if signal.size else 0.0
    if current == 0.0:
        return signal.astype(np.float32)
    return (signal * (peak / current)).astype(np.float32)
