"""Degradations: requested SNR, RT60, band limit, speed and levels are what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from stages.data.audio import resample
from stages.demo import degrade
from stages.demo.espeak import Espeak

SR = 16_000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples, rate = Espeak().synthesize("the old farmer carried a big box to the river.",
                                        "en-us+m3")
    return resample(samples, rate, SR)


def _band_energy(signal: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(signal.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(signal.size, 1.0 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum())


def _decay_end(signal: np.ndarray, floor_db: float = -40.0) -> float:
    """Seconds until the 10 ms frame energy stays below ``floor_db`` of the loudest frame."""
    frames = signal[: signal.size // 160 * 160].reshape(-1, 160)
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1)
    loud = np.nonzero(energy > energy.max() * 10 ** (floor_db / 10))[0]
    return (loud[-1] + 1) * 0.01


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr_db", [5.0, 12.0, 25.0])
def test_add_noise_reaches_the_requested_snr(speech, kind, snr_db):
    rng = np.random.default_rng(1)
    if kind == "white":
        noise = degrade.white_noise(speech.size, rng)
    elif kind == "pink":
        noise = degrade.pink_noise(speech.size, rng)
    else:
        noise = degrade.babble_noise([speech[::-1], np.roll(speech, 3000)], speech.size, rng)
    noisy = degrade.peak_normalize(degrade.add_noise(speech, noise, snr_db))
    assert degrade.measure_snr(speech, noisy) == pytest.approx(snr_db, abs=1.5)


def test_pink_noise_has_equal_energy_per_octave_white_does_not():
    rng = np.random.default_rng(2)
    pink = degrade.pink_noise(SR * 4, rng)
    white = degrade.white_noise(SR * 4, rng)
    pink_ratio = _band_energy(pink, 200, 400) / _band_energy(pink, 3200, 6400)
    white_ratio = _band_energy(white, 200, 400) / _band_energy(white, 3200, 6400)
    assert pink_ratio == pytest.approx(1.0, rel=0.3)
    assert white_ratio == pytest.approx(1 / 16, rel=0.3)
    assert np.sqrt(np.mean(pink.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.8])
def test_impulse_response_decays_at_the_requested_rt60(rt60):
    response = degrade.impulse_response(rt60, np.random.default_rng(3))
    assert degrade.estimate_rt60(response) == pytest.approx(rt60, rel=0.12)


def test_reverberation_lengthens_the_energy_decay(speech):
    padded = np.concatenate([speech, np.zeros(SR, np.float32)])
    dry_end = _decay_end(padded)
    ends = [_decay_end(degrade.reverberate(padded, rt60, np.random.default_rng(4)))
            for rt60 in (0.2, 0.7)]
    assert dry_end + 0.05 < ends[0] < ends[1]
    assert ends[1] - dry_end > 0.2


def test_telephone_codec_removes_everything_above_4khz(speech):
    rng = np.random.default_rng(5)
    wideband = degrade.add_noise(speech, degrade.white_noise(speech.size, rng), 20.0)
    assert _band_energy(wideband, 4000, 8000) > 0.01 * _band_energy(wideband, 0, 8000)
    coded = degrade.telephone_codec(wideband)
    assert abs(coded.size - wideband.size) <= 2
    assert _band_energy(coded, 4000, 8000) < 1e-6 * _band_energy(coded, 0, 8000)
    assert _band_energy(coded, 0, 200) < 0.01 * _band_energy(coded, 0, 8000)  # 300 Hz high-pass
    assert degrade.measure_snr(wideband, coded) < 20.0  # it is a real degradation


def test_mu_law_has_256_levels_and_small_relative_error():
    signal = np.linspace(-1.0, 1.0, 20_001, dtype=np.float32)
    quantized = degrade.mu_law_quantize(signal)
    assert np.unique(quantized).size <= 256
    loud = np.abs(signal) > 0.05
    relative = np.abs(quantized[loud] - signal[loud]) / np.abs(signal[loud])
    assert relative.max() < 0.05


@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_change_speed_scales_duration(speech, factor):
    faster = degrade.change_speed(speech, factor)
    assert faster.size / speech.size == pytest.approx(1 / factor, rel=0.002)
    np.testing.assert_array_equal(degrade.change_speed(speech, 1.0), speech)


def test_gain_and_peak_normalization(speech):
    normalized = degrade.peak_normalize(speech * 3.0, 0.9)
    assert np.max(np.abs(normalized)) == pytest.approx(0.9, rel=1e-6)
    quieter = degrade.apply_gain(normalized, -6.0)
    assert np.max(np.abs(quieter)) == pytest.approx(0.9 * 10 ** (-6 / 20), rel=1e-6)
    silence = np.zeros(10, np.float32)
    np.testing.assert_array_equal(degrade.peak_normalize(silence), silence)


def test_degradations_are_deterministic_for_a_seed(speech):
    def render(seed):
        rng = np.random.default_rng(seed)
        wet = degrade.reverberate(speech, 0.4, rng)
        return degrade.add_noise(wet, degrade.pink_noise(wet.size, rng), 10.0)

    np.testing.assert_array_equal(render(6), render(6))
    assert not np.array_equal(render(6), render(7))


def test_bad_arguments_are_refused(speech):
    with pytest.raises(ValueError, match="fewer than the signal"):
        degrade.add_noise(speech, np.ones(10, np.float32), 10.0)
    with pytest.raises(ValueError, match="silent"):
        degrade.add_noise(np.zeros(100, np.float32), np.ones(100, np.float32), 10.0)
    with pytest.raises(ValueError, match="rt60 must be positive"):
        degrade.impulse_response(0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least one"):
        degrade.babble_noise([], 100, np.random.default_rng(0))
