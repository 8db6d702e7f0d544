"""The validate stage: every reason code, segment math, ids, paths, modes and report numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stages.common.cli import run_stage
from stages.data import validation
from stages.data.audio import SegmentError, segment_frames
from stages.data.manifest import (
    LANGUAGES,
    REASONS,
    LineProblem,
    check_fields,
    check_language,
    derive_id,
    resolve_audio,
)
from stages.validate import build_parser, main
from tests.helpers import small_tmpfs

ROOT = Path(__file__).resolve().parents[1]


def tone(path: Path, seconds: float, rate: int, channels: int = 1, subtype: str = "PCM_16",
         poison: float | None = None, poison_at: int = 0) -> Path:
    """A 220 Hz sine of exactly round(seconds * rate) frames; optionally one poisoned sample."""
    frames = round(seconds * rate)
    wave = 0.3 * np.sin(2 * np.pi * 220 * np.arange(frames) / rate).astype(np.float32)
    data = np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave
    if poison is not None:
        if channels > 1:
            data[poison_at, channels - 1] = poison
        else:
            data[poison_at] = poison
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype=subtype)
    return path


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest folder with a few audio files; the cwd is elsewhere, so relative paths in a
    manifest only work if they are resolved against the manifest's folder."""
    root = tmp_path / "data"
    tone(root / "wav" / "a.wav", 0.5, 16000)
    tone(root / "wav" / "good.wav", 0.3, 16000)
    tone(root / "wav" / "b8k.wav", 0.5, 8000)
    tone(root / "wav" / "st44.wav", 0.5, 44100, channels=2)
    tone(root / "wav" / "nan.wav", 0.5, 8000, subtype="FLOAT", poison=float("nan"),
         poison_at=1000)
    tone(root / "wav" / "inf_stereo.wav", 0.5, 8000, channels=2, subtype="FLOAT",
         poison=float("inf"), poison_at=3999)
    sf.write(str(root / "wav" / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    (root / "wav" / "zero_bytes.wav").write_bytes(b"")
    (root / "wav" / "text.wav").write_text("this is not audio\n" * 20)
    tone(root / "wav" / "full.flac", 3.0, 16000)
    full = (root / "wav" / "full.flac").read_bytes()
    (root / "wav" / "cut.flac").write_bytes(full[: len(full) // 2])
    (root / "wav" / "folder.wav").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def write_manifest(path: Path, lines: list[dict | str | bytes]) -> Path:
    """Dicts become JSON; str/bytes are written as given (each followed by a newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            handle.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def validate(manifest: Path, *extra: str, workers: int = 1) -> tuple[int, dict, Path]:
    """Run the stage through its CLI entry; returns (exit status, report, output path)."""
    out_dir = manifest.parent.parent / "out"
    output, report = out_dir / "valid.jsonl", out_dir / "report.json"
    argv = ["--input", str(manifest), "--output", str(output), "--report", str(report),
            "--workers", str(workers), "--no-progress", *extra]
    status = run_stage(main, build_parser(), argv)
    return status, json.loads(report.read_text()), output


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


GOOD = {"audio": "wav/good.wav", "text": "hello"}  # 0.3 s, 16 kHz

# (reason, bad line, extra CLI options); each line is checked after one good line (line 2).
REASON_CASES = [
    ("invalid_json", '{"audio": "wav/a.wav", "text": ', ()),
    ("invalid_json", '{"audio": "wav/a.wav", "text": "x", "begin_time": NaN}', ()),
    ("invalid_json", b'{"audio": "wav/a.wav", "text": "\xff\xfe"}', ()),
    ("not_an_object", '["wav/a.wav", "hello"]', ()),
    ("not_an_object", "null", ()),
    ("missing_field", {"text": "hello"}, ()),
    ("missing_field", {"audio": "wav/a.wav"}, ()),
    ("bad_type", {"audio": 3, "text": "hello"}, ()),
    ("bad_type", {"audio": "wav/a.wav", "text": 5}, ()),
    ("bad_type", {"audio": "wav/a.wav", "text": None}, ()),
    ("bad_type", {"audio": "wav/a.wav", "text": "x", "id": 7}, ()),
    ("bad_type", {"audio": "wav/a.wav", "text": "x", "language": ["en"]}, ()),
    ("bad_type", {"audio": "wav/a.wav", "text": "x", "begin_time": "0.1"}, ()),
    ("bad_type", {"audio": "wav/a.wav", "text": "x", "end_time": True}, ()),
    ("bad_task", {"audio": "wav/a.wav", "text": "x", "task": "translate"}, ()),
    ("audio_not_found", {"audio": "wav/missing.wav", "text": "x"}, ()),
    ("audio_not_found", {"audio": "wav/folder.wav", "text": "x"}, ()),
    ("audio_unreadable", {"audio": "wav/text.wav", "text": "x"}, ()),
    ("audio_unreadable", {"audio": "wav/cut.flac", "text": "x"}, ()),
    ("audio_empty", {"audio": "wav/empty.wav", "text": "x"}, ()),
    ("audio_empty", {"audio": "wav/zero_bytes.wav", "text": "x"}, ()),
    # 0.10001 s and 0.10002 s fall on the same 8 kHz frame: a segment of zero frames.
    ("audio_empty", {"audio": "wav/b8k.wav", "text": "x", "begin_time": 0.10001,
                     "end_time": 0.10002}, ()),
    ("audio_not_finite", {"audio": "wav/nan.wav", "text": "x"}, ()),
    ("audio_not_finite", {"audio": "wav/inf_stereo.wav", "text": "x"}, ()),
    ("bad_segment", {"audio": "wav/a.wav", "text": "x", "begin_time": -0.5}, ()),
    ("bad_segment", {"audio": "wav/a.wav", "text": "x", "begin_time": 0.2, "end_time": 0.2},
     ()),
    ("bad_segment", {"audio": "wav/a.wav", "text": "x", "begin_time": 0.3, "end_time": 0.1},
     ()),
    ("bad_segment", '{"audio": "wav/a.wav", "text": "x", "end_time": 1e400}', ()),
    ("bad_segment", {"audio": "wav/a.wav", "text": "x", "begin_time": -1, "end_time": 0}, ()),
    ("segment_out_of_range", {"audio": "wav/a.wav", "text": "x", "end_time": 0.6}, ()),
    ("segment_out_of_range", {"audio": "wav/a.wav", "text": "x", "begin_time": 0.7}, ()),
    ("segment_out_of_range", {"audio": "wav/a.wav", "text": "x", "begin_time": 0.5}, ()),
    ("too_short", {"audio": "wav/a.wav", "text": "x", "end_time": 0.2},
     ("--min-seconds", "0.25")),
    ("too_long", {"audio": "wav/a.wav", "text": "x"}, ("--max-seconds", "0.45")),
    ("empty_text", {"audio": "wav/a.wav", "text": " \t "}, ()),
    ("duplicate_id", {"audio": "wav/good.wav", "text": "again"}, ()),
    ("duplicate_id", {"audio": "wav/b8k.wav", "text": "x", "id": "wav/good"}, ()),
    ("bad_language", {"audio": "wav/a.wav", "text": "x", "language": "EN"}, ()),
    ("bad_language", {"audio": "wav/a.wav", "text": "x", "language": "english"}, ()),
    ("bad_language", {"audio": "wav/a.wav", "text": "x", "language": "en-US"}, ()),
    ("bad_language", {"audio": "wav/a.wav", "text": "x", "language": "xx"}, ()),
]


def test_every_reason_code_has_a_case() -> None:
    assert {case[0] for case in REASON_CASES} == set(REASONS)


@pytest.mark.parametrize(("reason", "line", "extra"), REASON_CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(REASON_CASES)])
def test_reason_code(data: Path, reason: str, line, extra: tuple[str, ...]) -> None:
    manifest = write_manifest(data / "m.jsonl", [GOOD, line])
    status, report, output = validate(manifest, *extra)
    assert status == 1
    assert not output.exists()
    assert report["total"] == 2 and report["valid"] == 1
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [(2, reason)]
    assert report["rejected"][0]["detail"]
    assert report["reason_counts"] == {reason: 1}


def test_details_say_what_to_do(data: Path) -> None:
    manifest = write_manifest(data / "m.jsonl", [
        GOOD,
        {"audio": "wav/a.wav", "text": "x", "language": "english"},
        {"audio": "wav/a.wav", "text": "x", "language": "zh_CN"},
        {"audio": "wav/good.wav", "text": "again"},
        {"audio": "wav/nan.wav", "text": "x"},
    ])
    _, report, _ = validate(manifest)
    details = {r["line"]: r["detail"] for r in report["rejected"]}
    assert 'did you mean "en"' in details[2] and "ISO 639-1" in details[2]
    assert "zh, en, de, fr" in details[2]
    assert 'did you mean "zh"' in details[3]
    assert "first used on line 1" in details[4] and "'wav/good'" in details[4]
    assert "0.125s" in details[5]  # the NaN sits at frame 1000 of an 8 kHz file


def test_fail_mode_lists_every_bad_line_and_removes_stale_output(
        data: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_manifest(data / "m.jsonl", [
        GOOD, "{oops", {"audio": "wav/missing.wav", "text": "x"},
        {"audio": "wav/b8k.wav", "text": "fine"}, {"audio": "wav/a.wav", "text": ""},
    ])
    stale = data.parent / "out" / "valid.jsonl"
    stale.parent.mkdir()
    stale.write_text('{"audio": "old.wav", "text": "looks valid"}\n')
    status, report, output = validate(manifest)
    assert status == 1
    assert not output.exists()
    assert report["output_written"] is False
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [
        (2, "invalid_json"), (3, "audio_not_found"), (5, "empty_text")]
    assert report["valid"] == 2 and report["total"] == 5
    err = capsys.readouterr().err
    assert f"{manifest}:3: audio_not_found" in err and "--on-error quarantine" in err
    assert not list(output.parent.glob(".valid.jsonl.*"))  # no temporary file left behind


def test_quarantine_keeps_good_lines_and_rejects_verbatim(data: Path) -> None:
    bad = [b'{"audio":  "wav/missing.wav" ,"text":"x"}', b"\xff not utf-8",
           b'  {"audio": "wav/good.wav", "text": "dup"}']
    manifest = write_manifest(data / "m.jsonl", [GOOD, bad[0], bad[1],
                                                 {"audio": "wav/b8k.wav", "text": "x"}, bad[2]])
    status, report, output = validate(manifest, "--on-error", "quarantine")
    assert status == 0
    assert [row["id"] for row in read_rows(output)] == ["wav/good", "wav/b8k"]
    rejects = output.with_name("rejects.jsonl")
    assert report["rejects"] == str(rejects)
    assert rejects.read_bytes() == b"\n".join(bad) + b"\n"
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [
        (2, "audio_not_found"), (3, "invalid_json"), (5, "duplicate_id")]

    chosen = data.parent / "elsewhere" / "bad_lines.jsonl"
    status, _, _ = validate(manifest, "--on-error", "quarantine", "--rejects", str(chosen))
    assert status == 0 and chosen.read_bytes() == rejects.read_bytes()


def test_quarantine_with_no_bad_lines_writes_empty_rejects(data: Path) -> None:
    manifest = write_manifest(data / "m.jsonl", [GOOD])
    status, report, output = validate(manifest, "--on-error", "quarantine")
    assert status == 0 and report["rejected"] == []
    assert output.with_name("rejects.jsonl").read_bytes() == b""


def test_output_rows_keep_fields_and_add_id_duration_rate(data: Path) -> None:
    manifest = write_manifest(data / "m.jsonl", [
        {"audio": "wav/a.wav", "text": "你好", "task": "asr", "language": "zh",
         "speaker": "s1", "begin_time": -1, "end_time": -1},
        {"id": "given", "audio": str(data / "wav" / "st44.wav"), "text": "x",
         "begin_time": 0.2},
        {"audio": "wav/b8k.wav", "text": "x", "begin_time": 0.1, "end_time": 0.35},
    ])
    status, _, output = validate(manifest)
    assert status == 0
    rows = read_rows(output)
    assert rows[0] == {"audio": str(data / "wav" / "a.wav"), "text": "你好", "task": "asr",
                       "language": "zh", "speaker": "s1", "begin_time": -1, "end_time": -1,
                       "id": "wav/a", "duration": 0.5, "sample_rate": 16000}
    assert rows[1]["id"] == "given"
    assert (rows[1]["duration"], rows[1]["sample_rate"]) == (0.3, 44100)
    assert (rows[2]["id"], rows[2]["duration"], rows[2]["sample_rate"]) == (
        "wav/b8k_0.1-0.35", 0.25, 8000)
    assert "你好" in output.read_text(encoding="utf-8")  # UTF-8 kept readable


def test_validated_manifest_validates_to_itself(data: Path) -> None:
    manifest = write_manifest(data / "m.jsonl", [
        GOOD, {"audio": "wav/st44.wav", "text": "x", "begin_time": 0.1, "language": "fr"}])
    status, _, output = validate(manifest)
    again = output.with_name("again.jsonl")
    argv = ["--input", str(output), "--output", str(again), "--report",
            str(output.with_name("again.json")), "--workers", "1", "--no-progress"]
    assert status == 0 and run_stage(main, build_parser(), argv) == 0
    assert again.read_text() == output.read_text()


def test_empty_manifest_fails_unless_allowed(data: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_manifest(data / "m.jsonl", ["", "  "])
    for mode in ("fail", "quarantine"):
        status, report, output = validate(manifest, "--on-error", mode)
        assert status == 1 and not output.exists()
        assert (report["total"], report["output_written"]) == (0, False)
        err = capsys.readouterr().err
        assert f"error: {manifest}: holds no manifest lines" in err and "--allow-empty" in err
        assert "**no lines, output NOT written**" in output.with_name("report.md").read_text()

    status, report, output = validate(manifest, "--allow-empty")
    assert status == 0 and output.read_text() == ""
    assert (report["total"], report["valid"], report["hours"]) == (0, 0, 0.0)
    assert report["options"]["allow_empty"] is True
    assert "holds no lines" in capsys.readouterr().err


@pytest.fixture
def small_mount(tmp_path: Path):
    """A tmpfs at ``tmp_path/out`` (the folder ``validate`` writes to); root only."""
    with small_tmpfs(tmp_path / "out", "64k") as mount:
        yield mount


def test_read_only_output_folder_is_one_line(data: Path, small_mount: Path, capsys) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    manifest = write_manifest(data / "m.jsonl", [GOOD])
    argv = ["--input", str(manifest), "--output", str(small_mount / "valid.jsonl"),
            "--report", str(small_mount / "report.json"), "--workers", "1", "--no-progress"]
    assert run_stage(main, build_parser(), argv) == 1
    err = capsys.readouterr().err
    assert f"\nerror: {small_mount / 'valid.jsonl'}: Read-only file system (EROFS); the file " \
        "system is mounted read-only: write the outputs to a writable folder\n" in err
    assert "Traceback" not in err


def test_full_output_folder_leaves_no_manifest_without_report(data: Path, small_mount: Path,
                                                              tmp_path: Path, capsys) -> None:
    manifest = write_manifest(data / "m.jsonl", [
        {"audio": "wav/good.wav", "text": "x" * 300, "id": f"utt{i}"} for i in range(40)])
    # Measure the outputs elsewhere, then leave the folder room for the manifest alone.
    probe = tmp_path / "probe"
    probe_argv = ["--input", str(manifest), "--output", str(probe / "valid.jsonl"), "--report",
                  str(probe / "report.json"), "--workers", "1", "--no-progress"]
    assert run_stage(main, build_parser(), probe_argv) == 0
    pages = -(-(probe / "valid.jsonl").stat().st_size // 4096)
    stats = os.statvfs(small_mount)
    free = stats.f_bavail * stats.f_frsize
    (small_mount / "filler").write_bytes(b"\0" * (free - pages * 4096))

    argv = ["--input", str(manifest), "--output", str(small_mount / "valid.jsonl"),
            "--report", str(small_mount / "report.json"), "--workers", "1", "--no-progress"]
    assert run_stage(main, build_parser(), argv) == 1
    err = capsys.readouterr().err
    assert "No space left on device (ENOSPC); free space there or write the outputs " \
        "elsewhere" in err and f"error: {small_mount}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in small_mount.iterdir()) == ["filler"]  # nothing half-written


@pytest.mark.parametrize(("begin", "end", "seconds", "suffix"), [
    (-1, -1, 0.5, ""),
    (None, None, 0.5, ""),
    (0.1, None, 0.4, "_0.1-end"),
    (0.1, -1, 0.4, "_0.1-end"),
    (None, 0.3, 0.3, "_0-0.3"),
    (-1, 0.3, 0.3, "_0-0.3"),
    (0, 0.5, 0.5, "_0-0.5"),
    (0.125, 0.375, 0.25, "_0.125-0.375"),
])
def test_segment_durations_across_rates(data: Path, begin, end, seconds: float,
                                        suffix: str) -> None:
    bounds = {k: v for k, v in (("begin_time", begin), ("end_time", end)) if v is not None}
    names = ["a.wav", "b8k.wav", "st44.wav"]
    manifest = write_manifest(data / "m.jsonl", [
        {"audio": f"wav/{name}", "text": "x", **bounds} for name in names])
    status, report, output = validate(manifest)
    assert status == 0, report["rejected"]
    rows = read_rows(output)
    assert [row["duration"] for row in rows] == [seconds] * 3
    assert [row["sample_rate"] for row in rows] == [16000, 8000, 44100]
    assert [row["id"] for row in rows] == [f"wav/{n[:-4]}{suffix}" for n in names]
    assert report["seconds"] == round(3 * seconds, 3)


def test_relative_paths_start_at_the_manifest_folder(data: Path, tmp_path: Path) -> None:
    # The cwd (tmp_path/elsewhere) holds a decoy wav/c.wav that the manifest folder lacks.
    tone(tmp_path / "elsewhere" / "wav" / "c.wav", 0.5, 16000)
    tone(tmp_path / "other" / "d.wav", 0.25, 16000)
    manifest = write_manifest(data / "sub" / "m.jsonl", [
        {"audio": "../wav/a.wav", "text": "x"},
        {"audio": "wav/c.wav", "text": "x"},
        {"audio": "../../other/d.wav", "text": "x"},
        {"audio": str(data / "wav" / "b8k.wav"), "text": "x"},
    ])
    status, report, output = validate(manifest, "--on-error", "quarantine")
    assert status == 0
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [(2, "audio_not_found")]
    rows = read_rows(output)
    assert [row["audio"] for row in rows] == [
        str(data / "wav" / "a.wav"), str(tmp_path / "other" / "d.wav"),
        str(data / "wav" / "b8k.wav")]
    # Files outside the manifest folder get their absolute path (without the root) as id.
    assert rows[0]["id"] == str(data / "wav" / "a").lstrip(os.sep)
    assert rows[1]["id"] == str(tmp_path / "other" / "d").lstrip(os.sep)


def test_duplicates_name_the_first_line(data: Path) -> None:
    manifest = write_manifest(data / "m.jsonl", [
        {"audio": "wav/a.wav", "text": "x", "id": "u1"},
        {"audio": "wav/a.wav", "text": "x"},  # derived id wav/a
        {"audio": "wav/b8k.wav", "text": "x", "id": "u1"},
        {"audio": "wav/missing.wav", "text": "x", "id": "u2"},  # rejected, but claims u2
        {"audio": "wav/b8k.wav", "text": "x", "id": "u2"},
        {"audio": "wav/b8k.wav", "text": "x", "id": "u1"},
        {"audio": "wav/a.wav", "text": "x", "begin_time": 0.1},  # wav/a_0.1-end: distinct
    ])
    _, report, _ = validate(manifest)
    rejected = {r["line"]: r for r in report["rejected"]}
    assert {line: r["reason"] for line, r in rejected.items()} == {
        3: "duplicate_id", 4: "audio_not_found", 5: "duplicate_id", 6: "duplicate_id"}
    assert "line 1" in rejected[3]["detail"] and "line 1" in rejected[6]["detail"]
    assert "line 4" in rejected[5]["detail"]
    assert report["valid"] == 3


def test_blank_lines_are_ignored_and_line_numbers_are_file_lines(data: Path) -> None:
    manifest = data / "m.jsonl"
    manifest.write_bytes(b"\n" + json.dumps(GOOD).encode() + b"\r\n   \n\t\r\n"
                         + b'{"audio": "wav/missing.wav", "text": "x"}\n\n')
    status, report, _ = validate(manifest, "--on-error", "quarantine")
    assert status == 0
    assert (report["total"], report["valid"], report["blank_lines_ignored"]) == (2, 1, 4)
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [(5, "audio_not_found")]


def test_utf8_bom_on_first_line_is_accepted(data: Path) -> None:
    manifest = data / "m.jsonl"
    manifest.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    status, report, _ = validate(manifest)
    assert status == 0 and report["valid"] == 1


def test_text_rules(data: Path) -> None:
    lines = [{"audio": "wav/a.wav"}, {"audio": "wav/a.wav", "text": None, "id": "n"},
             {"audio": "wav/a.wav", "text": "  ", "id": "w"},
             {"audio": "wav/a.wav", "text": 3, "id": "t"}]
    manifest = write_manifest(data / "m.jsonl", lines)
    _, report, _ = validate(manifest, "--no-require-text")
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [(4, "bad_type")]
    _, report, _ = validate(manifest, "--require-text")
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [
        (1, "missing_field"), (2, "bad_type"), (3, "empty_text"), (4, "bad_type")]


def test_report_numbers_exact(data: Path) -> None:
    manifest = write_manifest(data / "m.jsonl", [
        {"audio": "wav/a.wav", "text": "x", "language": "en"},                        # 0.5
        {"audio": "wav/b8k.wav", "text": "x", "language": "en", "end_time": 0.2},     # 0.2
        {"audio": "wav/st44.wav", "text": "x", "language": "zh", "begin_time": 0.1},  # 0.4
        {"audio": "wav/b8k.wav", "text": "x", "language": None},                      # 0.5
        {"audio": "wav/a.wav", "text": "x", "begin_time": 0.05, "end_time": 0.1},     # 0.05
        {"audio": "wav/missing.wav", "text": "x", "language": "en"},
        "[]",
    ])
    status, report, _ = validate(manifest, "--on-error", "quarantine", "--max-seconds", "30")
    assert status == 0
    seconds = [0.5, 0.2, 0.4, 0.5, 0.05]
    assert (report["total"], report["valid"], report["invalid"]) == (7, 5, 2)
    assert report["seconds"] == round(sum(seconds), 3) == 1.65
    assert report["hours"] == round(1.65 / 3600, 6)
    assert report["languages"] == {
        "en": {"lines": 2, "hours": round(0.7 / 3600, 6), "name": "English"},
        "unspecified": {"lines": 2, "hours": round(0.55 / 3600, 6), "name": ""},
        "zh": {"lines": 1, "hours": round(0.4 / 3600, 6), "name": "Chinese"},
    }
    assert report["durations"] == {"min": 0.05, "mean": 0.33, "median": 0.4,
                                   "p95": round(float(np.percentile(seconds, 95)), 3),
                                   "max": 0.5}
    assert report["reason_counts"] == {"audio_not_found": 1, "not_an_object": 1}
    assert report["options"] == {"on_error": "quarantine", "require_text": True,
                                 "min_seconds": 0.0, "max_seconds": 30.0,
                                 "allow_empty": False, "workers": 1}
    assert report["input"] == str(manifest)
    assert {"config_hash", "git_commit", "versions"} <= set(report["provenance"])

    markdown = (data.parent / "out" / "report.md").read_text()
    assert "| rejected | 2 |" in markdown
    assert "| en | English | 2 |" in markdown
    assert "| 6 | `audio_not_found` |" in markdown and "| 7 | `not_an_object` |" in markdown


def test_markdown_lists_at_most_50_rejected_lines(data: Path) -> None:
    manifest = write_manifest(data / "m.jsonl", ["{"] * 60)
    _, report, _ = validate(manifest)
    assert len(report["rejected"]) == 60
    markdown = (data.parent / "out" / "report.md").read_text()
    assert "first 50 of 60" in markdown
    assert "| 50 | `invalid_json` |" in markdown and "| 51 |" not in markdown
    assert report["durations"]["median"] is None


def test_process_pool_matches_serial_run(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "CHUNK_LINES", 4)  # many chunks, duplicates across them
    lines = []
    for i in range(30):
        name = ["a.wav", "b8k.wav", "st44.wav", "missing.wav", "nan.wav"][i % 5]
        lines.append({"audio": f"wav/{name}", "text": f"t{i}", "begin_time": (i % 3) / 100})
    manifest = write_manifest(data / "m.jsonl", lines)
    status1, serial, output = validate(manifest, "--on-error", "quarantine")
    serial_rows = output.read_text()
    status2, pooled, output = validate(manifest, "--on-error", "quarantine", workers=2)
    assert status1 == status2 == 0
    assert output.read_text() == serial_rows
    assert pooled["rejected"] == serial["rejected"]
    assert {r["reason"] for r in serial["rejected"]} == {
        "audio_not_found", "audio_not_finite", "duplicate_id"}
    for key in ("total", "valid", "hours", "languages", "durations", "reason_counts"):
        assert pooled[key] == serial[key]


def test_long_files_are_checked_block_by_block(data: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "READ_BLOCK_FRAMES", 256)
    tone(data / "wav" / "late_nan.wav", 0.5, 8000, subtype="FLOAT", poison=float("nan"),
         poison_at=3000)
    assert validation.probe_audio(str(data / "wav" / "a.wav"), 0.1, 0.4) == (0.3, 16000)
    with pytest.raises(LineProblem, match=r"0\.375s") as caught:
        validation.probe_audio(str(data / "wav" / "late_nan.wav"))
    assert caught.value.reason == "audio_not_finite"
    # The NaN lies outside this segment, so the segment is fine.
    assert validation.probe_audio(str(data / "wav" / "late_nan.wav"), -1, 0.3) == (0.3, 8000)


def test_usage_errors(data: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_manifest(data / "m.jsonl", [GOOD])
    argv = ["--input", str(manifest), "--report", str(data / "r.json"), "--no-progress"]
    assert run_stage(main, build_parser(), [*argv, "--output", str(manifest)]) == 1
    assert "would overwrite --input" in capsys.readouterr().err
    assert manifest.read_text() == json.dumps(GOOD) + "\n"
    missing = ["--input", str(data / "nope.jsonl"), "--output", str(data / "o.jsonl"),
               "--report", str(data / "r.json")]
    assert run_stage(main, build_parser(), missing) == 1
    assert "manifest not found" in capsys.readouterr().err
    bounds = [*argv, "--output", str(data / "o.jsonl"), "--min-seconds", "2",
              "--max-seconds", "1"]
    assert run_stage(main, build_parser(), bounds) == 1
    assert "--max-seconds" in capsys.readouterr().err


def test_help_documents_codes_languages_and_defaults() -> None:
    text = " ".join(build_parser().format_help().split())
    for code in REASONS:
        assert code in text
    assert "rejects.jsonl" in text and "--no-require-text" in text
    assert "default: no limit" in text and "default: 0" in text
    assert "python -m stages.validate --input" in text
    assert " ".join(list(LANGUAGES)[:5]) in text


def test_module_runs_as_a_subprocess(data: Path) -> None:
    write_manifest(data / "m.jsonl", [GOOD, {"audio": "wav/good.wav", "text": "x",
                                             "language": "de"}])
    out = data.parent / "sp"
    cmd = [sys.executable, "-m", "stages.validate", "--input", "m.jsonl",
           "--output", str(out / "v.jsonl"), "--report", str(out / "r.json"), "--workers", "2"]
    done = subprocess.run(cmd, cwd=data, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stderr
    assert "duplicate_id" in done.stderr and not (out / "v.jsonl").exists()
    assert json.loads((out / "r.json").read_text())["rejected"][0]["line"] == 2
    assert (out / "r.md").is_file()


# --- library units ----------------------------------------------------------------------------

def test_segment_frames_error_kinds() -> None:
    assert segment_frames(8000, 16000, 0.1, -1).start == 1600
    for begin, end, kind in [(0.6, -1, "out_of_range"), (-1, 0.6, "out_of_range"),
                             (0.2, 0.2, "empty")]:
        with pytest.raises(SegmentError) as caught:
            segment_frames(8000, 16000, begin, end)
        assert caught.value.kind == kind and isinstance(caught.value, ValueError)


def test_language_codes() -> None:
    assert len(LANGUAGES) >= 40
    for code in ("zh", "en", "de", "fr", "ja", "ko", "es", "it", "pt", "ru", "ar", "yo"):
        assert check_language(code) == code
    for value, hint in [("Chinese", "zh"), ("FR", "fr"), ("pt_BR", "pt"), ("mandarin", "zh")]:
        with pytest.raises(LineProblem, match=f'did you mean "{hint}"'):
            check_language(value)
    with pytest.raises(LineProblem) as caught:
        check_language("klingon")
    assert caught.value.reason == "bad_language" and "did you mean" not in caught.value.detail


def test_derive_id_and_resolution(tmp_path: Path) -> None:
    folder = str(tmp_path / "m")
    path = resolve_audio("wav/x/../y.flac", folder)
    assert path == str(tmp_path / "m" / "wav" / "y.flac")
    fields = check_fields({"audio": "wav/y.flac", "text": "t", "begin_time": 12.5,
                           "end_time": 17.25})
    assert derive_id(fields, path, folder) == "wav/y_12.5-17.25"
    whole = check_fields({"audio": "wav/y.flac", "text": "t", "begin_time": -1})
    assert derive_id(whole, path, folder) == "wav/y"
    ms = check_fields({"audio": "y.wav", "text": "t", "begin_time": 1 / 3})
    assert derive_id(ms, path, folder) == "wav/y_0.333-end"
