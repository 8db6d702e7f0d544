"""The data part of the demo DAG end to end: synthesize a small corpus, validate every manifest."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.slow


def test_demo_data_dag(tmp_path, venv_env):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["output_dir"] = str(tmp_path / "results")
    config["demo"]["sizes"] = {"train": 12, "td_pool": 6, "aishell": 3, "meeting": 3, "net": 3,
                               "clean": 3, "other": 3}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    targets = [f"{config['output_dir']}/data/{name}.report.md" for name in config["demo"]["sizes"]]
    result = subprocess.run(
        [str(BIN / "snakemake"), *targets, "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(ROOT), "--cores", "2", "--configfile", str(config_path)],
        cwd=ROOT, env=venv_env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "results"
    for name, size in config["demo"]["sizes"].items():
        report = json.loads((out / "data" / f"{name}.report.json").read_text())
        assert report["total"] == size and report["valid"] == size and report["rejected"] == []
        lines = (out / "data" / f"{name}.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert len(rows) == size
        assert all(row["audio"].startswith("/") and row["duration"] > 0.2 for row in rows)
        assert (out / "logs" / "validate" / f"{name}.log").exists()
    corpus = json.loads((out / "demo" / "corpus.json").read_text())
    assert "provenance" in corpus
