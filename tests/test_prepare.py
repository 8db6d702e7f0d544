"""stages.prepare: each corpus layout, built in miniature from espeak speech, becomes a manifest
that validation accepts with the expected rows, texts, languages and segment times; bad corpora
fail naming file and line (or are counted with --on-error quarantine)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stages import prepare, validate
from stages.common.jsonl import read_jsonl
from stages.data.corpora import FORMATS, Format
from stages.demo.espeak import Espeak
from tests import corpus_miniatures as mini
from tests.helpers import ROOT, stage


@pytest.fixture(scope="module")
def clips() -> dict[str, list[np.ndarray]]:
    return mini.speech(Espeak())


@pytest.fixture(scope="module")
def clips48() -> dict[str, list[np.ndarray]]:
    return mini.speech(Espeak(), rate=mini.OPUS_RATE)


def run_prepare(tmp: Path, *args, name: str = "prepared") -> tuple[int, Path]:
    output = tmp / f"{name}.jsonl"
    status = stage(prepare, ["--output", output, "--no-progress", *args])
    return status, output


def report_of(output: Path) -> dict:
    return json.loads(output.with_name(f"{output.stem}.report.json").read_text())


def validated(tmp: Path, manifest: Path) -> list[dict]:
    """The manifest through `python -m stages.validate` (strict): every row must pass."""
    output = tmp / f"{manifest.stem}.valid.jsonl"
    status = stage(validate, ["--input", manifest, "--output", output, "--report",
                              tmp / f"{manifest.stem}.valid.report.json", "--workers", 1,
                              "--no-progress"])
    assert status == 0
    return read_jsonl(output)


def assert_rows(rows: list[dict], expected: list[mini.Expected]) -> None:
    assert [r["id"] for r in rows] == [e.id for e in expected]
    for row, want in zip(rows, expected, strict=True):
        assert row["text"] == want.text
        assert row["language"] == want.language
        assert row["task"] == "asr"
        assert Path(row["audio"]).is_absolute()
        if want.begin is None:
            assert "begin_time" not in row and "end_time" not in row
        else:
            assert (row["begin_time"], row["end_time"]) == (want.begin, want.end)
        assert row["duration"] == pytest.approx(want.seconds, abs=1e-3)


def test_formats_and_the_option_type_agree():
    assert set(FORMATS) == set(Format.__args__)
    for module in FORMATS.values():
        assert module.LAYOUT.startswith(module.__name__.rsplit(".", 1)[1])


# ---- LibriSpeech -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def libri(tmp_path_factory, clips) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("corpora") / "LibriSpeech"
    return root, mini.librispeech(root, clips)


@pytest.mark.parametrize("subset", ["test-clean", "test-other"])
def test_librispeech_prepares_and_validates(tmp_path, libri, subset):
    root, expected = libri
    status, output = run_prepare(tmp_path, "--format", "librispeech", "--source", root,
                                 "--subset", subset)
    assert status == 0
    rows = validated(tmp_path, output)
    assert_rows(rows, expected[subset])
    assert all(r["audio"].endswith(".flac") and r["sample_rate"] == 16000 for r in rows)
    report = report_of(output)
    seconds = sum(e.seconds for e in expected[subset])
    assert report["utterances"] == report["entries"] == len(expected[subset])
    assert report["hours"] == pytest.approx(seconds / 3600, abs=1e-6)
    assert report["invalid"] == 0 and report["skipped"] == {}
    assert report["languages"]["en"]["utterances"] == len(expected[subset])
    assert "No problem was found." in output.with_name(f"{output.stem}.report.md").read_text()


def _copy_libri(root: Path, tmp: Path) -> Path:
    import shutil

    return Path(shutil.copytree(root, tmp / "LibriSpeech"))


def test_librispeech_transcript_without_audio_fails_naming_file_and_line(tmp_path, libri,
                                                                         capsys):
    root = _copy_libri(libri[0], tmp_path)
    trans = root / "test-clean/1089/134686/1089-134686.trans.txt"
    (root / "test-clean/1089/134686/1089-134686-0001.flac").unlink()
    status, output = run_prepare(tmp_path, "--format", "librispeech", "--source", root,
                                 "--subset", "test-clean")
    assert status == 1 and not output.exists()
    err = capsys.readouterr().err
    assert f"{trans}:2: audio_not_found: utterance 1089-134686-0001: " in err
    assert "no manifest written" in err
    report = report_of(output)
    assert report["problem_counts"] == {"audio_not_found": 1}
    assert report["problems"][0]["file"] == str(trans) and report["problems"][0]["line"] == 2
    assert not report["output_written"]

    status, output = run_prepare(tmp_path, "--format", "librispeech", "--source", root,
                                 "--subset", "test-clean", "--on-error", "quarantine")
    assert status == 0
    assert [r["id"] for r in read_jsonl(output)] == ["1089-134686-0000", "121-121726-0000"]
    report = report_of(output)
    assert (report["utterances"], report["invalid"], report["entries"]) == (2, 1, 3)


def test_librispeech_duplicate_id_and_audio_without_transcript(tmp_path, libri, capsys):
    root = _copy_libri(libri[0], tmp_path)
    trans = root / "test-clean/121/121726/121-121726.trans.txt"
    first = root / "test-clean/1089/134686/1089-134686.trans.txt"
    trans.write_text(trans.read_text() + first.read_text().splitlines()[0] + "\n")
    (trans.parent / "121-121726-0000.flac").rename(trans.parent / "121-121726-0009.flac")
    status, output = run_prepare(tmp_path, "--format", "librispeech", "--source", root,
                                 "--subset", "test-clean")
    assert status == 1
    report = report_of(output)
    assert report["problem_counts"] == {"audio_not_found": 1, "duplicate_id": 1}
    duplicate = next(p for p in report["problems"] if p["reason"] == "duplicate_id")
    assert (duplicate["file"], duplicate["line"]) == (str(trans), 2)
    assert f"first used at {first}:1" in duplicate["detail"]
    assert report["skipped"]["no_transcript"]["count"] == 1
    assert report["skipped"]["no_transcript"]["examples"] == [
        str(trans.parent / "121-121726-0009.flac")]
    assert "duplicate_id" in capsys.readouterr().err


def test_unknown_subset_is_an_error_that_lists_the_found_ones(tmp_path, libri, capsys):
    status, _ = run_prepare(tmp_path, "--format", "librispeech", "--source", libri[0],
                            "--subset", "test-cleen")
    assert status == 1
    assert "unknown LibriSpeech subset 'test-cleen'; found: test-clean, test-other" in (
        capsys.readouterr().err)
    status, _ = run_prepare(tmp_path, "--format", "librispeech", "--source", libri[0])
    assert status == 1
    assert "give --subset" in capsys.readouterr().err


def test_an_option_the_format_does_not_read_is_refused(tmp_path, libri, capsys):
    status, _ = run_prepare(tmp_path, "--format", "librispeech", "--source", libri[0],
                            "--subset", "test-clean", "--text-column", "sentence")
    assert status == 1
    assert "--text-column is not used by --format librispeech (only by hf)" in (
        capsys.readouterr().err)
    status, _ = run_prepare(tmp_path, "--format", "librispeech", "--source", libri[0],
                            "--subset", "test-clean", "--language", "english")
    assert status == 1
    assert "--language: language \"english\" is not an accepted code (did you mean \"en\"?)" in (
        capsys.readouterr().err)


# ---- AISHELL-1 -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def aishell(tmp_path_factory, clips) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("corpora") / "data_aishell"
    return root, mini.aishell(root, clips)


@pytest.mark.parametrize("split", ["test", "dev"])
def test_aishell_prepares_and_validates(tmp_path, aishell, split):
    root, expected = aishell
    status, output = run_prepare(tmp_path, "--format", "aishell", "--source", root.parent,
                                 "--subset", split)  # the folder above data_aishell works too
    assert status == 0
    rows = validated(tmp_path, output)
    assert_rows(rows, expected[split])
    assert " " in rows[0]["text"]  # kept as given: CER ignores the spaces
    report = report_of(output)
    assert report["source_notes"]["transcript_lines_of_other_splits"] == 4 - len(
        expected[split])
    skipped = report["skipped"].get("no_transcript", {"count": 0})
    assert skipped["count"] == (1 if split == "test" else 0)


def test_aishell_transcript_line_of_a_split_speaker_without_wav(tmp_path, aishell):
    import shutil

    root = Path(shutil.copytree(aishell[0], tmp_path / "data_aishell"))
    (root / "wav/test/S0764/BAC009S0764W0122.wav").unlink()
    status, output = run_prepare(tmp_path, "--format", "aishell", "--source", root,
                                 "--subset", "test")
    assert status == 1
    problem = report_of(output)["problems"][0]
    transcript = root / "transcript/aishell_transcript_v0.8.txt"
    assert (problem["file"], problem["line"], problem["reason"]) == (
        str(transcript), 4, "audio_not_found")
    assert "BAC009S0764W0122.wav does not exist" in problem["detail"]


def test_aishell_packed_speakers_say_to_unpack(tmp_path, capsys):
    root = tmp_path / "data_aishell"
    (root / "wav").mkdir(parents=True)
    (root / "wav/S0764.tar.gz").write_bytes(b"")
    (root / "transcript").mkdir()
    (root / "transcript/aishell_transcript_v0.8.txt").write_text("BAC009S0764W0121 你好\n")
    status, _ = run_prepare(tmp_path, "--format", "aishell", "--source", root,
                            "--subset", "test")
    assert status == 1
    assert "unpack them first" in capsys.readouterr().err


# ---- WenetSpeech -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wenet(tmp_path_factory, clips48) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("corpora") / "WenetSpeech"
    return root, mini.wenetspeech(root, clips48)


@pytest.mark.parametrize("subset, key", [("TEST_MEETING", "TEST_MEETING"),
                                         ("test_net", "TEST_NET")])
def test_wenetspeech_segments_prepare_and_validate(tmp_path, wenet, clips48, subset, key):
    root, expected = wenet
    status, output = run_prepare(tmp_path, "--format", "wenetspeech", "--source", root,
                                 "--subset", subset)
    assert status == 0
    rows = validated(tmp_path, output)
    assert_rows(rows, expected[key])
    assert all(r["audio"].endswith(".opus") and r["sample_rate"] == 48000 for r in rows)
    # The segment times point at the speech: the cut holds the clip's energy, the gap none.
    for row in rows:
        audio, rate = sf.read(row["audio"], dtype="float32")
        inside = audio[round(row["begin_time"] * rate):round(row["end_time"] * rate)]
        before = audio[:round(0.5 * rate)]
        clip = clips48["zh"][mini.SENTENCES["zh"].index(row["text"])]
        rms = np.sqrt(np.mean(inside**2))
        assert rms == pytest.approx(np.sqrt(np.mean(clip**2)), rel=0.15)
        assert np.sqrt(np.mean(before**2)) < 0.05 * rms
    assert report_of(output)["hours"] == pytest.approx(
        sum(e.seconds for e in expected[key]) / 3600, abs=1e-6)


def test_wenetspeech_unknown_subset(tmp_path, wenet, capsys):
    status, _ = run_prepare(tmp_path, "--format", "wenetspeech", "--source",
                            wenet[0] / "WenetSpeech.json", "--subset", "XL")
    assert status == 1
    assert "unknown WenetSpeech subset 'XL'; found: L, TEST_MEETING, TEST_NET" in (
        capsys.readouterr().err)


def test_wenetspeech_missing_recording_and_bad_segment(tmp_path, wenet):
    index = json.loads((wenet[0] / "WenetSpeech.json").read_text())
    index["audios"][0]["path"] = "audio/missing.opus"
    index["audios"][1]["segments"][0]["end_time"] = index["audios"][1]["segments"][0][
        "begin_time"]
    root = tmp_path / "wenet"
    root.mkdir()
    (root / "WenetSpeech.json").write_text(json.dumps(index))
    os.symlink(wenet[0] / "audio", root / "audio")
    status, output = run_prepare(tmp_path, "--format", "wenetspeech", "--source", root,
                                 "--subset", "TEST_MEETING")
    assert status == 1
    problems = report_of(output)["problems"]
    assert [(p["item"], p["reason"]) for p in problems] == [
        ("audios[0].segments[0]", "audio_not_found"), ("audios[0].segments[1]",
                                                       "audio_not_found")]
    assert "missing.opus does not exist (named by aid M0001)" in problems[0]["detail"]
    status, output = run_prepare(tmp_path, "--format", "wenetspeech", "--source", root,
                                 "--subset", "TEST_NET")
    assert status == 1
    problem = report_of(output)["problems"][0]
    assert (problem["item"], problem["reason"]) == ("audios[1].segments[0]", "bad_segment")


# ---- Kaldi -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kaldi_dir(tmp_path_factory, clips) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("corpora")
    return root / "data" / "test", mini.kaldi(root / "data" / "test", root / "audio", clips)


def test_kaldi_folder_with_segments_and_pipes(tmp_path, kaldi_dir):
    folder, expected = kaldi_dir
    status, output = run_prepare(tmp_path, "--format", "kaldi", "--source", folder)
    assert status == 0
    rows = validated(tmp_path, output)
    assert_rows(rows, expected)
    audio = folder.parent.parent / "audio"
    assert [Path(r["audio"]).name for r in rows] == [
        "rec1.wav", "rec1.wav", "rec2.flac", "rec2.flac", "rec3.flac", "rec3.flac",
        "rec4.wav", "rec4.wav"]
    assert all(Path(r["audio"]).parent == audio for r in rows)
    assert report_of(output)["source_notes"] == {"recordings": 4, "segments": 8,
                                                 "utt2lang": True}


def _kaldi_copy(folder: Path, tmp: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp / "kaldi"))


def test_kaldi_refused_pipes_and_broken_references_name_their_lines(tmp_path, kaldi_dir,
                                                                    capsys):
    folder = _kaldi_copy(kaldi_dir[0], tmp_path)
    scp = (folder / "wav.scp").read_text().splitlines()
    rec3 = scp[2].split()[2]
    scp[2] = f"rec3 sph2pipe -f wav {rec3} |"
    scp[3] = f"rec4 sox {rec3} -t wav - trim 0 1 |"
    (folder / "wav.scp").write_text("\n".join(scp) + "\n")
    segments = (folder / "segments").read_text().splitlines()
    segments[1] = segments[1].replace(" rec1 ", " rec9 ")
    (folder / "segments").write_text("\n".join(segments[:-1]) + "\n")  # rec4-1 has no segment
    status, output = run_prepare(tmp_path, "--format", "kaldi", "--source", folder)
    assert status == 1
    report = report_of(output)
    where = [(Path(p["file"]).name, p["line"], p["reason"]) for p in report["problems"]]
    assert where == [
        ("segments", 2, "unknown_recording"),
        ("wav.scp", 3, "unsupported_command"), ("wav.scp", 3, "unsupported_command"),
        ("wav.scp", 4, "unsupported_command"), ("text", 8, "audio_not_found")]
    details = [p["detail"] for p in report["problems"]]
    assert "'sph2pipe' is not one of the recognized decoders" in details[1]
    assert "sox effects (trim 0 1) change the audio" in details[3]
    assert report["utterances"] == 3
    err = capsys.readouterr().err
    assert f"{folder / 'wav.scp'}:3: unsupported_command: utterance rec3-0" in err


def test_kaldi_languages_come_from_utt2lang_or_the_option(tmp_path, kaldi_dir, capsys):
    folder = _kaldi_copy(kaldi_dir[0], tmp_path)
    lines = (folder / "utt2lang").read_text().splitlines()
    lines[0] = lines[0].replace(" zh", " Mandarin")
    (folder / "utt2lang").write_text("\n".join(lines[:-1]) + "\n")  # rec4-1 has none
    status, output = run_prepare(tmp_path, "--format", "kaldi", "--source", folder)
    assert status == 1
    problems = report_of(output)["problems"]
    assert [(Path(p["file"]).name, p["line"], p["reason"]) for p in problems] == [
        ("utt2lang", 1, "bad_language"), ("text", 8, "no_language")]
    assert 'did you mean "zh"?' in problems[0]["detail"]
    (folder / "utt2lang").unlink()
    status, output = run_prepare(tmp_path, "--format", "kaldi", "--source", folder)
    assert status == 1
    assert "no utt2lang file; give the language" in capsys.readouterr().err
    status, output = run_prepare(tmp_path, "--format", "kaldi", "--source", folder,
                                 "--language", "de")
    assert status == 0
    assert {r["language"] for r in read_jsonl(output)} == {"de"}


def test_kaldi_without_segments_reads_whole_recordings(tmp_path, kaldi_dir):
    folder = _kaldi_copy(kaldi_dir[0], tmp_path)
    (folder / "segments").unlink()
    (folder / "text").write_text("rec1 你好 世界\nrec2 hello there\n")
    (folder / "utt2lang").write_text("rec1 zh\nrec2 en\n")
    status, output = run_prepare(tmp_path, "--format", "kaldi", "--source", folder)
    assert status == 0
    rows = validated(tmp_path, output)
    assert [(r["id"], r["language"], "begin_time" in r) for r in rows] == [
        ("rec1", "zh", False), ("rec2", "en", False)]
    assert rows[0]["duration"] == pytest.approx(sf.info(rows[0]["audio"]).duration, abs=1e-3)
    skipped = report_of(output)["skipped"]["no_transcript"]
    assert skipped["count"] == 2 and skipped["examples"][0].endswith("rec3.flac")


# ---- Hugging Face datasets -------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_data(tmp_path_factory, clips) -> tuple[Path, list]:
    """The same rows as a save_to_disk DatasetDict (splits test, train) and as Parquet."""
    from datasets import Audio, Dataset, DatasetDict

    root = tmp_path_factory.mktemp("hf")
    columns, expected = mini.hf_rows(root / "files", clips)
    dataset = Dataset.from_dict(columns).cast_column("audio", Audio())
    DatasetDict({"test": dataset, "train": dataset.select([0])}).save_to_disk(root / "saved")
    (root / "parquet" / "data").mkdir(parents=True)
    dataset.to_parquet(root / "parquet" / "data" / "test-00000-of-00001.parquet")
    return root, expected


@pytest.mark.parametrize("layout", ["saved", "parquet_file", "parquet_folder"])
def test_hf_dataset_prepares_and_validates(tmp_path, hf_data, clips, layout):
    root, expected = hf_data
    source = {"saved": root / "saved", "parquet_folder": root / "parquet",
              "parquet_file": root / "parquet/data/test-00000-of-00001.parquet"}[layout]
    subset = [] if layout == "parquet_file" else ["--subset", "test"]
    status, output = run_prepare(tmp_path, "--format", "hf", "--source", source, *subset,
                                 "--text-column", "sentence", "--id-column", "utt",
                                 "--language", "en")
    assert status == 0
    rows = validated(tmp_path, output)
    assert_rows(rows, expected)
    # save_to_disk embeds the bytes of the row that pointed at a file (its path becomes a
    # bare name); Parquet keeps the path, and a readable file is used where it lies.
    kept = layout != "saved"
    stored = sorted((tmp_path / "prepared_audio").rglob("*.flac"))
    assert [r["audio"] for r in rows[:4 - kept]] == [str(p) for p in stored]
    assert (rows[3]["audio"] == str(root / "files" / "on_disk.wav")) == kept
    for k, (row, fmt) in enumerate(zip(rows, ["WAV", "FLAC", "WAV", "WAV"], strict=True)):
        samples, rate = sf.read(row["audio"], dtype="int16")
        original, _ = sf.read(io.BytesIO(mini.encoded(clips["en"][k], fmt)), dtype="int16")
        assert rate == 16000
        np.testing.assert_array_equal(samples, original)  # FLAC is lossless
    report = report_of(output)
    assert report["audio_files_written"] == 4 - kept
    assert report["source_notes"]["columns"] == {"audio": "audio", "text": "sentence",
                                                 "id": "utt"}


def test_hf_split_choice_columns_and_row_problems(tmp_path, hf_data, capsys):
    root, _ = hf_data
    status, _ = run_prepare(tmp_path, "--format", "hf", "--source", root / "saved",
                            "--text-column", "sentence", "--language", "en")
    assert status == 1
    assert "give --subset, the split to prepare (found: test, train)" in capsys.readouterr().err
    status, _ = run_prepare(tmp_path, "--format", "hf", "--source", root / "saved", "--subset",
                            "test", "--language", "en")
    assert status == 1
    assert "no column 'text' for the text (columns: utt, audio, sentence); name it with " \
           "--text-column" in capsys.readouterr().err
    status, output = run_prepare(tmp_path, "--format", "hf", "--source", root / "saved",
                                 "--subset", "train", "--text-column", "sentence",
                                 "--language", "en", "--audio-dir", tmp_path / "flac")
    assert status == 0
    assert [r["id"] for r in read_jsonl(output)] == ["train-0000000"]  # no id column named
    assert len(list((tmp_path / "flac").rglob("*.flac"))) == 1


def test_hf_rows_without_audio_or_text_are_problems(tmp_path, clips):
    from datasets import Dataset

    columns = {"audio": [{"bytes": mini.encoded(clips["en"][0], "WAV"), "path": None},
                         {"bytes": None, "path": "gone.wav"},
                         {"bytes": b"not audio at all", "path": None},
                         {"bytes": mini.encoded(clips["en"][1], "WAV"), "path": None}],
               "text": ["one", "two", "three", None]}
    Dataset.from_dict(columns).to_parquet(tmp_path / "rows.parquet")
    status, output = run_prepare(tmp_path, "--format", "hf", "--source",
                                 tmp_path / "rows.parquet", "--language", "en",
                                 "--on-error", "quarantine")
    assert status == 0
    report = report_of(output)
    assert [(p["item"], p["reason"]) for p in report["problems"]] == [
        ("train row 1", "audio_not_found"), ("train row 2", "audio_unreadable"),
        ("train row 3", "empty_text")]
    assert [r["id"] for r in read_jsonl(output)] == ["train-0000000"]


def test_hf_dataset_from_the_local_hub_cache(tmp_path, hf_data):
    """A hub id resolves to the hub cache's snapshot, offline (a subprocess: the cache location
    is read when huggingface_hub is imported)."""
    root, expected = hf_data
    snapshot = tmp_path / "home/hub/datasets--org--mini_asr/snapshots/0123abcd"
    (snapshot / "data").mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs/main").write_text("0123abcd")
    os.link(root / "parquet/data/test-00000-of-00001.parquet",
            snapshot / "data/test-00000-of-00001.parquet")
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "stages.prepare", "--format", "hf", "--source",
               "org/mini_asr", "--subset", "test", "--text-column", "sentence",
               "--language", "en", "--output", tmp_path / "hub.jsonl", "--no-progress"]
    done = subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["text"] for r in read_jsonl(tmp_path / "hub.jsonl")] == [e.text for e in expected]
    command[command.index("org/mini_asr")] = "org/absent"
    done = subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert "not in the local hub cache" in done.stderr
