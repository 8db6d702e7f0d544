"""The Snakemake workflow itself: formatting, lint, dry runs, schema and conda env agreement."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
import yaml

from tests.conftest import BIN, ROOT


def run(args, env, cwd=ROOT, check=True):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def snakemake(*args, env, cwd=ROOT, check=True):
    return run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args],
               env, cwd=cwd, check=check)


def test_snakefmt_clean(venv_env):
    run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"], venv_env)


def test_lint_clean(venv_env):
    result = snakemake("--lint", env=venv_env)
    output = result.stdout + result.stderr
    assert "Lints for" not in output, output
    assert "Congratulations" in output


def planned_jobs(output: str) -> dict[str, int]:
    """Job counts from the dry run's "Job stats" table."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_dry_run_plans_demo_dag(venv_env):
    # --forceall: plan the whole DAG even where an earlier `make demo` left results behind.
    result = snakemake("-n", "--forceall", "--quiet", "rules", env=venv_env)
    jobs = planned_jobs(result.stdout + result.stderr)
    assert jobs == {
        "synth_demo": 1, "validate": 7,  # one validation per manifest: train, td_pool, presets
        "tiny_models": 1, "bootstrap_teacher": 1, "bootstrap_student": 1,
        "teacher_data": 2, "td_merge": 1, "td_adapt": 1,  # two TD shards in the demo config
        "calibrate": 2, "train_opd": 2, "export": 2,  # recipes base and td_adapted
        "evaluate": 20,  # 4 models x 5 presets
        "report": 1, "all": 1,
    }


def test_every_rule_has_log_and_env(venv_env):
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for block in text.split("\nrule ")[1:]:
            name = block.split(":", 1)[0]
            if name == "all":
                continue
            assert "    log:" in block, f"{smk.name}: rule {name} has no log"
            assert "    conda:" in block, f"{smk.name}: rule {name} has no conda env"


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = sorted(project["project"]["dependencies"])
    env = yaml.safe_load((ROOT / "envs" / "audio-opd.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == wanted


def test_schema_rejects_bad_config(venv_env, tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["presets"]["aishell"]["metric"] = "bleu"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(bad), env=venv_env, check=False)
    assert result.returncode != 0
    assert "bleu" in result.stdout + result.stderr


@pytest.mark.parametrize("missing", ["train", "aishell", "teacher"])
def test_real_mode_requires_manifests(venv_env, tmp_path, missing):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["demo"]["enabled"] = False
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    config["manifests"] = {"train": str(manifest), "td_pool": str(manifest)}
    for preset in config["presets"].values():
        preset["manifest"] = str(manifest)
    config["models"].update(teacher="org/teacher-model", student_base="org/student-model")
    if missing == "teacher":
        config["models"]["teacher"] = None
        where = "models.teacher"
    elif missing == "train":
        config["manifests"]["train"] = None
        where = "manifests.train"
    else:
        config["presets"]["aishell"]["manifest"] = None
        where = "presets.aishell.manifest"
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(path), env=venv_env, check=False)
    assert result.returncode != 0
    assert f"{where} is not set" in result.stdout + result.stderr


def test_paper_recipe_plans_the_real_dag(venv_env, tmp_path):
    """The paper recipe validates and plans the real-model DAG once its manifests exist: no
    demo rules, 8-GPU torchrun training, the teacher and student given as hub ids."""
    recipe = yaml.safe_load((ROOT / "config" / "recipes" / "paper_ark_asr_0.6b.yaml").read_text())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    recipe["manifests"] = {"train": str(manifest), "td_pool": str(manifest)}
    for preset in recipe["presets"].values():
        preset["manifest"] = str(manifest)
    recipe["output_dir"] = str(tmp_path / "results")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = snakemake("-n", "--quiet", "rules", "--configfile", str(path), env=venv_env)
    jobs = planned_jobs(result.stdout + result.stderr)
    assert "synth_demo" not in jobs and "bootstrap_teacher" not in jobs
    assert jobs["teacher_data"] == 16 and jobs["evaluate"] == 20 and jobs["train_opd"] == 2
    shell = snakemake("-n", "-p", "--configfile", str(path), env=venv_env).stdout
    assert "torchrun --nnodes $SLURM_NNODES --nproc_per_node 8" in shell
    assert "--teacher Qwen/Qwen3-ASR-1.7B" in shell and "--top-k 32" in shell
