"""The evaluate stage and its decoding library (stages/models/transcribe.py).

Tiny untrained models (random weights: their transcripts are nonsense, which is all these tests
need) decode synthetic clips listed in a manifest validated by the validate library. Checked: the
rows agree with the score stage rescoring them, order and coverage of duration-sorted decoding,
batch-size independence, the language hint, failures that name their batch and write nothing,
summary fields, and one real process.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from stages import evaluate, evaluate_presets, score
from stages.common.errors import UserError
from stages.common.jsonl import read_jsonl, write_jsonl
from stages.data.audio import write_wav
from stages.data.batching import duration_sorted_batches, read_utterances
from stages.data.validation import validate_manifest
from stages.demo.tiny import build_tiny_models
from stages.models import load_adapter
from stages.models import transcribe as decode
from stages.models.transcribe import DecodeError, transcribe
from tests.helpers import stage, tone

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [("zh", "今天天气很好。"), ("en", "Hello world, this is a test."),
         ("zh", "我想喝一杯热茶。"), ("en", "The quick brown fox."),
         ("zh", "这个问题很难回答。"), ("en", "Where is the station?"),
         ("zh", "我们去公园散步。"), ("en", "Good morning to you."),
         ("zh", "妈妈买书。"), ("en", "It is raining today.")]
# Distinct durations, out of order in the manifest, so decoding order differs from file order.
DURATIONS = [1.4, 3.2, 0.6, 2.6, 1.0, 3.6, 2.0, 0.8, 2.8, 1.6]
SPEC = {
    "vocab_size": 500, "vocab_multiple": 64, "chunk_seconds": 4,
    "teacher": {"hidden_size": 64, "layers": 1, "heads": 2, "kv_heads": 1,
                "intermediate_size": 128, "audio_hidden_size": 64, "audio_layers": 1,
                "audio_heads": 2, "audio_ffn_size": 128, "audio_conv_channels": 16},
    "student": {"hidden_size": 64, "layers": 1, "heads": 2, "kv_heads": 1,
                "intermediate_size": 128, "audio_hidden_size": 64, "audio_layers": 1,
                "audio_heads": 2},
}
MAX_NEW = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A validated manifest of synthetic clips (tones plus noise) with zh and en references."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for index, ((language, text), seconds) in enumerate(zip(TEXTS, DURATIONS, strict=True)):
        clip = tone(seconds, 150 + 40 * index, amplitude=0.3, noise=0.05,
                    rng=np.random.default_rng(index))
        write_wav(root / "wavs" / f"u{index}.wav", clip)
        rows.append({"audio": f"wavs/u{index}.wav", "text": text, "language": language,
                     "id": f"utt{index:02d}"})
    raw = root / "raw.jsonl"
    write_jsonl(raw, rows)
    manifest = root / "dev.jsonl"
    report = validate_manifest(raw, manifest, root / "dev.report.json", progress=False)
    assert report["valid"] == len(rows)
    return manifest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    texts = root / "texts.jsonl"
    write_jsonl(texts, ({"audio": "x.wav", "text": t} for _, t in TEXTS * 3))
    build_tiny_models([texts], root, SPEC, seed=0)
    # A freshly initialised tiny model writes one token for every clip; louder random weights
    # make its transcripts depend on the audio, so order and batching mistakes become visible.
    generator = torch.Generator().manual_seed(0)
    for name in ("teacher_init", "student_init"):
        model = AutoModelForSeq2SeqLM.from_pretrained(root / name)
        with torch.no_grad():
            for weight in model.parameters():
                if weight.dim() >= 2:
                    weight.add_(0.3 * torch.randn(weight.shape, generator=generator))
        model.save_pretrained(root / name)
    return {"teacher": root / "teacher_init", "student": root / "student_init"}


@pytest.fixture(scope="module")
def adapters(models):
    return {name: load_adapter(str(path)) for name, path in models.items()}


def eval_argv(model, manifest, out, *extra):
    return ["--model", model, "--input", manifest, "--output", out / "test_dev.jsonl",
            "--summary", out / "summary_dev.json", "--metric", "cer", "--normalizer", "zh",
            "--max-new-tokens", MAX_NEW, "--device", "cpu", *extra]


# ---- the stage ----------------------------------------------------------------------------------

def test_rows_worst_first_and_score_stage_agrees(tmp_path, models, corpus):
    out = tmp_path / "eval"
    assert stage(evaluate, eval_argv(models["student"], corpus, out, "--batch-size", 4,
                                  "--preset", "dev", "--model-name", "student_x")) == 0
    rows = read_jsonl(out / "test_dev.jsonl")
    summary = json.loads((out / "summary_dev.json").read_text())
    utterances = read_utterances(corpus)

    # Every utterance exactly once, worst first, with the reference and both predictions.
    assert sorted(r["id"] for r in rows) == sorted(u.id for u in utterances)
    errors = [r["errors"] for r in rows]
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1]
    references = {u.id: u.text for u in utterances}
    for row in rows:
        assert row["text"] == references[row["id"]]
        assert row["cer_errors"] == row["errors"] == (
            row["substitutions"] + row["deletions"] + row["insertions"])
        assert isinstance(row["pred_text"], str) and isinstance(row["pred_norm"], str)
        assert 0 <= row["pred_tokens"] <= MAX_NEW
        assert row["stopped"] or row["pred_tokens"] == MAX_NEW
    for key in ("errors", "substitutions", "deletions", "insertions", "ref_len"):
        assert summary[key] == sum(r[key] for r in rows)
    assert summary["rate"] == summary["cer"] == pytest.approx(summary["errors"]
                                                              / summary["ref_len"])
    assert summary["unstopped"] == sum(not r["stopped"] for r in rows)
    assert summary["generated_tokens"] == sum(r["pred_tokens"] + r["stopped"] for r in rows)

    # Summary: exact audio seconds from the manifest, timing, settings, provenance.
    assert summary["audio_seconds"] == math.fsum(u.duration for u in utterances)
    assert summary["audio_seconds"] == pytest.approx(sum(DURATIONS), abs=0.01)
    assert summary["decode_seconds"] > 0 and summary["rtfx"] > 0
    assert summary["rtfx"] == pytest.approx(summary["audio_seconds"]
                                            / summary["decode_seconds"])
    assert summary["wall_seconds"] >= summary["decode_seconds"] + summary["load_seconds"]
    assert (summary["batch_size"], summary["batches"], summary["utterances"]) == (4, 3, 10)
    assert (summary["device"], summary["dtype"], summary["family"]) == (
        "cpu", "float32", "audio_chat_lm")
    assert (summary["preset"], summary["model_name"], summary["model"]) == (
        "dev", "student_x", str(models["student"]))
    assert summary["max_new_tokens"] == MAX_NEW and summary["language_hint"] is True
    assert summary["provenance"]["config_hash"] and summary["provenance"]["git_commit"]

    # Rescoring the rows file without the model reproduces every row and every count.
    assert stage(score, [
        "--input", out / "test_dev.jsonl", "--output", tmp_path / "rescored.jsonl",
        "--summary", tmp_path / "rescored.json", "--metric", "cer", "--normalizer", "zh"]) == 0
    assert read_jsonl(tmp_path / "rescored.jsonl") == rows
    rescored = json.loads((tmp_path / "rescored.json").read_text())
    for key in ("rate", "cer", "errors", "substitutions", "deletions", "insertions", "hits",
                "ref_len", "utterances", "empty_predictions", "empty_references"):
        assert rescored[key] == summary[key], key


def test_failed_batch_fails_the_stage_with_its_ids(tmp_path, models, corpus, capsys):
    # One clip of a validated manifest is corrupted afterwards: its batch cannot be decoded.
    rows = read_jsonl(corpus)
    victim = rows[4]["id"]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    rows[4]["audio"] = str(broken)
    manifest = tmp_path / "dev.jsonl"
    write_jsonl(manifest, rows)
    batches = list(duration_sorted_batches(read_utterances(manifest), 4))
    failed = next([u.id for u in b] for b in batches if victim in [u.id for u in b])
    others = [u.id for b in batches for u in b if u.id not in failed]

    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary_dev.json").write_text("{}")  # a stale summary from an earlier run
    assert stage(evaluate, eval_argv(models["student"], manifest, out, "--batch-size", 4)) == 1
    err = capsys.readouterr().err
    message = next(line for line in err.splitlines() if line.startswith("error:"))
    assert all(i in message for i in failed)
    assert not any(i in message for i in others)
    assert "stages.validate" in message
    assert not (out / "summary_dev.json").exists() and not (out / "test_dev.jsonl").exists()


def test_bad_arguments_are_user_errors(tmp_path, models, corpus):
    def run(*extra, manifest=corpus):
        args = evaluate.build_parser().parse_args(
            [str(a) for a in eval_argv(models["student"], manifest, tmp_path, *extra)])
        return evaluate.main(args)

    with pytest.raises(UserError, match="--batch-size must be at least 1"):
        run("--batch-size", 0)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            run("--device", "cuda")
    unvalidated = tmp_path / "raw.jsonl"
    unvalidated.write_text('{"audio": "a.wav", "text": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"raw.jsonl:1: missing id, duration"):
        run(manifest=unvalidated)
    args = evaluate.build_parser().parse_args(
        [str(a) for a in eval_argv(models["student"], corpus, tmp_path)])
    args.output = str(corpus)
    with pytest.raises(UserError, match="is the input manifest"):
        evaluate.main(args)


def test_cli_in_a_real_process(tmp_path, models, corpus, venv_env):
    out = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, "-m", "stages.evaluate",
         *map(str, eval_argv(models["teacher"], corpus, out, "--batch-size", 16,
                             "--threads", 1, "--metric", "wer", "--normalizer", "basic"))],
        env=venv_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary_dev.json").read_text())
    assert (summary["family"], summary["metric"], summary["normalizer"]) == (
        "qwen3_asr", "wer", "basic")
    assert summary["threads"] == 1 and summary["batches"] == 1
    assert summary["preset"] == "dev" and summary["model_name"] == "teacher_init"
    assert "wer_errors" in read_jsonl(out / "test_dev.jsonl")[0]
    assert "decode" in done.stderr and "10/10" in done.stderr  # progress in utterances


# Summary fields that time or place one run; everything else is what was computed.
RUN_FIELDS = {"decode_seconds", "load_seconds", "wall_seconds", "rtfx", "provenance", "output"}


def test_several_presets_in_one_process_match_one_run_each(tmp_path, models, corpus):
    """evaluate_presets: one load for two sets (cer/zh and wer/basic); each set's rows and
    summary are the ones stages.evaluate writes for it alone."""
    out = tmp_path / "together"
    assert stage(evaluate_presets, [
        "--model", models["teacher"], "--output-dir", out, "--preset", f"zh_set={corpus}",
        f"en_set={corpus}", "--metric", "zh_set=cer", "en_set=wer", "--normalizer",
        "en_set=basic", "--max-new-tokens", MAX_NEW, "--device", "cpu",
        "--batch-size", 4, "--model-name", "teacher_x"]) == 0
    for name, metric, normalizer in (("zh_set", "cer", "zh"), ("en_set", "wer", "basic")):
        alone = tmp_path / f"alone_{name}"
        assert stage(evaluate, [
            "--model", models["teacher"], "--input", corpus,
            "--output", alone / f"test_{name}.jsonl", "--summary", alone / f"summary_{name}.json",
            "--metric", metric, "--normalizer", normalizer, "--max-new-tokens", MAX_NEW,
            "--device", "cpu", "--batch-size", 4, "--preset", name,
            "--model-name", "teacher_x"]) == 0
        assert read_jsonl(out / f"test_{name}.jsonl") == read_jsonl(alone / f"test_{name}.jsonl")
        together, single = (json.loads((folder / f"summary_{name}.json").read_text())
                            for folder in (out, alone))
        assert {k: v for k, v in together.items() if k not in RUN_FIELDS} == {
            k: v for k, v in single.items() if k not in RUN_FIELDS}
        assert (together["metric"], together["normalizer"], together["preset"]) == (
            metric, normalizer, name)
        assert together["output"] == str(out / f"test_{name}.jsonl")
        assert together["wall_seconds"] >= together["decode_seconds"] > 0


def test_presets_need_a_metric_each_and_well_formed_names(tmp_path, models, corpus):
    def run(*extra):
        args = evaluate_presets.build_parser().parse_args([str(a) for a in (
            "--model", models["student"], "--output-dir", tmp_path / "out", "--device", "cpu",
            *extra)])
        return evaluate_presets.main(args)

    with pytest.raises(UserError, match="no set to evaluate"):
        run("--metric", "a=cer")
    with pytest.raises(UserError, match="no --metric for b"):
        run("--preset", f"a={corpus}", f"b={corpus}", "--metric", "a=cer")
    with pytest.raises(UserError, match="--metric names c, which no --preset gives"):
        run("--preset", f"a={corpus}", "--metric", "a=cer", "c=wer")
    with pytest.raises(UserError, match="--metric a=ter: 'ter' is not one of cer, wer"):
        run("--preset", f"a={corpus}", "--metric", "a=ter")
    with pytest.raises(UserError, match="--normalizer a=de: 'de' is not one of zh, en"):
        run("--preset", f"a={corpus}", "--metric", "a=cer", "--normalizer", "a=de")
    with pytest.raises(UserError, match="--preset: 'a' given twice"):
        run("--preset", f"a={corpus}", f"a={corpus}", "--metric", "a=cer")
    with pytest.raises(UserError, match="--metric: 'cer' is not NAME=METRIC"):
        run("--preset", f"a={corpus}", "--metric", "cer")
    assert not (tmp_path / "out").exists()  # nothing written, no model loaded


# ---- the decoding library -----------------------------------------------------------------------

def test_decoding_is_duration_sorted_and_covers_each_utterance_once(adapters, corpus,
                                                                    monkeypatch):
    seen = []
    real_load = decode.load_batch

    def recording_load(utterances):
        seen.append([u.id for u in utterances])
        return real_load(utterances)

    monkeypatch.setattr(decode, "load_batch", recording_load)
    utterances = read_utterances(corpus)
    result = transcribe(adapters["student"], utterances, batch_size=3,
                               max_new_tokens=2, progress=False)
    duration = {u.id: u.duration for u in utterances}
    order = [i for batch in seen for i in batch]
    assert [len(b) for b in seen] == [3, 3, 3, 1]
    assert sorted(order) == sorted(duration) and len(order) == len(set(order))
    assert [duration[i] for i in order] == sorted(duration.values(), reverse=True)
    assert order != [u.id for u in utterances]  # the manifest is not in duration order
    assert [p.utterance.id for p in result.transcripts] == [u.id for u in utterances]
    assert result.batches == 4 and result.decode_seconds > 0


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_predictions_do_not_depend_on_the_batch_size(adapters, corpus, name):
    utterances = read_utterances(corpus)

    def predictions(batch_size):
        result = transcribe(adapters[name], utterances, batch_size=batch_size,
                                   max_new_tokens=MAX_NEW, progress=False)
        return [(p.text, p.tokens, p.stopped) for p in result.transcripts]

    alone = predictions(1)
    assert predictions(4) == alone
    assert len({text for text, _, _ in alone}) > len(alone) // 2  # the check has teeth


def test_language_hint_sets_the_prompt_language(adapters, corpus, monkeypatch):
    adapter = adapters["teacher"]
    utterances = read_utterances(corpus)
    asked = []
    real_generate = adapter.generate

    def recording_generate(audios, languages, **kwargs):
        asked.extend(languages)
        return real_generate(audios, languages, **kwargs)

    monkeypatch.setattr(adapter, "generate", recording_generate)
    transcribe(adapter, utterances, batch_size=10, max_new_tokens=1, progress=False)
    by_duration = sorted(utterances, key=lambda u: -u.duration)
    assert asked == [u.language for u in by_duration] and set(asked) == {"zh", "en"}
    asked.clear()
    transcribe(adapter, utterances, batch_size=10, max_new_tokens=1,
                      language_hint=False, progress=False)
    assert asked == [None] * len(utterances)


def test_any_model_failure_is_an_error_naming_the_batch(adapters, corpus, monkeypatch):
    adapter = adapters["student"]
    utterances = read_utterances(corpus)
    batches = [[u.id for u in b] for b in duration_sorted_batches(utterances, 4)]
    real_generate = adapter.generate
    calls = []

    def failing_generate(audios, languages, **kwargs):
        calls.append(len(audios))
        if len(calls) == 2:
            raise RuntimeError("device fell over")
        return real_generate(audios, languages, **kwargs)

    monkeypatch.setattr(adapter, "generate", failing_generate)
    with pytest.raises(DecodeError, match="RuntimeError: device fell over") as caught:
        transcribe(adapter, utterances, batch_size=4, max_new_tokens=2, progress=False)
    assert caught.value.ids == batches[1]
    assert ", ".join(batches[1]) in str(caught.value)
    assert len(calls) == 2  # decoding stopped at the failed batch

    # A model that silently drops a row is a failure too, never an empty prediction.
    monkeypatch.setattr(adapter, "generate",
                        lambda audios, languages, **kw: real_generate(audios, languages,
                                                                      **kw)[:-1])
    with pytest.raises(DecodeError, match="returned 3 responses for 4 clips") as caught:
        transcribe(adapter, utterances, batch_size=4, max_new_tokens=2, progress=False)
    assert caught.value.ids == batches[0]


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_loader_processes_encode_every_clip_and_decode_the_same(adapters, corpus, name,
                                                                monkeypatch):
    """With loader workers each batch is read and encoded in forked processes: the decoding
    process encodes nothing, the transcripts are those of in-process encoding (features on the
    CPU either way here), and nothing is kept once the batches are gone."""
    adapter = adapters[name]
    utterances = read_utterances(corpus)
    plain = transcribe(adapter, utterances, batch_size=4, max_new_tokens=MAX_NEW,
                       progress=False).transcripts
    encoded_here = []
    real_encode = adapter._encode_clip

    def recording_encode(audio, language, **kwargs):
        encoded_here.append(os.getpid())  # the forked loaders append to their own copies
        return real_encode(audio, language, **kwargs)

    monkeypatch.setattr(adapter, "_encode_clip", recording_encode)
    loaded = transcribe(adapter, utterances, batch_size=4, max_new_tokens=MAX_NEW,
                        progress=False, loader_workers=2).transcripts
    assert [(t.text, t.tokens, t.stopped) for t in loaded] == [
        (t.text, t.tokens, t.stopped) for t in plain]
    assert encoded_here == []
    gc.collect()
    assert len(adapter._encodings) == 0


def test_a_loader_process_error_reaches_its_batch_unchanged(adapters, corpus, monkeypatch):
    adapter = adapters["student"]
    utterances = read_utterances(corpus)
    batches = [[u.id for u in b] for b in duration_sorted_batches(utterances, 4)]
    real_encode = adapter._encode_clip

    def failing_encode(audio, language, **kwargs):
        if len(audio) < 16000 * 0.7:  # the 0.6 s clip, in the last (shortest) batch
            raise ValueError("feature extractor fell over")
        return real_encode(audio, language, **kwargs)

    monkeypatch.setattr(adapter, "_encode_clip", failing_encode)
    with pytest.raises(DecodeError, match=r"ValueError: feature extractor fell over\.") as caught:
        transcribe(adapter, utterances, batch_size=4, max_new_tokens=2, progress=False,
                   loader_workers=2)
    assert caught.value.ids == batches[-1]
