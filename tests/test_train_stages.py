"""The training stages: stages.sft, stages.calibrate, stages.train_opd (and hf_save, session).

A module fixture synthesizes a small speech corpus (espeak-ng, 16 clips in 3 languages),
validates it and builds very small demo models. In-process runs cover SFT (resume, learning,
export, its file modes, a changed schedule, the run lock, the history at --max-steps, the
command of the divergence message), calibration (a sane pair passes, an unmappable teacher
fails) and train_opd's calibration gate (also a stale one); the slow tests run train_opd in
subprocesses: 2 ranks (torchrun, gloo) against 1 rank, and a SIGKILL mid-training followed by a
bitwise-identical resume.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoProcessor

from stages import calibrate, sft, train_opd
from stages.common.errors import UserError
from stages.common.jsonl import read_jsonl, write_jsonl
from stages.common.settings import settings_from_args
from stages.data.validation import Settings, validate_manifest
from stages.demo.corpus import SPLITS, build_corpus
from stages.demo.tiny import build_tiny_models
from stages.models import load_adapter
from stages.opd.calibration import require_calibration
from stages.opd.config import OpdConfig
from stages.opd.identity import settings_fingerprint
from stages.train import TrainingDiverged, latest_checkpoint, load_model_weights
from tests.helpers import (
    assert_computes_like,
    assert_identical,
    checkpoint_tensors,
    hold_run_lock,
    launch,
    metric_rows,
    ok,
    stage,
)

pytestmark = pytest.mark.usefixtures("one_thread")

KILL_DRIVER = Path(__file__).with_name("stage_kill_driver.py")
SPEC = {
    "vocab_size": 400, "vocab_multiple": 64, "chunk_seconds": 4,
    "teacher": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                "intermediate_size": 128, "audio_hidden_size": 64, "audio_layers": 2,
                "audio_heads": 4, "audio_ffn_size": 128, "audio_conv_channels": 16},
    "student": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
                "intermediate_size": 128, "audio_hidden_size": 64, "audio_layers": 2,
                "audio_heads": 4},
}
# Thresholds a random-weight pair meets (its rollouts never stop): the mechanics are tested.
LENIENT = ["--min-stopped-ratio", "0", "--min-nonempty-ratio", "0", "--max-initial-loss", "1e6",
           "--min-vuss", "2"]
OPD_SMALL = ["--max-new-tokens", "6", "--top-k", "8"]
LOOP = ["--threads", "1", "--no-tensorboard"]


def demo_training_data(root: Path) -> dict[str, Path]:
    """16 validated demo training clips (en, zh, de) and the tiny models built on them, under
    ``root``: ``train``, ``teacher`` and ``student`` paths (and ``root``)."""
    sizes = {split: 0 for split in SPLITS} | {"train": 16}
    build_corpus(root / "corpus", sizes, seed=7, train_languages=["en", "zh", "de"],
                 progress=False)
    train = root / "data" / "train.jsonl"
    validate_manifest(root / "corpus" / "manifests" / "train.jsonl", train,
                      root / "data" / "train.report.json",
                      Settings(manifest_dir=str(root / "corpus" / "manifests")), progress=False)
    build_tiny_models([train], root / "tiny", SPEC, seed=0)
    return {"root": root, "train": train, "teacher": root / "tiny" / "teacher_init",
            "student": root / "tiny" / "student_init"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    return demo_training_data(tmp_path_factory.mktemp("train_stages"))


def sft_args(demo, out: Path, *extra) -> list:
    return ["--model", demo["student"], "--train", demo["train"], "--output-dir", out,
            "--batch-size", 4, "--lr", 3e-3, "--warmup-steps", 1, "--schedule", "constant",
            *LOOP, *extra]


# ---- SFT ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft_runs(demo) -> dict[str, Path]:
    """An uninterrupted 4-step SFT run (exported), and one stopped after 2 and resumed."""
    root = demo["root"] / "sft"
    full, split = root / "full", root / "split"
    assert stage(sft, sft_args(demo, full, "--max-steps", 4, "--save-every", 2,
                               "--export-dir", root / "export")) == 0
    assert stage(sft, sft_args(demo, split, "--max-steps", 2, "--save-every", 1)) == 0
    assert stage(sft, sft_args(demo, split, "--max-steps", 4, "--save-every", 2,
                               "--resume", "latest")) == 0
    return {"full": full, "split": split, "export": root / "export"}


def test_sft_resume_latest_continues_bitwise(sft_runs, tmp_path):
    full, split = metric_rows(sft_runs["full"]), metric_rows(sft_runs["split"])
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    assert [r["loss"] for r in split] == [r["loss"] for r in full]
    assert all(r["tokens"] > 0 and r["acc"] is not None for r in full)
    summary = json.loads((sft_runs["split"] / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["steps_this_run"] == 2
    assert summary["resumed_from"].endswith("step_00000002")
    assert summary["final_loss"] == split[-1]["loss"]
    assert summary["export_dir"] is None and "provenance" in summary
    assert_identical(checkpoint_tensors(sft_runs["full"] / "checkpoints" / "step_00000004",
                                        tmp_path),
                     checkpoint_tensors(sft_runs["split"] / "checkpoints" / "step_00000004",
                                        tmp_path))


def test_sft_refuses_or_sets_aside_checkpoints_of_other_settings(demo, sft_runs, tmp_path,
                                                                  capsys):
    assert stage(sft, sft_args(demo, sft_runs["split"], "--max-steps", 5,
                               "--weight-decay", 0.1)) == 1
    assert "written with other settings" in capsys.readouterr().err
    assert stage(sft, sft_args(demo, sft_runs["split"], "--max-steps", 5, "--lr", 1e-3)) == 1
    err = capsys.readouterr().err
    assert ("was trained with another learning-rate schedule (lr 0.003, warmup 1, constant; "
            "this run: lr 0.001, warmup 1, constant). Pass --resume-with-new-schedule") in err

    out = tmp_path / "run"
    assert stage(sft, sft_args(demo, out, "--max-steps", 1)) == 0
    assert stage(sft, sft_args(demo, out, "--max-steps", 1, "--lr", 1e-3,
                               "--stale-checkpoints", "set-aside")) == 0
    aside = list(tmp_path.glob("run/checkpoints.stale-*"))
    assert len(aside) == 1 and (aside[0] / "step_00000001").is_dir()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps_this_run"] == 1
    rows = metric_rows(out)
    assert [r["step"] for r in rows if "event" not in r] == [1]  # the stale run's rows are gone
    assert [(r["step"], r["event"]) for r in rows if "event" in r] == [
        (0, "checkpoint_set_aside")]


def test_sft_export_is_readable_by_everyone(sft_runs):
    export = sft_runs["export"]
    modes = {str(p.relative_to(export)): p.stat().st_mode & 0o777 for p in export.rglob("*")}
    assert modes["model.safetensors"] == 0o644  # safetensors alone writes 0600
    assert {m for name, m in modes.items() if (export / name).is_file()} == {0o644}
    assert export.stat().st_mode & 0o777 == 0o755


def test_sft_second_writer_is_refused(demo, tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_run_lock(out)
    try:
        assert stage(sft, sft_args(demo, out, "--max-steps", 1)) == 1
        err = capsys.readouterr().err
        assert f"error: {out} is being written by another run (host " in err
        assert f"pid {holder.pid}, started " in err and "lock file" in err
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert stage(sft, sft_args(demo, out, "--max-steps", 1)) == 0  # the dead holder's lock
    assert f"process {holder.pid} is gone" in capsys.readouterr().err
    assert not (out / "run.lock").exists()  # released at the end


def test_sft_resume_at_max_steps_restores_history_and_summary(demo, sft_runs, tmp_path):
    out = tmp_path / "full"
    shutil.copytree(sft_runs["full"], out)
    rows = metric_rows(out)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert stage(sft, sft_args(demo, out, "--max-steps", 4, "--save-every", 2)) == 0
    assert metric_rows(out) == rows
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["final_loss"] == rows[-1]["loss"] and summary["first_loss"] == rows[0]["loss"]
    assert (summary["steps"], summary["steps_this_run"]) == (4, 0)


def test_sft_divergence_message_gives_the_command_that_resumes(demo, tmp_path):
    out = tmp_path / "run"

    def diverge(step, row):
        if step == 3:
            raise TrainingDiverged("3 consecutive steps skipped (test)")

    args = sft_args(demo, out, "--max-steps", 4, "--save-every", 2)
    settings = settings_from_args(sft.SftRun, sft.build_parser().parse_args(map(str, args)))
    with pytest.raises(TrainingDiverged) as err:
        sft.run(settings, hooks=[diverge])
    message = str(err.value)
    assert "To resume the last checkpoint at half the learning rate:\n  python -m stages.sft " \
        in message
    command = shlex.split(message.rsplit("\n  ", 1)[1])
    assert command[:3] == ["python", "-m", "stages.sft"]
    assert command[command.index("--lr") + 1] == "0.0015"
    assert "--resume-with-new-schedule" in command

    assert stage(sft, command[3:]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoints" / "step_00000002")
    rows = metric_rows(out)
    assert [r["step"] for r in rows if "event" not in r] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows if "event" not in r] == [3e-3, 3e-3, 1.5e-3, 1.5e-3]
    assert [r["event"] for r in rows if "event" in r] == ["schedule_changed"]


def test_sft_loss_decreases_on_tiny_overfit_set(demo, tmp_path):
    small = tmp_path / "four.jsonl"
    write_jsonl(small, read_jsonl(demo["train"])[:4])
    out = tmp_path / "overfit"
    assert stage(sft, ["--model", demo["student"], "--train", small, "--output-dir", out,
                       "--batch-size", 4, "--lr", 1e-2, "--warmup-steps", 2, "--max-steps", 30,
                       "--schedule", "constant", "--save-every", 30, *LOOP]) == 0
    rows = metric_rows(out)
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-3:]) < 0.4 * np.mean(losses[:3]), losses
    assert rows[-1]["acc"] >= rows[0]["acc"] + 0.4, [r["acc"] for r in rows]


def test_sft_export_reloads_with_auto_classes_and_same_logits(demo, sft_runs):
    export = sft_runs["export"]
    base = demo["student"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "processor_config.json", "generation_config.json"):
        assert (export / name).read_bytes() == (base / name).read_bytes(), name
    assert (export / "model.safetensors").is_file()
    assert not list(export.parent.glob(".export*"))  # no staging folder left behind

    model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
    processor = AutoProcessor.from_pretrained(export)
    trained = load_adapter(str(base))
    load_model_weights(sft_runs["full"] / "checkpoints" / "step_00000004", trained.model)
    initial = load_adapter(str(base))
    assert_computes_like(type(trained)(model, processor), trained, initial, seed=0)


# ---- calibration ----------------------------------------------------------------------------

def calibrate_args(demo, output: Path, teacher: Path, *extra) -> list:
    return ["--student", demo["student"], "--teacher", teacher, "--train", demo["train"],
            "--output", output, "--batches", 2, "--batch-size", 4, "--threads", 1,
            *OPD_SMALL, *extra]


@pytest.fixture(scope="module")
def calibration(demo) -> Path:
    output = demo["root"] / "calibrate" / "calibration.json"
    assert stage(calibrate, calibrate_args(demo, output, demo["teacher"], *LENIENT)) == 0
    return output


def test_calibration_passes_on_a_sane_pair(calibration):
    report = json.loads(calibration.read_text())
    assert report["passed"] is True and report["failed"] == []
    names = {c["name"] for c in report["checks"]}
    assert names == {"vocab_coverage", "teacher_languages", "loss_finite", "nonempty_ratio",
                     "stopped_ratio", "unmapped_fraction", "initial_loss", "vuss"}
    metrics = report["metrics"]
    assert metrics["rows"] == 8 and metrics["positions"] > 0
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert metrics["vuss"] == metrics["opd_valid_topk_mean"] >= 8  # the union holds k ids
    assert metrics["unmapped_tokens"] == 0
    assert sum(metrics["languages"].values()) == 8
    assert metrics["language_sources"]["manifest"] == 8
    assert report["vocabulary"]["in_play_fraction"] == 1.0
    assert report["thresholds"]["min_stopped_ratio"] == 0
    assert len(report["timings"]["batch_seconds"]) == 2
    assert report["opd"]["top_k"] == 8 and "provenance" in report
    assert not calibration.with_name("calibration.failed.json").exists()


def test_calibration_default_thresholds_fail_a_random_student(demo, tmp_path, capsys):
    output = tmp_path / "calibration.json"
    output.write_text("{}")  # stale file from an earlier run: must not survive a failure
    assert stage(calibrate, calibrate_args(demo, output, demo["teacher"])) == 1
    err = capsys.readouterr().err
    assert "stopped_ratio" in err and "calibration.failed.json" in err
    assert not output.exists()
    report = json.loads((tmp_path / "calibration.failed.json").read_text())
    assert report["passed"] is False and "stopped_ratio" in report["failed"]


def test_calibration_fails_on_an_unmappable_teacher(demo, tmp_path, capsys):
    # A teacher with its own tokenizer: byte-level BPE trained on other text, so most of the
    # student's merged tokens have no counterpart.
    other = tmp_path / "other_corpus.jsonl"
    write_jsonl(other, ({"audio": "x.wav", "text": t}
                        for t in ["zzqx vvkj", "qqq www eee", "xyzzy plugh"] * 3))
    build_tiny_models([other], tmp_path / "other", SPEC | {"vocab_size": 290}, seed=3)
    output = tmp_path / "calibration.json"
    assert stage(calibrate, calibrate_args(demo, output, tmp_path / "other" / "teacher_init",
                                           *LENIENT)) == 1
    err = capsys.readouterr().err
    assert "vocab_coverage" in err and "do not share enough tokens" in err
    assert not output.exists()
    report = json.loads((tmp_path / "calibration.failed.json").read_text())
    assert report["failed"] == ["vocab_coverage"]
    assert report["vocabulary"]["in_play_fraction"] < 0.95
    assert report["metrics"] == {}  # the forward passes are skipped


def test_calibration_of_a_pool_without_transcripts(demo, tmp_path):
    # OPD needs no reference text: a manifest without any still calibrates, its coverage taken
    # over the stop token (the rollouts' tokens are the unmapped_fraction check).
    pool = tmp_path / "pool.jsonl"
    rows = [json.loads(line) for line in demo["train"].read_text().splitlines()]
    write_jsonl(pool, ({k: v for k, v in row.items() if k != "text"} for row in rows))
    output = tmp_path / "calibration.json"
    args = calibrate_args(demo, output, demo["teacher"], *LENIENT)
    args[args.index("--train") + 1] = pool
    assert stage(calibrate, args) == 0
    report = json.loads(output.read_text())
    assert report["passed"] is True
    assert report["vocabulary"]["transcripts_tokenized"] == 0
    assert report["vocabulary"]["in_play_fraction"] == 1.0
    assert report["metrics"]["rows"] == 8 and report["metrics"]["positions"] > 0


# ---- train_opd ------------------------------------------------------------------------------

def test_vuss_by_k_measures_the_shared_top_k(demo, tmp_path):
    """benchmarks/vuss_by_k: a model against itself shares its whole top-k at every k (VUSS =
    overlap = k, top-1 agreement 1); another student's union lies between k and 2k ids."""
    from benchmarks import vuss_by_k

    out = tmp_path / "vuss.json"
    args = vuss_by_k.build_parser().parse_args([
        "--teacher", str(demo["teacher"]), "--student", f"self={demo['teacher']}",
        "--student", f"other={demo['student']}", "--manifest", str(demo["train"]),
        "--ks", "2", "8", "--batches", "2", "--batch-size", "4", "--max-new-tokens", "6",
        "--threads", "1", "--json", str(out)])
    assert vuss_by_k.main(args) == 0
    rows = {(r["student"], r["k"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("self", 2), ("self", 8), ("other", 2), ("other", 8)}
    for k in (2, 8):
        itself, other = rows["self", k], rows["other", k]
        assert itself["positions"] > 0 and other["positions"] > 0
        assert itself["vuss"] == pytest.approx(k) and itself["overlap"] == pytest.approx(k)
        assert itself["top1_agree"] == pytest.approx(1.0)
        assert k <= other["vuss"] <= 2 * k
        assert other["overlap"] == pytest.approx(2 * k - other["vuss"])
        assert other["overlap"] >= other["top1_agree"] - 1e-9  # an agreeing top-1 is shared
    for student in ("self", "other"):  # a larger k's union holds more of the teacher's mass
        assert 0 < rows[student, 2]["teacher_mass"] < rows[student, 8]["teacher_mass"] <= 1


def opd_args(demo, calibration: Path, out: Path, *extra) -> list:
    return ["--student", demo["student"], "--teacher", demo["teacher"], "--train", demo["train"],
            "--calibration", calibration, "--output-dir", out, "--batch-size", 4,
            "--lr", 1e-3, "--warmup-steps", 1, *OPD_SMALL, *LOOP, *extra]


def test_train_opd_refuses_missing_failed_or_foreign_calibration(demo, calibration, tmp_path,
                                                                 capsys):
    out = tmp_path / "opd"
    assert stage(train_opd, opd_args(demo, tmp_path / "none.json", out, "--max-steps", 1)) == 1
    assert "no calibration report" in capsys.readouterr().err

    failed = json.loads(calibration.read_text()) | {"passed": False, "failed": ["vuss"]}
    (tmp_path / "calibration.failed.json").write_text(json.dumps(failed))
    (tmp_path / "calibration.json").unlink(missing_ok=True)
    assert stage(train_opd, opd_args(demo, tmp_path / "calibration.json", out,
                                     "--max-steps", 1)) == 1
    assert "calibration ran and failed" in capsys.readouterr().err
    assert stage(train_opd, opd_args(demo, tmp_path / "calibration.failed.json", out,
                                     "--max-steps", 1)) == 1
    assert "did not pass (failed: vuss)" in capsys.readouterr().err

    args = opd_args(demo, calibration, out, "--max-steps", 1)
    args[args.index("--student") + 1] = demo["teacher"]
    assert stage(train_opd, args) == 1
    assert "calibrate this pair first" in capsys.readouterr().err
    assert not out.exists()  # nothing started


def test_train_opd_refuses_a_stale_calibration(demo, tmp_path, capsys):
    student = tmp_path / "student"
    shutil.copytree(demo["student"], student)
    output = tmp_path / "calibration.json"
    assert stage(calibrate, calibrate_args(demo, output, demo["teacher"], *LENIENT,
                                           "--student", student)) == 0
    report = json.loads(output.read_text())
    assert len(report["student"]["weights_sha256"]) == 64
    assert report["opd_settings_sha256"] == settings_fingerprint(OpdConfig(top_k=8,
                                                                           max_new_tokens=6))
    out = tmp_path / "opd"

    def opd(*extra):
        args = opd_args(demo, output, out, "--max-steps", 1, *extra)
        args[args.index("--student") + 1] = student
        return stage(train_opd, args)

    assert opd("--top-k", 4) == 1  # the checks were made at k = 8
    err = capsys.readouterr().err
    assert f"error: {output}: calibrated with other OPD step settings (top_k 8 then, 4 now)" in err
    # the same bytes elsewhere are the same model; another --reshard-during-decode is no change
    copy = tmp_path / "copy"
    shutil.copytree(student, copy)
    cfg = OpdConfig(top_k=8, max_new_tokens=6, reshard_during_decode=True)
    assert require_calibration(output, str(copy), str(demo["teacher"]), cfg) == report

    retrained = load_adapter(str(student))  # the student changes in place: same path
    with torch.no_grad():
        next(retrained.model.parameters()).add_(1e-3)
    retrained.model.save_pretrained(student)
    assert opd() == 1
    err = capsys.readouterr().err
    assert f"the student '{student}' is not the one calibrated (its weights changed since " in err
    assert "snakemake --forcerun calibrate" in err
    assert not out.exists()  # nothing started
    del report["teacher"]["weights_sha256"]  # a report of an older version
    output.write_text(json.dumps(report))
    with pytest.raises(UserError, match="records no fingerprint of the teacher's weights"):
        require_calibration(output, str(copy), str(demo["teacher"]), cfg)


@pytest.mark.slow
def test_train_opd_two_ranks_match_one_rank(demo, calibration, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--max-steps", 3, "--save-every", 3]
    ok(launch(["-m", "stages.train_opd", *opd_args(demo, calibration, one, *common,
                                                   "--export-dir", tmp_path / "model")]))
    ok(launch(["-m", "stages.train_opd", *opd_args(demo, calibration, two, *common)], ranks=2))
    single, double = metric_rows(one), metric_rows(two)
    assert [r["step"] for r in single] == [r["step"] for r in double] == [1, 2, 3]
    for a, b in zip(single, double, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
        for key in ("units", "positions_used", "rows", "tokens", "lr", "lang_en", "lang_zh"):
            assert a.get(key) == b.get(key), key
        assert a["vuss"] == pytest.approx(b["vuss"], abs=1e-5)
    assert single[0]["rows"] == 4 and single[0]["positions_used"] > 0
    for key in ("opd_valid_topk_mean", "top1_agree", "teacher_mass", "stopped", "nonempty",
                "rollout_len", "unmapped_tokens", "time_rollout", "time_teacher",
                "time_student", "time_loss", "time_backward", "time_optimizer"):
        assert key in single[0], key
    summary = json.loads((one / "train_summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 3
    assert summary["calibration_loss"] is not None
    assert json.loads((two / "train_summary.json").read_text())["world_size"] == 2
    assert (tmp_path / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_train_opd_sigkill_resumes_bitwise(demo, tmp_path):
    # Sampled rollouts: the resumed run must also draw the same samples. The calibration must
    # have checked sampled rollouts too.
    calibration = tmp_path / "calibration.json"
    assert stage(calibrate, calibrate_args(demo, calibration, demo["teacher"], *LENIENT,
                                           "--sample")) == 0
    common = ["--max-steps", 5, "--save-every", 2, "--sample"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ok(launch(["-m", "stages.train_opd", *opd_args(demo, calibration, reference, *common)]))
    proc = launch([KILL_DRIVER, "train_opd", "--kill-after-step", 3, "--",
                   *opd_args(demo, calibration, killed, *common)])
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(killed / "checkpoints") == killed / "checkpoints" / "step_00000002"
    assert [r["step"] for r in metric_rows(killed)] == [1, 2, 3]
    assert not (killed / "train_summary.json").exists()

    ok(launch(["-m", "stages.train_opd",
               *opd_args(demo, calibration, killed, *common, "--resume", "latest")]))
    final, expected = metric_rows(killed), metric_rows(reference)
    assert [r["step"] for r in final] == [1, 2, 3, 4, 5]
    for a, b in zip(expected, final, strict=True):
        for key in ("loss", "grad_norm", "lr", "units", "tokens", "rollout_len"):
            assert a[key] == b[key], (a["step"], key)
    assert_identical(checkpoint_tensors(reference / "checkpoints" / "step_00000005", tmp_path),
                     checkpoint_tensors(killed / "checkpoints" / "step_00000005", tmp_path))
