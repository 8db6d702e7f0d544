"""A tiny Whisper student through the pipeline's stages: calibration against the demo's Qwen3-ASR
teacher, OPD on two gloo ranks killed and resumed bitwise, a verified export and an evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages import calibrate, evaluate, export
from stages.demo.sentences import LANGUAGES, generate_sentence
from stages.demo.tiny import save_dir
from stages.demo.tiny_whisper import build_whisper, train_whisper_tokenizer
from stages.train import latest_checkpoint
from tests.helpers import assert_identical, checkpoint_tensors, launch, metric_rows, ok, stage
from tests.test_train_stages import LENIENT, LOOP, OPD_SMALL, demo_training_data

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

KILL_DRIVER = Path(__file__).with_name("stage_kill_driver.py")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    data = demo_training_data(tmp_path_factory.mktemp("whisper_stages"))
    rng = np.random.default_rng(0)
    texts = [generate_sentence(LANGUAGES[i % len(LANGUAGES)], rng).text for i in range(400)]
    whisper = data["root"] / "whisper"
    save_dir(whisper, *build_whisper(train_whisper_tokenizer(texts, 600), seed=1))
    return {**data, "student": whisper}


def opd_args(demo, calibration: Path, out: Path, *extra) -> list:
    return ["--student", demo["student"], "--teacher", demo["teacher"], "--train", demo["train"],
            "--calibration", calibration, "--output-dir", out, "--batch-size", 4,
            "--lr", 1e-3, "--warmup-steps", 1, *OPD_SMALL, *LOOP, *extra]


def calibrate_args(demo, output: Path, *extra) -> list:
    return ["--student", demo["student"], "--teacher", demo["teacher"], "--train", demo["train"],
            "--output", output, "--batches", 2, "--batch-size", 4, "--threads", 1, *OPD_SMALL,
            *LENIENT, *extra]


# Two separately trained BPEs share only part of their tokens (measured: 63 of the 82 distinct
# Whisper tokens of the training transcripts have a teacher spelling), and a random student's
# rollouts are mostly tokens without one: the mechanics are tested, not the pair.
CROSS_TOKENIZER = ["--min-vocab-coverage", "0.6", "--max-unmapped-fraction", "1"]


@pytest.fixture(scope="module")
def calibration(demo) -> Path:
    output = demo["root"] / "calibration.json"
    assert stage(calibrate, calibrate_args(demo, output, *CROSS_TOKENIZER)) == 0
    return output


def test_low_coverage_across_tokenizers_is_refused_with_the_numbers(demo, tmp_path, capsys):
    assert stage(calibrate, calibrate_args(demo, tmp_path / "calibration.json")) == 1
    message = capsys.readouterr().err
    assert "do not share enough tokens" in message and "at least 95.0% needed" in message
    assert "Unmapped examples" in message and not (tmp_path / "calibration.json").exists()


def test_calibration_maps_the_whisper_vocabulary(calibration):
    report = json.loads(calibration.read_text())
    assert report["passed"] is True
    coverage = next(c for c in report["checks"] if c["name"] == "vocab_coverage")
    assert coverage["passed"] and 0.6 <= coverage["value"] < 0.95
    assert report["metrics"]["positions"] > 0


def test_two_ranks_killed_and_resumed_bitwise_then_exported_and_evaluated(demo, calibration,
                                                                          tmp_path):
    common = ["--max-steps", 4, "--save-every", 2]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ok(launch(["-m", "stages.train_opd", *opd_args(demo, calibration, reference, *common)],
              ranks=2))
    proc = launch([KILL_DRIVER, "train_opd", "--kill-after-step", 3, "--",
                   *opd_args(demo, calibration, killed, *common)], ranks=2)
    # torchrun reports its killed workers as a failure (exit 1), not as its own SIGKILL.
    assert proc.returncode != 0 and "Signal 9 (SIGKILL)" in proc.stderr
    assert latest_checkpoint(killed / "checkpoints") == killed / "checkpoints" / "step_00000002"
    ok(launch(["-m", "stages.train_opd",
               *opd_args(demo, calibration, killed, *common, "--resume", "latest")], ranks=2))
    final, expected = metric_rows(killed), metric_rows(reference)
    assert [r["step"] for r in final] == [1, 2, 3, 4]
    for a, b in zip(expected, final, strict=True):
        for key in ("loss", "grad_norm", "lr", "units", "tokens", "rollout_len"):
            assert a[key] == b[key], (a["step"], key)
    assert_identical(checkpoint_tensors(reference / "checkpoints" / "step_00000004", tmp_path),
                     checkpoint_tensors(killed / "checkpoints" / "step_00000004", tmp_path))

    exported = tmp_path / "exported"
    assert stage(export, ["--checkpoint", killed, "--output", exported,
                          "--probe-manifest", demo["train"], "--threads", 1]) == 0
    summary = json.loads((exported / "export_summary.json").read_text())
    assert summary["passed"] is True and summary["weights"]["differing"] == []
    assert json.loads((exported / "config.json").read_text())["model_type"] == "whisper"

    out = tmp_path / "eval"
    assert stage(evaluate, ["--model", exported, "--input", demo["train"],
                            "--output", out / "test_train.jsonl",
                            "--summary", out / "summary_train.json", "--metric", "wer",
                            "--normalizer", "en", "--max-new-tokens", 6, "--device", "cpu",
                            "--batch-size", 4]) == 0
    scored = json.loads((out / "summary_train.json").read_text())
    assert scored["utterances"] == 16 and scored["wer"] > 0
