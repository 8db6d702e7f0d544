"""espeak-ng through ctypes: every language speaks, synthesis is pure, errors are clear."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from stages.demo.espeak import LANGUAGE_VOICES, Espeak, EspeakError, voice_name
from stages.demo.sentences import LANGUAGES, generate_sentence

# Plausible seconds per unit of text: characters for zh and ja (kana), words otherwise.
SECONDS_PER_UNIT = {"zh": (0.12, 0.5), "ja": (0.06, 0.3)}
DEFAULT_SECONDS_PER_UNIT = (0.12, 0.9)


@pytest.fixture(scope="module")
def espeak() -> Espeak:
    return Espeak()


def _units(sentence) -> int:
    if sentence.language in ("zh", "ja"):
        return len(sentence.text) - 1  # characters without the final punctuation
    return len(sentence.words)


def _f0(samples: np.ndarray, sample_rate: int) -> float:
    """Median autocorrelation pitch (60-400 Hz) over loud 40 ms frames."""
    frame = int(0.04 * sample_rate)
    lags = np.arange(sample_rate // 400, sample_rate // 60)
    loudest = np.max(np.abs(samples))
    pitches = []
    for start in range(0, samples.size - frame, frame):
        chunk = samples[start:start + frame] - samples[start:start + frame].mean()
        if np.max(np.abs(chunk)) < 0.3 * loudest:
            continue
        corr = np.array([np.dot(chunk[:-lag], chunk[lag:]) for lag in lags])
        pitches.append(sample_rate / lags[int(np.argmax(corr))])
    return float(np.median(pitches))


def test_sample_rate_comes_from_the_library(espeak):
    assert espeak.sample_rate == 22050
    assert espeak.default_rate == 175
    assert espeak.default_pitch == 50


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_language_speaks_with_plausible_duration(espeak, language):
    rng = np.random.default_rng(7)
    for _ in range(3):
        sentence = generate_sentence(language, rng)
        samples, rate = espeak.synthesize(sentence.text, voice_name(language))
        assert samples.dtype == np.float32
        seconds = samples.size / rate
        low, high = SECONDS_PER_UNIT.get(language, DEFAULT_SECONDS_PER_UNIT)
        assert low * _units(sentence) <= seconds <= high * _units(sentence), sentence.text
        assert np.sqrt(np.mean(samples**2)) > 0.02, "speech is (nearly) silent"
        assert np.mean(np.abs(samples) > 0.01) > 0.3, "too little active signal"


def test_synthesis_is_a_pure_function_of_its_arguments(espeak):
    text = "the little dog found a red ball."
    first = espeak.synthesize(text, "en-us+f2", seed=3)[0]
    espeak.synthesize("今天我们在公园看书。", "cmn+m3")  # other work in between
    espeak.synthesize("die Katze schläft.", "de+croak")
    again = espeak.synthesize(text, "en-us+f2", seed=3)[0]
    np.testing.assert_array_equal(first, again)
    # The seed drives the breath noise of this variant.
    assert not np.array_equal(first, espeak.synthesize(text, "en-us+f2", seed=4)[0])


def test_variants_rate_and_pitch_change_the_voice(espeak):
    text = "the teacher carried a green box to the park."
    low = espeak.synthesize(text, "en-us", pitch=20)[0]
    high = espeak.synthesize(text, "en-us", pitch=80)[0]
    assert _f0(high, espeak.sample_rate) > 1.3 * _f0(low, espeak.sample_rate)
    female = espeak.synthesize(text, "en-us+f3")[0]
    male = espeak.synthesize(text, "en-us+m3")[0]
    assert _f0(female, espeak.sample_rate) > 1.3 * _f0(male, espeak.sample_rate)
    slow = espeak.synthesize(text, "en-us", rate=120)[0]
    fast = espeak.synthesize(text, "en-us", rate=240)[0]
    assert slow.size > 1.5 * fast.size


def test_safe_from_several_threads(espeak):
    jobs = [("the cat sat.", "en-us+m1"), ("我看书。", "cmn"), ("ねこはげんきです。", "ja"),
            ("나는 책을 읽어요.", "ko")] * 3
    serial = [espeak.synthesize(text, voice)[0] for text, voice in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda job: espeak.synthesize(*job)[0], jobs))
    for expected, got in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(expected, got)


def test_errors_are_clear(espeak):
    with pytest.raises(EspeakError, match="no voice 'xx-nope'"):
        espeak.synthesize("hello.", "xx-nope")
    with pytest.raises(ValueError, match="rate 20 outside"):
        espeak.synthesize("hello.", "en-us", rate=20)
    with pytest.raises(ValueError, match="pitch 101 outside"):
        espeak.synthesize("hello.", "en-us", pitch=101)
    with pytest.raises(ValueError, match="empty"):
        espeak.synthesize("  ", "en-us")
    with pytest.raises(ValueError, match="unsupported language"):
        voice_name("xx")


def test_voice_names():
    assert voice_name("zh") == "cmn"
    assert voice_name("en", "f3") == "en-us+f3"
    assert voice_name("en", "m1", base="en") == "en+m1"
    assert set(LANGUAGE_VOICES) == set(LANGUAGES)
