"""The whole demo DAG end to end on a small config: every rule runs, every output exists, and the
report's table has a number in every cell. Small sizes and few steps: this checks the wiring,
not the accuracy (the README records the full demo's numbers)."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
import yaml

from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.slow

PRESETS = ["aishell", "meeting", "net", "clean", "other"]
# Rows of the report; the trained ones are evaluated once per seed (config `seeds`: the demo's
# one seed, 0) under eval/<model>@seed<k>/.
MODELS = ["student_base", "opd_base", "opd_td_adapted", "teacher"]
SEED = 0
EVALUATIONS = ["student_base", f"opd_base@seed{SEED}", f"opd_td_adapted@seed{SEED}", "teacher"]


def small_config(out: str) -> dict:
    """Overrides of the demo's config (config/config.yaml + config/demo.yaml)."""
    role = {"warmup_steps": 2}
    return {
        "output_dir": out,
        "demo": {"sizes": {"train": 24, "td_pool": 12, **{p: 4 for p in PRESETS}}},
        "bootstrap": {"teacher": {**role, "max_steps": 12}, "student_base": {**role,
                                                                            "max_steps": 8},
                      "save_every": 6},
        "td_adapt": {"max_steps": 4, "warmup_steps": 1, "save_every": 2, "batch_size": 4},
        "opd": {"max_steps": 4, "warmup_steps": 1, "save_every": 2, "batch_size": 4,
                "step": {"max_new_tokens": 8}},
        # Barely trained models: the gates and filters must let them through so every rule runs.
        "calibrate": {"batches": 1, "batch_size": 4, "min_nonempty_ratio": 0,
                      "min_stopped_ratio": 0, "max_initial_loss": 1e9, "min_vuss": 0},
        "teacher_data": {"filters": ["empty"], "max_new_tokens": 8},
        "evaluate": {"max_new_tokens": 8},
        "export": {"probe_max_new_tokens": 4},
    }


def test_demo_dag_end_to_end(tmp_path, venv_env):
    out = tmp_path / "results"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(small_config(str(out))))
    result = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
         str(ROOT), "--cores", "2", "--configfile", str(config_path)],
        cwd=ROOT, env=venv_env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    for name in ["train", "td_pool", *PRESETS]:
        assert json.loads((out / "data" / f"{name}.report.json").read_text())["rejected"] == []
    for model in ["teacher", "student_base", f"student_td_adapted@seed{SEED}",
                  f"opd_base@seed{SEED}", f"opd_td_adapted@seed{SEED}"]:
        assert (out / "models" / model / "config.json").is_file(), model
    for recipe in ["base", "td_adapted"]:
        assert (out / "calibrate" / f"{recipe}@seed{SEED}" / "calibration.json").is_file()
        run = out / "train" / f"opd_{recipe}@seed{SEED}"
        metrics = (run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(row)["step"] for row in metrics] == [1, 2, 3, 4]
        card = (out / "models" / f"opd_{recipe}@seed{SEED}" / "README.md").read_text()
        assert "opd" in card.lower()
    td_rows = (out / "td" / "td.jsonl").read_text().splitlines()
    td_rejects = (out / "td" / "rejects.jsonl").read_text().splitlines()
    assert len(td_rows) + len(td_rejects) == 12  # every pool clip kept or rejected, none lost
    for model in EVALUATIONS:
        for preset in PRESETS:
            summary = json.loads((out / "eval" / model / f"summary_{preset}.json").read_text())
            assert summary["utterances"] == 4 and summary["rtfx"] > 0
            rows = (out / "eval" / model / f"test_{preset}.jsonl").read_text().splitlines()
            assert len(rows) == 4

    with (out / "report" / "results.csv").open() as handle:
        table = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(MODELS) <= set(table)
    for model in MODELS:
        for preset in PRESETS:
            cell = [value for key, value in table[model].items() if key.startswith(preset)]
            assert cell and cell[0] not in ("", "missing"), (model, preset, table[model])
            # An interval from the rows files, for every cell.
            assert table[model][f"{preset}_low"] and table[model][f"{preset}_high"]
    # The trained rows are the one seed's runs; the others are single evaluations.
    assert [table[m]["seeds"] for m in MODELS] == ["", str(SEED), str(SEED), ""]
    for png in ["error_rates.png", "training_curves.png", "td_filters.png"]:
        assert (out / "report" / png).stat().st_size > 1000
