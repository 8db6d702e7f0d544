"""Teacher data end to end on a tiny random-weight Qwen3-ASR teacher (mechanics, not quality).

The teacher's transcripts are garbage, which is fine here: the filters are tested on crafted
outputs in test_td_filters.py. These tests run the stage CLIs and check what the pipeline
promises: the output row format, the mean log-prob against a teacher-forced pass, a shard
killed mid-run resuming to byte-identical outputs, and 3 shards merging to exactly 1 shard.

Filters here: only high_error_rate with a 0.5 bound, so rows with a reference (which random
outputs never match) are dropped and rows without one are kept -- both outputs get rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages import td_merge, teacher_data, validate
from stages.common.errors import UserError
from stages.common.jsonl import read_json, read_jsonl, write_jsonl
from stages.data.audio import write_wav
from stages.data.batching import load_batch, read_utterances
from stages.demo.tiny import build_tiny_models
from stages.models import load_adapter
from stages.td.shards import KILL_HOOK_ENV, PartialLog, shard_batches, transcribe_records
from tests.helpers import stage, tone

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {
    "vocab_size": 600, "vocab_multiple": 64, "chunk_seconds": 4,
    "teacher": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                "intermediate_size": 128, "audio_hidden_size": 64, "audio_layers": 1,
                "audio_heads": 4, "audio_ffn_size": 128, "audio_conv_channels": 16},
    "student": {"hidden_size": 32, "layers": 1, "heads": 4, "kv_heads": 2,
                "intermediate_size": 64, "audio_hidden_size": 32, "audio_layers": 1,
                "audio_heads": 4},
}
TEXTS = {"zh": "今天天气很好。", "en": "Hello world, this is a test.", "de": "Guten Tag.",
         "ja": "こんにちは。"}
# (language, has reference) per clip: languages given and missing, references present and not.
LAYOUT = [("zh", True), ("en", True), (None, False), ("de", False), ("ja", True),
          ("en", False), (None, True), ("zh", False), ("en", True), ("de", True),
          (None, False), ("zh", True), ("en", False)]
BATCH = 2
COMMON = ["--batch-size", str(BATCH), "--max-new-tokens", "6", "--device", "cpu",
          "--threads", "1", "--filters", "high_error_rate", "--max-wer", "0.5",
          "--max-cer", "0.5"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A validated-style pool of sine clips and a tiny random teacher."""
    root = tmp_path_factory.mktemp("td")
    rng = np.random.default_rng(0)
    rows = []
    for i, (language, has_text) in enumerate(LAYOUT):
        seconds = round(0.6 + 0.15 * ((i * 7) % 13), 3)  # distinct durations, shuffled
        audio = tone(seconds, 150 + 40 * i, amplitude=0.2, noise=0.02, rng=rng)
        path = root / "wavs" / f"utt{i:02d}.wav"
        write_wav(path, audio.astype(np.float32))
        row = {"audio": str(path), "task": "asr", "id": f"utt{i:02d}", "duration": seconds}
        if has_text:
            row["text"] = TEXTS[language or "en"]
        if language:
            row["language"] = language
        rows.append(row)
    pool = root / "pool.jsonl"
    write_jsonl(pool, rows)
    corpus = root / "corpus.jsonl"
    write_jsonl(corpus, ({"audio": "x.wav", "text": t} for t in list(TEXTS.values()) * 3))
    build_tiny_models([corpus], root / "models", SPEC, seed=0)
    return {"root": root, "pool": pool, "rows": rows, "teacher": root / "models" / "teacher_init"}


def shard_args(world, out, shard=0, num_shards=1):
    stem = out / f"shard_{shard}"
    return ["--teacher", str(world["teacher"]), "--input", str(world["pool"]),
            "--output", f"{stem}.jsonl", "--rejects", f"{stem}.rejects.jsonl",
            "--report", f"{stem}.report.json", "--shard", str(shard),
            "--num-shards", str(num_shards), *COMMON]


def rounded(value):
    """Floats rounded (sums of seconds differ in the last bits with the summation order)."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 9) if isinstance(value, float) else value


def run_shard(argv):
    return stage(teacher_data, argv)


def run_merge(argv):
    return stage(td_merge, argv)


@pytest.fixture(scope="module")
def single(world):
    """One uninterrupted single-shard run: the reference every other run must reproduce."""
    out = world["root"] / "single"
    assert run_shard(shard_args(world, out)) == 0
    return out


def test_rows_keep_input_fields_and_reference(world, single):
    kept = read_jsonl(single / "shard_0.jsonl")
    rejected = read_jsonl(single / "shard_0.rejects.jsonl")
    report = read_json(single / "shard_0.report.json")
    pool = {r["id"]: r for r in world["rows"]}
    with_reference = [i for i, r in pool.items() if "text" in r]
    # only high_error_rate is on: rows with a reference are dropped, rows without are kept
    assert sorted(r["id"] for r in rejected) == sorted(with_reference)
    assert len(kept) + len(rejected) == len(pool)
    assert [r["id"] for r in kept] == [i for i in pool if i not in with_reference]  # pool order
    for row in kept + rejected:
        source = pool[row["id"]]
        for key, value in source.items():
            if key != "text":
                assert row[key] == value, key
        assert isinstance(row["text"], str)
        if "text" in source:
            assert row["reference_text"] == source["text"]
            assert isinstance(row["teacher_error_rate"], float)
        else:
            assert "reference_text" not in row and "teacher_error_rate" not in row
        if "language" in source:
            assert row["language_source"] == "manifest"
        else:
            assert row["language_source"] in ("detected", "none")
            assert (row["language"] is None) == (row["language_source"] == "none")
        assert 1 <= row["teacher_tokens"] <= 6
        assert row["teacher_stopped"] or row["teacher_tokens"] == 6
        assert row["teacher_mean_logprob"] <= 0
        assert row["text"] in row["teacher_text_raw"] or not row["text"]
    for row in rejected:
        assert row["reason"] == "high_error_rate" and row["reasons"] == ["high_error_rate"]
        assert row["details"]["high_error_rate"].startswith(("wer", "cer"))

    counts, summary = report["counts"], report["summary"]
    assert counts["rows"] == {"input": 13, "kept": len(kept), "dropped": len(rejected),
                              "with_reference": len(with_reference)}
    assert counts["dropped_by_reason"]["high_error_rate"] == len(rejected)
    assert sum(counts["dropped_by_reason"].values()) == len(rejected)
    errors = counts["teacher_errors"]
    assert errors["before"]["cer"]["rows"] + errors["before"]["wer"]["rows"] == 7
    assert errors["after"]["cer"]["rows"] + errors["after"]["wer"]["rows"] == 0
    assert summary["teacher_error_rate"]["after"] == {"cer": None, "wer": None}
    assert sum(lang["rows"] for lang in counts["languages"].values()) == 13
    assert counts["language_sources"]["manifest"] == 10
    assert summary["kept_hours"] == round(sum(r["duration"] for r in kept) / 3600, 6)
    assert counts["timing"]["transcribed_rows"] == 13 and counts["timing"]["resumed_rows"] == 0
    assert summary["audio_seconds_per_second"] > 0
    assert "git_commit" in report["provenance"]
    assert not (single / "shard_0.jsonl.partial").exists()


def test_td_rows_are_valid_manifest_rows(single, tmp_path):
    merged = tmp_path / "td.jsonl"
    merged.write_bytes((single / "shard_0.jsonl").read_bytes()
                       + (single / "shard_0.rejects.jsonl").read_bytes())
    argv = ["--input", str(merged), "--output", str(tmp_path / "valid.jsonl"),
            "--report", str(tmp_path / "valid.json"), "--no-require-text", "--workers", "1",
            "--no-progress"]
    assert stage(validate, argv) == 0
    assert read_json(tmp_path / "valid.json")["invalid"] == 0


def test_mean_logprob_matches_teacher_forced_pass(world):
    adapter = load_adapter(str(world["teacher"]))
    utterances = read_utterances(world["pool"])[:3]
    records = transcribe_records(adapter, utterances, max_new_tokens=6)
    batch = load_batch(utterances)
    responses = adapter.generate(batch.audios, batch.languages, max_new_tokens=6)
    logits, mask = adapter.response_logits(batch.audios, batch.languages, responses,
                                           mask_blocked=True)
    logprobs = F.log_softmax(logits, dim=-1)
    for row, (record, response) in enumerate(zip(records, responses, strict=True)):
        ids = torch.tensor(response).unsqueeze(-1)
        expected = logprobs[row, :len(response)].gather(-1, ids).mean().item()
        assert record["teacher_mean_logprob"] == pytest.approx(expected, abs=1e-4)
        assert record["teacher_tokens"] == len(response) == int(mask[row].sum())
        assert record["text"] == adapter.decode_response(response)


def test_killed_shard_resumes_to_identical_outputs(world, single, venv_env, project_root):
    out = world["root"] / "killed"
    argv = shard_args(world, out)
    env = {**venv_env, KILL_HOOK_ENV: "2"}
    result = subprocess.run([sys.executable, "-m", "stages.teacher_data", *argv], env=env,
                            cwd=project_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr
    partial = out / "shard_0.jsonl.partial"
    lines = partial.read_text("utf-8").splitlines()
    assert len(lines) == 1 + 2 * BATCH  # header + two batches
    assert not (out / "shard_0.jsonl").exists() and not (out / "shard_0.report.json").exists()
    # a kill in the middle of a write leaves a torn last line
    with partial.open("a", encoding="utf-8") as handle:
        handle.write(lines[-1][: len(lines[-1]) // 2])

    assert run_shard(argv) == 0
    for name in ("shard_0.jsonl", "shard_0.rejects.jsonl"):
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    timing = read_json(out / "shard_0.report.json")["counts"]["timing"]
    assert timing["resumed_rows"] == 2 * BATCH
    assert timing["transcribed_rows"] == 13 - 2 * BATCH
    assert timing["batches_run"] == timing["batches"] - 2
    assert not partial.exists()


def test_three_shards_merge_to_one(world, single, capsys):
    out = world["root"] / "three"
    for shard in range(3):
        assert run_shard(shard_args(world, out, shard, 3)) == 0
    stems = [out / f"shard_{i}" for i in range(3)]
    sizes = [len(read_jsonl(f"{s}.jsonl")) + len(read_jsonl(f"{s}.rejects.jsonl"))
             for s in stems]
    assert sum(sizes) == 13 and all(sizes)
    merge = ["--shards", *(f"{s}.jsonl" for s in stems),
             "--reports", *(f"{s}.report.json" for s in stems),
             "--rejects", *(f"{s}.rejects.jsonl" for s in stems)]
    assert run_merge([*merge, "--order", str(world["pool"]), "--output", str(out / "td.jsonl"),
                      "--rejects-output", str(out / "rejects.jsonl"),
                      "--report", str(out / "report.json")]) == 0
    assert (out / "td.jsonl").read_bytes() == (single / "shard_0.jsonl").read_bytes()
    assert (out / "rejects.jsonl").read_bytes() == (single / "shard_0.rejects.jsonl").read_bytes()

    merged, one = read_json(out / "report.json"), read_json(single / "shard_0.report.json")
    for key in ("rows", "dropped_by_reason", "failed_by_filter", "teacher_errors",
                "language_sources", "languages"):
        assert rounded(merged["counts"][key]) == rounded(one["counts"][key]), key
    assert merged["summary"]["teacher_error_rate"] == one["summary"]["teacher_error_rate"]
    assert merged["counts"]["timing"]["transcribed_rows"] == 13
    assert [s["index"] for s in merged["shards"]["per_shard"]] == [0, 1, 2]
    markdown = (out / "report.md").read_text("utf-8")
    assert "| high_error_rate |" in markdown and "Teacher error rate" in markdown

    # too few rows kept for adaptation: the stage fails after writing its report
    assert run_merge([*merge, "--min-kept", "7", "--output", str(out / "few.jsonl"),
                      "--rejects-output", str(out / "few.rejects.jsonl"),
                      "--report", str(out / "few.json")]) == 1
    assert "only 6 of 13 teacher transcripts passed" in capsys.readouterr().err
    assert read_json(out / "few.json")["summary"]["kept"] == 6

    # without --order: sorted by id
    assert run_merge([*merge, "--output", str(out / "by_id.jsonl"),
                      "--rejects-output", str(out / "by_id.rejects.jsonl"),
                      "--report", str(out / "by_id.json")]) == 0
    ids = [r["id"] for r in read_jsonl(out / "by_id.jsonl")]
    assert ids == sorted(r["id"] for r in read_jsonl(single / "shard_0.jsonl"))

    # a missing shard or a foreign pool is refused
    assert run_merge(["--shards", *merge[1:3], "--reports", *merge[5:7],
                      "--output", str(out / "x.jsonl"), "--report", str(out / "x.json")]) == 1
    assert "missing shard(s) 2" in capsys.readouterr().err
    other = world["root"] / "other_pool.jsonl"
    other.write_bytes(world["pool"].read_bytes() + b"\n")
    assert run_merge([*merge, "--order", str(other), "--output", str(out / "x.jsonl"),
                      "--rejects-output", str(out / "x.rejects.jsonl"),
                      "--report", str(out / "x.json")]) == 1
    assert "is not the pool the shards were transcribed from" in capsys.readouterr().err


def test_sharding_is_by_batch():
    from stages.data.batching import Utterance

    utts = [Utterance(id=f"u{i}", audio="a.wav", duration=float(i)) for i in range(10)]
    shards = [shard_batches(utts, 3, k, 2) for k in range(2)]
    assert [[u.id for u in b] for b in shards[0]] == [["u9", "u8", "u7"], ["u3", "u2", "u1"]]
    assert [[u.id for u in b] for b in shards[1]] == [["u6", "u5", "u4"], ["u0"]]
    with pytest.raises(ValueError):
        shard_batches(utts, 3, 2, 2)


def test_partial_log_sets_aside_other_settings_and_rejects_corruption(tmp_path):
    path = tmp_path / "s.jsonl.partial"
    log = PartialLog(path, {"batch_size": 2})
    assert log.load() == {}
    log.append([{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    assert set(PartialLog(path, {"batch_size": 2}).load()) == {"a", "b"}
    # other settings: moved aside, not mixed in
    assert PartialLog(path, {"batch_size": 4}).load() == {}
    assert (tmp_path / "s.jsonl.partial.stale").read_text("utf-8").count("\n") == 3
    assert path.read_text("utf-8").count("\n") == 1  # a fresh header only
    # a broken line before the last complete one is corruption, not a torn write
    log = PartialLog(path, {"batch_size": 4})
    log.append([{"id": "a"}])
    with path.open("a", encoding="utf-8") as handle:
        handle.write("{broken\n" + json.dumps({"id": "b"}) + "\n")
    with pytest.raises(UserError, match=r"partial:3: not a teacher-data record"):
        log.load()


def test_bad_arguments_are_user_errors(world, tmp_path, capsys):
    argv = shard_args(world, tmp_path, shard=3, num_shards=3)
    assert run_shard(argv) == 1
    assert "0 <= shard < num-shards" in capsys.readouterr().err
    argv = shard_args(world, tmp_path) + ["--max-units-per-second", "zh=fast"]
    assert run_shard(argv) == 1
    assert "LANG=N" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "shard_0.jsonl")
