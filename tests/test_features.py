"""Batched log-mel features (stages.models.features): equal to the processor's own per-clip
features for both families, whatever the batch mates; prompts reused per audio length; anything
the recipe does not reproduce falls back to the processor."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from stages.demo.tiny import build_tiny_models
from stages.models import features as features_module
from stages.models import load_adapter
from stages.models.features import (
    FEATURES,
    MASK,
    LogMelRecipe,
    log_mel_batch,
    recipe_for,
    verified_recipe,
)
from tests.short_run import SPEC as SMALL_SPEC
from tests.test_models import CORPUS, _write_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    texts = [t for group in CORPUS.values() for t in group] * 3
    manifest = _write_manifest(root / "train.jsonl", texts)
    build_tiny_models([manifest], root / "out", SMALL_SPEC, seed=0)
    return root / "out"


@pytest.fixture(params=["teacher_init", "student_init"])
def adapter(request, tiny):
    loaded = load_adapter(str(tiny / request.param))
    loaded.batched_features = True
    return loaded


def noise(samples: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


# Under Qwen3-ASR's 0.5 s minimum, off the 160-sample hop grid, exactly on it, one sample past a
# 4 s GLM window, and three windows long.
LENGTHS = [1_234, 48_077, 32_000, 64_001, 16_000 * 11 + 7]


def test_recipes_are_known_for_both_families_and_checked(adapter):
    recipe = recipe_for(adapter.processor)
    assert recipe is not None
    if adapter.family == "qwen3_asr":
        assert (recipe.window_samples, recipe.min_samples, recipe.frame_multiple) == (None, 8000,
                                                                                      100)
    else:
        assert recipe.window_samples == recipe.pad_to == 4 * 16_000
        assert recipe.frame_multiple == 1
    checked = adapter._batched_features()
    assert checked is not None and checked.__dict__.keys() == recipe.__dict__.keys()
    assert (checked.hop, checked.n_fft, checked.pad_to) == (recipe.hop, recipe.n_fft, recipe.pad_to)


def test_batched_features_equal_the_processor_per_clip(adapter):
    clips = [noise(n, seed) for seed, n in enumerate(LENGTHS)]
    batched = log_mel_batch(adapter._batched_features(), clips, torch.device("cpu"))
    for clip, (mine, frames) in zip(clips, batched, strict=True):
        _, theirs = adapter._encode_clip(clip, None)
        assert set(mine) == set(theirs) == {FEATURES, MASK}
        assert mine[FEATURES].shape == theirs[FEATURES].shape
        assert mine[MASK].dtype == theirs[MASK].dtype == torch.int32
        assert torch.equal(mine[MASK], theirs[MASK])
        assert frames == tuple(theirs[MASK].sum(-1).tolist())
        torch.testing.assert_close(mine[FEATURES], theirs[FEATURES], atol=1e-5, rtol=0)


def test_a_clips_features_do_not_depend_on_its_batch_mates(adapter):
    clip = noise(20_000, 7)
    recipe = adapter._batched_features()
    alone = log_mel_batch(recipe, [clip], torch.device("cpu"))[0][0]
    for mates in ([noise(150_000, 8)], [noise(9_000, 9), noise(70_000, 10)]):
        among = log_mel_batch(recipe, [*mates, clip], torch.device("cpu"))[-1][0]
        assert torch.equal(alone[MASK], among[MASK])
        torch.testing.assert_close(alone[FEATURES], among[FEATURES], atol=1e-6, rtol=0)


def test_encodings_equal_the_per_clip_path_and_prompts_come_once_per_length(adapter,
                                                                            monkeypatch):
    clips = [noise(n, seed) for seed, n in enumerate([24_000, 24_000, 40_017, 24_000, 40_017])]
    languages = ["en", "en", "en", "zh", "en"]
    expected = [adapter._encode_clip(c, lang) for c, lang in zip(clips, languages, strict=True)]
    assert adapter._batched_features() is not None  # the probe check runs before counting
    calls = []
    real_encode = adapter._encode_clip
    monkeypatch.setattr(adapter, "_encode_clip",
                        lambda audio, language, **kw: calls.append(language)
                        or real_encode(audio, language, **kw))
    got = adapter._encode_batch(clips, languages)
    for (prompt, inputs), (want_prompt, want_inputs) in zip(got, expected, strict=True):
        assert prompt == want_prompt
        assert features_module.difference(inputs, want_inputs) is None
    # (en, 24000), (en, 40017) and (zh, 24000): three distinct prompts, one processor call each.
    assert sorted(calls) == ["en", "en", "zh"]
    calls.clear()
    again = adapter._encode_batch([noise(24_000, 20), noise(40_017, 21)], ["en", "en"])
    assert calls == [] and [p for p, _ in again] == [expected[0][0], expected[2][0]]


def test_greedy_decoding_is_the_same_with_batched_features(adapter):
    clips = [noise(n, seed) for seed, n in enumerate([9_000, 52_000, 30_001])]
    languages = ["en", "zh", "en"]
    fast = adapter.generate(clips, languages, max_new_tokens=6)
    adapter.batched_features = False
    slow = adapter.generate([c.copy() for c in clips], languages, max_new_tokens=6)
    assert fast == slow and all(fast)


def test_the_cpu_default_is_the_processor(tiny):
    loaded = load_adapter(str(tiny / "student_init"))
    assert loaded.batched_features is None and loaded._batched_features() is None


def test_a_recipe_that_disagrees_with_the_processor_is_not_used(adapter, monkeypatch, caplog):
    recipe = recipe_for(adapter.processor)
    wrong = LogMelRecipe(**{**recipe.__dict__, "hop": recipe.hop * 2})
    monkeypatch.setattr(features_module, "recipe_for", lambda processor: wrong)
    with caplog.at_level(logging.WARNING, logger=features_module.__name__):
        checked = verified_recipe(adapter.processor,
                                  lambda probe: adapter._encode_clip(probe, None)[1])
    assert checked is None
    assert "batched features disabled" in caplog.text and "input_features" in caplog.text


def test_a_disagreement_found_later_falls_back_to_the_processor(adapter, monkeypatch, caplog):
    """A clip whose prompt is new is checked against the processor; a difference the probes did
    not catch switches the adapter to per-clip processor calls, with the processor's result."""
    recipe = adapter._batched_features()
    real_batch = features_module.log_mel_batch

    def off_by_a_little(recipe_, clips, device):
        out = real_batch(recipe_, clips, device)
        return [({**inputs, FEATURES: inputs[FEATURES] + 0.01}, frames)
                for inputs, frames in out]

    monkeypatch.setattr("stages.models.base.log_mel_batch", off_by_a_little)
    clip = noise(33_333, 4)
    with caplog.at_level(logging.WARNING):
        (prompt, inputs), = adapter._encode_batch([clip], ["en"])
    assert recipe is not None and adapter._feature_recipe is None
    assert "differs by up to 0.01" in caplog.text
    want_prompt, want_inputs = adapter._encode_clip(clip, "en")
    assert prompt == want_prompt and features_module.difference(inputs, want_inputs) is None


def test_unknown_processors_and_dither_have_no_recipe(adapter, monkeypatch):
    class Other:
        feature_extractor = adapter.processor.feature_extractor

    assert recipe_for(Other()) is None
    monkeypatch.setattr(adapter.processor.feature_extractor, "dither", 0.5)
    assert recipe_for(adapter.processor) is None


def test_a_glm_clip_past_the_window_limit_keeps_the_processor(tiny):
    student = load_adapter(str(tiny / "student_init"))
    recipe = recipe_for(student.processor)
    limited = LogMelRecipe(**{**recipe.__dict__, "max_windows": 2})
    assert limited.pieces(noise(recipe.window_samples * 2, 0)) is not None
    assert limited.pieces(noise(recipe.window_samples * 2 + 1, 0)) is None
    assert log_mel_batch(limited, [noise(10, 0), noise(recipe.window_samples * 3, 1)],
                         torch.device("cpu")) is None


def test_wav_reading_keeps_mono_samples_and_averages_stereo(tmp_path):
    import soundfile as sf

    from stages.data.audio import load_audio

    mono = np.round(noise(4_000, 1) * 32767) / 32767
    sf.write(tmp_path / "mono.wav", mono, 16_000, subtype="PCM_16")
    got = load_audio(tmp_path / "mono.wav")
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == (4_000,)
    np.testing.assert_allclose(got, mono, atol=1e-4)
    stereo = np.stack([mono, -mono / 2], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 16_000, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav"), mono / 4, atol=1e-4)
