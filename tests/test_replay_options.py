"""benchmarks.replay_options turns a run's train_summary.json back into its stage options."""

from __future__ import annotations

import pytest

from benchmarks.replay_options import as_options, replayed_settings

SUMMARY = {
    "steps": 200, "calibration": "results/calibrate/base@seed0/calibration.json",
    "settings": {"lr": 0.0005, "sample": False, "keep_stop_token": True, "student_family": None,
                 "input_fingerprints": {"student": "7fa27e4e"}},
}


def test_a_run_replays_its_settings_steps_and_calibration():
    assert as_options(replayed_settings(SUMMARY, [])) == [
        "--lr", "0.0005", "--no-sample", "--keep-stop-token", "--max-steps", "200",
        "--calibration", "results/calibrate/base@seed0/calibration.json"]


def test_replacements_override_and_spell_booleans():
    options = as_options(replayed_settings(SUMMARY, ["lr=0.0002", "sample=true", "seed=1"]))
    assert options[:3] == ["--lr", "0.0002", "--sample"]
    assert options[-2:] == ["--seed", "1"]


def test_an_sft_run_has_no_calibration():
    summary = {"steps": 100, "settings": {"train": "td.jsonl", "trust_remote_code": False}}
    assert as_options(replayed_settings(summary, [])) == [
        "--train", "td.jsonl", "--no-trust-remote-code", "--max-steps", "100"]


def test_a_replacement_without_a_value_is_refused():
    with pytest.raises(SystemExit, match="'lr' is not KEY=VALUE"):
        replayed_settings(SUMMARY, ["lr"])
