"""The synth_demo stage: contract-conformant manifests, determinism, presets that really degrade."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stages.common.cli import run_stage
from stages.common.errors import UserError
from stages.demo import degrade
from stages.demo.corpus import (
    EVAL_PRESETS,
    RECIPES,
    CorpusSettings,
    allocate,
    plan_split,
    render_clip,
    train_language_weights,
)
from stages.demo.espeak import Espeak
from stages.demo.sentences import partition_of
from stages.synth_demo import build_parser, main

SIZES = ["train=12", "td_pool=6", "aishell=3", "meeting=3", "net=3", "clean=3", "other=3"]
MANIFEST_FIELDS = {"audio", "text", "task", "begin_time", "end_time", "language", "id"}
SR = 16_000


def _run(argv: list[str]) -> int:
    return run_stage(main, build_parser(), argv)


def _build(folder: Path, seed: int, workers: int) -> Path:
    status = _run(["--output-dir", str(folder), "--seed", str(seed), "--sizes", *SIZES,
                   "--workers", str(workers), "--no-progress"])
    assert status == 0
    return folder


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth_demo")
    return {"serial": _build(root / "serial", 1234, 1),
            "parallel": _build(root / "parallel", 1234, 2),
            "other_seed": _build(root / "other_seed", 99, 1)}


@pytest.fixture(scope="module")
def espeak() -> Espeak:
    return Espeak()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for sub in ("wavs", "manifests", "details")
            for path in sorted((folder / sub).rglob("*")) if path.is_file()}


def _band_energy(signal: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(signal.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(signal.size, 1.0 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum())


def test_same_seed_is_byte_identical_whatever_the_workers(corpora):
    serial, parallel = _files(corpora["serial"]), _files(corpora["parallel"])
    assert len(serial) == 33 + 2 * len(SIZES)  # wavs + manifests + details
    assert serial == parallel


def test_a_different_seed_gives_a_different_corpus(corpora):
    serial, other = _files(corpora["serial"]), _files(corpora["other_seed"])
    differing = [name for name in serial if serial[name] != other.get(name)]
    assert len(differing) == len(serial)


def test_manifests_follow_the_contract(corpora):
    folder = corpora["serial"]
    ids = set()
    for split, size in (item.split("=") for item in SIZES):
        rows = [json.loads(line) for line in
                (folder / "manifests" / f"{split}.jsonl").read_text("utf-8").splitlines()]
        assert len(rows) == int(size)
        for row in rows:
            assert set(row) == MANIFEST_FIELDS
            assert row["task"] == "asr" and row["begin_time"] == -1 and row["end_time"] == -1
            assert row["audio"] == f"../wavs/{split}/{row['id']}.wav"
            assert row["text"].strip()
            audio = (folder / "manifests" / row["audio"]).resolve()
            info = sf.info(str(audio))
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
            assert 0.5 < info.duration < 8.0
            ids.add(row["id"])
        if split in ("aishell", "meeting", "net"):
            assert {row["language"] for row in rows} == {"zh"}
        if split in ("clean", "other"):
            assert {row["language"] for row in rows} == {"en"}
    assert len(ids) == 33


def test_corpus_json_counts_hours_and_provenance(corpora):
    corpus = json.loads((corpora["serial"] / "corpus.json").read_text("utf-8"))
    assert corpus["seed"] == 1234 and corpus["sample_rate"] == SR
    assert corpus["espeak_sample_rate"] == 22050
    assert {"config_hash", "git_commit", "versions"} <= set(corpus["provenance"])
    total = 0.0
    for split, size in (item.split("=") for item in SIZES):
        block = corpus["splits"][split]
        assert block["clips"] == int(size)
        assert sum(lang["clips"] for lang in block["languages"].values()) == int(size)
        manifest = corpora["serial"] / block["manifest"]
        seconds = sum(sf.info(str((manifest.parent / json.loads(line)["audio"]).resolve())
                              ).duration for line in manifest.read_text("utf-8").splitlines())
        assert block["seconds"] == pytest.approx(seconds, abs=0.05)
        assert block["hours"] == pytest.approx(seconds / 3600, abs=1e-4)
        total += seconds
    assert corpus["total"]["clips"] == 33
    assert corpus["total"]["hours"] == pytest.approx(total / 3600, abs=1e-4)


def test_rerun_with_smaller_sizes_removes_stale_wavs(tmp_path):
    folder = _build(tmp_path / "corpus", 5, 1)
    status = _run(["--output-dir", str(folder), "--sizes", "train=2", "td_pool=0", "aishell=0",
                   "meeting=0", "net=0", "clean=0", "other=1", "--no-progress"])
    assert status == 0
    assert len(list((folder / "wavs" / "train").glob("*.wav"))) == 2
    assert not (folder / "manifests" / "aishell.jsonl").exists()
    assert not (folder / "wavs" / "aishell").exists()
    assert not (folder / "details" / "meeting.jsonl").exists()
    corpus = json.loads((folder / "corpus.json").read_text("utf-8"))
    assert set(corpus["splits"]) == {"train", "other"}


def test_training_mix_and_disjoint_eval_sentences():
    train = plan_split("train", 600, 1234)
    counts = {lang: sum(p.language == lang for p in train) for lang in ("zh", "en", "de", "ko")}
    assert counts == {"zh": 240, "en": 240, "de": 30, "ko": 30}
    augmented = sum(p.noise != "" or p.rt60 > 0 or p.speed != 1.0 for p in train)
    assert 0.4 < augmented / 600 < 0.6
    assert max(p.snr_db for p in train if p.noise) <= 30 and min(
        p.snr_db for p in train if p.noise) >= 15
    td_pool = plan_split("td_pool", 300, 1234)
    seen = {p.text for p in train + td_pool}
    assert not {p.text for p in train} & {p.text for p in td_pool}
    for preset in EVAL_PRESETS:
        assert not {p.text for p in plan_split(preset, 40, 1234)} & seen
    assert train_language_weights(["zh", "en"]) == {"zh": 0.5, "en": 0.5}
    assert allocate(7, train_language_weights(["zh", "en", "ja"])) == {"zh": 3, "en": 3, "ja": 1}
    only = plan_split("train", 20, 1, train_languages=["ja", "ko"])
    assert {p.language for p in only} == {"ja", "ko"}


@pytest.mark.parametrize("preset", ["meeting", "other"])
def test_noisy_presets_reach_their_snr(espeak, preset):
    for plan in plan_split(preset, 4, 1234):
        assert plan.noise and plan.snr_db > 0
        noisy = render_clip(plan, espeak)
        clean = render_clip(dataclasses.replace(plan, noise=""), espeak)
        assert degrade.measure_snr(clean, noisy) == pytest.approx(plan.snr_db, abs=1.5)


def test_meeting_reverberation_lengthens_the_decay(espeak):
    def decay_end(signal: np.ndarray) -> float:
        frames = signal[: signal.size // 160 * 160].reshape(-1, 160).astype(np.float64)
        energy = np.mean(frames**2, axis=1)
        return (np.nonzero(energy > energy.max() * 1e-4)[0][-1] + 1) * 0.01

    for plan in plan_split("meeting", 3, 1234):
        dry = render_clip(dataclasses.replace(plan, noise="", rt60=0.0), espeak)
        wet = render_clip(dataclasses.replace(plan, noise=""), espeak)
        assert wet.size - dry.size == pytest.approx(plan.rt60 * SR, abs=0.01 * SR)
        assert decay_end(wet) > decay_end(dry) + 0.1


def test_net_preset_is_telephone_band_and_speed_changed(espeak):
    wideband = render_clip(plan_split("aishell", 1, 1234)[0], espeak)
    assert _band_energy(wideband, 4000, 8000) > 1e-3 * _band_energy(wideband, 0, 8000)
    for plan in plan_split("net", 3, 1234):
        assert plan.codec and 20 <= plan.pitch <= 80
        audio = render_clip(plan, espeak)
        assert _band_energy(audio, 4000, 8000) < 1e-6 * _band_energy(audio, 0, 8000)
        plain = render_clip(dataclasses.replace(plan, codec=False, speed=1.0), espeak)
        assert audio.size / plain.size == pytest.approx(1 / plan.speed, rel=0.01)


def test_outputs_are_peak_normalized(espeak):
    for plan in plan_split("train", 10, 3):
        audio = render_clip(plan, espeak)
        peak = float(np.max(np.abs(audio)))
        assert peak == pytest.approx(0.9 * 10 ** (plan.gain_db / 20), rel=1e-4)


@pytest.mark.parametrize("sizes, message", [
    (["train600"], "is not NAME=COUNT"),
    (["test=5"], "unknown split 'test'"),
    (["train=many"], "not a whole number"),
    (["train=-1"], "must be 0 or more"),
    (["train=1", "train=2"], "given twice"),
])
def test_bad_sizes_give_a_clear_error(tmp_path, capsys, sizes, message):
    status = _run(["--output-dir", str(tmp_path), "--sizes", *sizes, "--no-progress"])
    assert status == 1
    err = capsys.readouterr().err
    assert "error: --sizes" in err and message in err
    assert not (tmp_path / "manifests").exists()


def test_help_documents_outputs_and_example():
    text = build_parser().format_help()
    for needle in ("manifests/<split>.jsonl", "corpus.json", "--sizes", "Example"):
        assert needle in text


def test_large_grammar_corpus_records_it_and_refuses_other_languages(tmp_path, capsys):
    plans = plan_split("train", 200, 7, train_languages=["zh", "en"], grammar="large")
    words = [len(p.text.split()) for p in plans if p.language == "en"]
    assert max(words) > 5  # beyond the small grammar's five words
    assert not {p.text for p in plans} & {
        p.text for p in plan_split("clean", 100, 7, grammar="large")}
    status = _run(["--output-dir", str(tmp_path / "ok"), "--grammar", "large", "--sizes",
                   "train=4", "td_pool=0", "aishell=0", "meeting=0", "net=0", "clean=2",
                   "other=0", "--train-languages", "zh", "en", "--no-progress"])
    assert status == 0
    corpus = json.loads((tmp_path / "ok" / "corpus.json").read_text("utf-8"))
    assert corpus["grammar"] == "large" and corpus["total"]["clips"] == 6
    status = _run(["--output-dir", str(tmp_path / "bad"), "--grammar", "large",
                   "--sizes", "train=4", "--no-progress"])
    assert status == 1
    assert "the large grammar has only ['en', 'zh']" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "manifests").exists()


def test_development_splits_render_a_presets_conditions_over_td_pool_sentences(espeak):
    for preset in EVAL_PRESETS:
        assert RECIPES[f"dev_{preset}"] == dataclasses.replace(RECIPES[preset],
                                                               partition="td_pool")
    dev = plan_split("dev_net", 30, 1234)
    assert {p.language for p in dev} == {"zh"} and all(p.codec for p in dev)
    assert {partition_of(p.text, "zh") for p in dev} == {"td_pool"}
    assert not {p.text for p in dev} & {p.text for p in plan_split("net", 40, 1234)}
    audio = render_clip(dev[0], espeak)
    assert _band_energy(audio, 4000, 8000) < 1e-6 * _band_energy(audio, 0, 8000)
    clean = plan_split("dev_clean", 10, 1234, grammar="large")
    assert {partition_of(p.text, "en") for p in clean} == {"td_pool"}


def test_telephone_share_codes_that_share_of_the_training_mix_only(espeak):
    plain = plan_split("train", 400, 1234)
    assert plan_split("train", 400, 1234, telephone_share=0.0) == plain  # no extra draw at 0
    assert not any(p.codec for p in plain)
    coded = plan_split("train", 400, 1234, telephone_share=0.25)
    assert 0.18 < sum(p.codec for p in coded) / 400 < 0.32
    assert all(p.codec for p in plan_split("td_pool", 20, 1234, telephone_share=1.0))
    assert not any(p.codec for p in plan_split("aishell", 20, 1234, telephone_share=1.0))
    audio = render_clip(next(p for p in coded if p.codec), espeak)
    assert _band_energy(audio, 4000, 8000) < 1e-6 * _band_energy(audio, 0, 8000)


def test_telephone_share_is_recorded_and_checked(tmp_path, capsys):
    status = _run(["--output-dir", str(tmp_path / "ok"), "--telephone-share", "0.5", "--sizes",
                   "train=4", "td_pool=0", "aishell=0", "meeting=0", "net=0", "clean=0",
                   "other=0", "dev_net=2", "--no-progress"])
    assert status == 0
    corpus = json.loads((tmp_path / "ok" / "corpus.json").read_text("utf-8"))
    assert corpus["telephone_share"] == 0.5 and corpus["sizes"] == {"train": 4, "dev_net": 2}
    details = [json.loads(line) for line in
               (tmp_path / "ok" / "details" / "dev_net.jsonl").read_text("utf-8").splitlines()]
    assert all(row["codec"] for row in details)
    with pytest.raises(UserError, match="--telephone-share must be between 0 and 1, got 1.5"):
        CorpusSettings(telephone_share=1.5)
