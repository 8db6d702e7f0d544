"""The export stage: DCP checkpoint -> verified Hugging Face folder with a model card.

A module fixture trains a very small GLM-ASR-style student for two SFT steps on six noise clips
(real training, real DCP checkpoint), once with the tied embeddings of the demo models and once
from a copy whose config unties them. Exports are reloaded and compared with a reference the
test builds itself. A base whose architecture or weight tying does not match the run, and a
written folder that computes differently (a corrupted config), must fail the checks with exit
status 1 and leave no folder behind.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stages import export, sft
from stages.common.jsonl import write_jsonl
from stages.data.audio import write_wav
from stages.data.validation import Settings, validate_manifest
from stages.demo.tiny import build_tiny_models
from stages.models import load_adapter
from stages.train import checkpoint_export as export_lib
from stages.train import load_model_weights
from stages.train.checkpoint import read_meta
from stages.train.checkpoint_export import (
    compare_logits,
    model_card,
    resolve_checkpoint,
    synthetic_probe,
)
from tests.helpers import assert_computes_like, stage

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"vocab_size": 300, "vocab_multiple": 64, "chunk_seconds": 4,
        "teacher": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1,
                    "intermediate_size": 64, "audio_hidden_size": 32, "audio_layers": 1,
                    "audio_heads": 2, "audio_ffn_size": 64, "audio_conv_channels": 8},
        "student": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1,
                    "intermediate_size": 64, "audio_hidden_size": 32, "audio_layers": 1,
                    "audio_heads": 2}}
CLIPS = [("hello world", "en"), ("good morning", "en"), ("你好世界", "zh"), ("guten tag", "de"),
         ("open the door", "en"), ("再见朋友", "zh")]


def train(model: Path, manifest: Path, out: Path) -> Path:
    assert stage(sft, ["--model", model, "--train", manifest, "--output-dir", out,
                       "--batch-size", 2, "--lr", 1e-2, "--warmup-steps", 1,
                       "--schedule", "constant", "--max-steps", 2, "--save-every", 2,
                       "--threads", 1, "--no-tensorboard"]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    rows = []
    for index, (text, language) in enumerate(CLIPS):
        wav = root / f"clip{index}.wav"
        write_wav(wav, (0.1 * rng.standard_normal(16000 + 4000 * index)).astype(np.float32))
        rows.append({"audio": wav.name, "text": text, "language": language, "id": f"u{index}"})
    write_jsonl(root / "raw.jsonl", rows)
    manifest = root / "train.jsonl"
    validate_manifest(root / "raw.jsonl", manifest, root / "train.report.json",
                      Settings(manifest_dir=str(root)), progress=False)
    build_tiny_models([manifest], root / "tiny", TINY, seed=0)
    base = root / "tiny" / "student_init"
    untied = root / "untied_base"
    shutil.copytree(base, untied)
    config = json.loads((untied / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (untied / "config.json").write_text(json.dumps(config))
    return {"root": root, "manifest": manifest, "base": base, "untied": untied,
            "run": train(base, manifest, root / "run"),
            "untied_run": train(untied, manifest, root / "run_untied")}


def test_round_trip_reloads_with_equal_logits(runs, tmp_path):
    out = tmp_path / "exported"
    # --base left out: the run's train_summary.json names the base model. A private umask
    # (a cluster default) must not make the export unreadable to others.
    umask = os.umask(0o077)
    try:
        assert stage(export, ["--checkpoint", runs["run"], "--output", out,
                              "--probe-manifest", runs["manifest"], "--threads", 1]) == 0
    finally:
        os.umask(umask)
    for name in ("model.safetensors", "config.json", "generation_config.json",
                 "tokenizer.json", "chat_template.jinja",
                 "processor_config.json", "README.md", "export_summary.json"):
        assert (out / name).is_file(), name
    for name in ("tokenizer.json", "chat_template.jinja", "processor_config.json"):
        assert (out / name).read_bytes() == (runs["base"] / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no staging left
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    assert out.stat().st_mode & 0o777 == 0o755

    ckpt = runs["run"] / "checkpoints" / "step_00000002"
    trained = load_adapter(str(runs["base"]))
    load_model_weights(ckpt, trained.model)
    initial = load_adapter(str(runs["base"]))
    # The export holds the trained weights.
    assert_computes_like(load_adapter(str(out)), trained, initial, seed=1)

    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["passed"] is True and summary["failures"] == []
    assert summary["checkpoint"]["step"] == 2 and summary["checkpoint"]["path"] == str(ckpt)
    assert summary["weights"]["tensors"] > 10 and summary["weights"]["differing"] == []
    assert summary["probe"]["max_abs_diff"] == 0.0 and summary["probe"]["responses_equal"]
    assert summary["probe"]["clip_ids"] == ["u0", "u1", "u2", "u3"]
    assert summary["probe"]["positions"] == sum(summary["probe"]["response_lengths"]) > 0
    assert summary["base_model"] == str(runs["base"]) and "provenance" in summary


def test_model_card_has_provenance_and_results(runs, tmp_path):
    results = tmp_path / "eval"
    results.mkdir()
    (results / "summary_aishell.json").write_text(json.dumps(
        {"metric": "cer", "rate": 0.1234, "errors": 123, "ref_len": 997, "utterances": 40,
         "preset": "aishell", "model": "results/models/opd_base"}))
    out = tmp_path / "opd_base"
    ckpt = runs["run"] / "checkpoints" / "step_00000002"
    assert stage(export, ["--checkpoint", ckpt, "--base", runs["base"], "--output", out,
                          "--results-dir", results, "--threads", 1]) == 0
    card = (out / "README.md").read_text()
    meta = read_meta(ckpt)
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "# opd_base" in card
    assert f"| base model (architecture, processor, tokenizer) | `{runs['base']}` |" in card
    assert "| training stage | sft |" in card
    assert "| step (optimizer steps, skipped) | 2 (2, 0) |" in card
    assert f"| train config hash | `{meta['config_hash']}` |" in card
    assert f"| training git commit | `{meta['provenance']['git_commit']}` |" in card
    assert f"| torch | {torch.__version__} |" in card
    assert "logits: max |diff| 0 (tolerance 1e-05)" in card and "synthetic" in card
    assert "| aishell | cer | 12.34 | 123 / 997 | 40 |" in card
    assert f'load_adapter("{out}")' in card
    assert "base_model:" not in card  # a local folder is no hub reference

    summary = json.loads((out / "export_summary.json").read_text())
    summary["training"]["base_model"] = "org/asr-0.6b"
    hub_card = model_card(summary, summary["provenance"], name="opd_base")
    assert "\nbase_model: org/asr-0.6b\n---\n" in hub_card


def test_bfloat16_export_matches_exactly(runs, tmp_path):
    out = tmp_path / "bf16"
    assert stage(export, ["--checkpoint", runs["run"], "--output", out, "--dtype", "bfloat16",
                          "--tolerance", 0, "--threads", 1]) == 0
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["dtype"] == "bfloat16" and summary["probe"]["max_abs_diff"] == 0.0
    reloaded = load_adapter(str(out), dtype=torch.bfloat16)
    assert reloaded.model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_base_with_other_weight_tying_fails_with_the_numbers(runs, tmp_path, capsys):
    out = tmp_path / "mismatch"
    # The run trained separate input and output embeddings; the demo base ties them.
    assert stage(export, ["--checkpoint", runs["untied_run"], "--base", runs["base"],
                          "--output", out, "--threads", 1]) == 1
    err = capsys.readouterr().err
    assert "does not reproduce the checkpoint" in err
    assert "weights: 1 of" in err and "embed_tokens" in err
    assert not out.exists()
    report = json.loads((tmp_path / "mismatch.failed.json").read_text())
    assert report["passed"] is False and report["weights"]["max_abs_diff"] > 1e-3
    # with its own base it exports and verifies
    assert stage(export, ["--checkpoint", runs["untied_run"], "--output", out,
                          "--threads", 1]) == 0
    assert not (tmp_path / "mismatch.failed.json").exists()


def test_export_that_computes_differently_fails_the_logit_probe(runs, tmp_path, capsys,
                                                                monkeypatch):
    """A fault in the written folder that leaves every tensor intact (here: the saved config's
    norm epsilon changes) is caught by the logits probe."""
    original = export_lib.copy_side_files

    def copy_and_corrupt(base: Path, target: Path) -> list[str]:
        copied = original(base, target)
        config = json.loads((target / "config.json").read_text())
        config["text_config"]["rms_norm_eps"] = 0.5
        (target / "config.json").write_text(json.dumps(config))
        return copied

    monkeypatch.setattr(export_lib, "copy_side_files", copy_and_corrupt)
    out = tmp_path / "corrupt"
    assert stage(export, ["--checkpoint", runs["run"], "--output", out, "--threads", 1]) == 1
    err = capsys.readouterr().err
    assert "logits: max |diff|" in err and "tolerance 1e-05" in err
    assert not out.exists() and not list(tmp_path.glob(".corrupt*"))
    report = json.loads((tmp_path / "corrupt.failed.json").read_text())
    assert report["weights"]["passed"] is True
    assert report["probe"]["passed"] is False and report["probe"]["max_abs_diff"] > 1e-3


def test_base_with_other_architecture_fails(runs, tmp_path, capsys):
    wrong = tmp_path / "wrong_base"
    shutil.copytree(runs["base"], wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 96
    (wrong / "config.json").write_text(json.dumps(config))
    assert stage(export, ["--checkpoint", runs["run"], "--base", wrong,
                          "--output", tmp_path / "out", "--threads", 1]) == 1
    err = capsys.readouterr().err
    assert "does not fit the architecture" in err and "Size mismatch" in err
    assert not (tmp_path / "out").exists()


def test_logit_probe_detects_a_perturbed_model(runs):
    reference = load_adapter(str(runs["base"]))
    same = load_adapter(str(runs["base"]))
    probe = synthetic_probe(2)
    ok = compare_logits(reference, same, probe, max_new_tokens=4, tolerance=1e-5)
    assert ok["passed"] and ok["max_abs_diff"] == 0.0 and ok["clips"] == 2
    perturbed = type(same)(copy.deepcopy(same.model), same.processor)
    with torch.no_grad():
        perturbed.model.get_output_embeddings().weight.add_(1e-3)
    bad = compare_logits(reference, perturbed, probe, max_new_tokens=4, tolerance=1e-5)
    assert not bad["passed"] and bad["max_abs_diff"] > 1e-5


def test_checkpoint_resolution(runs, tmp_path, capsys):
    step = runs["run"] / "checkpoints" / "step_00000002"
    assert resolve_checkpoint(runs["run"]).path == step
    assert resolve_checkpoint(runs["run"] / "checkpoints").path == step
    found = resolve_checkpoint(step)
    assert found.step == 2 and found.recorded_base == str(runs["base"])
    (tmp_path / "empty").mkdir()
    assert stage(export, ["--checkpoint", tmp_path / "empty", "--output", tmp_path / "x"]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err
