"""The Snakemake workflow itself: formatting, lint, dry runs, schema and conda env agreement."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, ROOT
from tests.dry_run import CORES, planned_jobs, stage_call


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


def job_counts(output: str) -> dict[str, int]:
    """Job counts from the dry run's "Job stats" table."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_dry_run_plans_demo_dag(venv_env):
    # --forceall: plan the whole DAG even where an earlier `make demo` left results behind.
    result = snakemake("-n", "--forceall", "--quiet", "rules", env=venv_env)
    jobs = job_counts(result.stdout + result.stderr)
    assert jobs == {
        "synth_demo": 1, "validate": 7,  # one validation per manifest: train, td_pool, presets
        "tiny_models": 1, "bootstrap": 2,  # the teacher and the student base
        "teacher_data": 2, "td_merge": 1, "td_adapt": 1,  # two TD shards in the demo config
        "calibrate": 2, "train_opd": 2, "export": 2,  # recipes base and td_adapted
        "evaluate": 4,  # 4 models, each on the 5 presets in one job
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


def paper_recipe(tmp_path):
    """The paper recipe with its manifests pointed at an (empty) file that exists."""
    recipe = yaml.safe_load((ROOT / "config" / "recipes" / "paper_ark_asr_0.6b.yaml").read_text())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    recipe["manifests"] = {"train": str(manifest), "td_pool": str(manifest)}
    for preset in recipe["presets"].values():
        preset["manifest"] = str(manifest)
    recipe["output_dir"] = str(tmp_path / "results")
    return recipe


def paper_recipe_with_sources(tmp_path):
    """The paper recipe as shipped, its five presets corpus sources, their paths pointed at
    (empty) folders that exist; the training manifests as in ``paper_recipe``."""
    recipe = yaml.safe_load((ROOT / "config" / "recipes" / "paper_ark_asr_0.6b.yaml").read_text())
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    recipe["manifests"] = {"train": str(manifest), "td_pool": str(manifest)}
    for preset in recipe["presets"].values():
        folder = tmp_path / "corpora" / preset["manifest"]["path"]
        folder.mkdir(parents=True, exist_ok=True)
        preset["manifest"]["path"] = str(folder)
    recipe["output_dir"] = str(tmp_path / "results")
    return recipe


def test_the_paper_recipe_prepares_its_five_benchmark_sets(venv_env, tmp_path):
    """Each preset of the paper recipe is a corpus source: the plan prepares its manifest from
    the corpus layout (the stage's own parser reads the job's options) and validates that."""
    recipe = paper_recipe_with_sources(tmp_path)
    config = merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), recipe)
    jobs = planned_jobs(venv_env, write_yaml(tmp_path / "recipe.yaml", recipe))
    calls = {rule: [stage_call(j.command)[1] for j in jobs if j.rule == rule]
             for rule in ("prepare", "validate")}
    for job in jobs:
        if job.rule in ("prepare", "validate"):
            check_job(job, config)
    prepared = {args.output.stem: args for args in calls["prepare"]}
    assert {name: (args.format, args.subset) for name, args in prepared.items()} == {
        "aishell": ("aishell", "test"), "meeting": ("wenetspeech", "TEST_MEETING"),
        "net": ("wenetspeech", "TEST_NET"), "clean": ("librispeech", "test-clean"),
        "other": ("librispeech", "test-other")}
    assert {args.source for args in calls["prepare"]} == {
        str(tmp_path / "corpora" / "data" / name)
        for name in ("data_aishell", "WenetSpeech", "LibriSpeech")}
    validated_from = {Path(args.output).stem: args.input for args in calls["validate"]}
    assert len(calls["validate"]) == 7
    assert {name: validated_from[name] for name in prepared} == {
        name: str(args.output) for name, args in prepared.items()}
    assert validated_from["train"] == validated_from["td_pool"] == str(tmp_path / "m.jsonl")


def test_paper_recipe_plans_the_real_dag(venv_env, tmp_path):
    """The paper recipe validates and plans the real-model DAG once its manifests exist: no
    demo rules, 8-GPU torchrun training, the teacher and student given as hub ids."""
    recipe = paper_recipe(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = snakemake("-n", "--quiet", "rules", "--configfile", str(path), env=venv_env)
    jobs = job_counts(result.stdout + result.stderr)
    assert "synth_demo" not in jobs and "bootstrap" not in jobs
    assert jobs["teacher_data"] == 16 and jobs["evaluate"] == 4 and jobs["train_opd"] == 2
    shell = snakemake("-n", "-p", "--configfile", str(path), env=venv_env).stdout
    # Training: one Slurm task per node (3), each a torchrun of 8 processes.
    assert "srun --nodes 3 --ntasks 3 " in shell
    assert ('-m torch.distributed.run --nnodes "$SLURM_NTASKS" --nproc_per_node 8 '
            '--rdzv_backend c10d --rdzv_id "$SLURM_JOB_ID" --rdzv_endpoint '
            '"$SLURM_LAUNCH_NODE_IPADDR:') in shell
    assert "--teacher Qwen/Qwen3-ASR-1.7B" in shell and "--top-k 32" in shell


# ---- one source per setting ------------------------------------------------------------------

def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("override, key", [
    ({"opdd": {"lr": 1e-3}}, "opdd"),
    ({"outputdir": "elsewhere"}, "outputdir"),
    ({"opd": {"step": {"top_kk": 8}}}, "top_kk"),
    ({"opd": {"seed": 3}}, "seed"),  # seeds are the top-level list `seeds`
    ({"teacher_data": {"max_ce": 0.2}}, "max_ce"),
    ({"bootstrap": {"teacher": {"learning_rate": 1.0}}}, "learning_rate"),
    ({"tiny_models": {"spec": {"student": {"layer": 2}}}}, "layer"),
    ({"presets": {"clean": {"manifest": {"format": "librispeech", "path": "LibriSpeech",
                                         "subst": "test-clean"}}}}, "subst"),
])
def test_a_misspelled_key_at_any_level_fails_the_dry_run(venv_env, tmp_path, override, key):
    result = snakemake("-n", "--configfile", str(write_yaml(tmp_path / "typo.yaml", override)),
                       env=venv_env, check=False)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr


def test_schema_holds_no_defaults_and_every_setting_has_one_value():
    """Values live in config.yaml alone (demo.yaml only re-tunes keys config.yaml has, plus the
    demo's own sections); the schema carries none."""
    schema_text = (ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()
    assert not re.search(r"^\s*default:", schema_text, re.M)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())

    def leaves(tree, prefix=()):
        for key, value in tree.items():
            if isinstance(value, dict) and value and key not in ("max_units_per_second", "sizes"):
                yield from leaves(value, (*prefix, key))
            else:
                yield (*prefix, key)

    demo_only = {("demo",), ("tiny_models",), ("bootstrap",)}
    known = set(leaves(config))
    for leaf in leaves(demo):
        if leaf[:1] in demo_only or leaf[:2] in demo_only:
            continue
        assert leaf in known, f"demo.yaml sets {'.'.join(leaf)}, which config.yaml lacks"


def test_tiny_spec_schema_matches_the_library():
    from stages.demo.tiny import DEFAULT_SPEC

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    spec = schema["$defs"]["tiny_spec"]["properties"]
    side = set(schema["$defs"]["tiny_side"]["properties"])
    assert set(spec) == set(DEFAULT_SPEC)
    assert side | set(spec["teacher"]["properties"]) == set(DEFAULT_SPEC["teacher"])
    assert side == set(DEFAULT_SPEC["student"])


# ---- the contract between the rules and the stage CLIs ---------------------------------------

# Keys the workflow itself acts on (workflow/rules/common.smk: WORKFLOW_KEYS).
WORKFLOW_KEYS = {"gpus", "nodes", "launcher", "threads", "workers", "recipes", "shards",
                 "student_td_adapted", "split"}


def merged(base, *overrides):
    """Snakemake's own merge of config files (nested dicts merge, other values replace)."""
    out = dict(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def assert_options(rule, args, section, skip=()):
    """Every stage option of a config section reached the job with the config's value."""
    for key, value in section.items():
        if key in WORKFLOW_KEYS or key in skip:
            continue
        assert hasattr(args, key), f"{rule}: config key {key} is not an option of the stage"
        given = getattr(args, key)
        if isinstance(value, dict):  # KEY=VALUE items
            given = {k: type(value[k])(v) for k, v in (item.split("=", 1) for item in given)}
        elif isinstance(value, list):
            given = list(given)
        if value is None:
            continue  # left out: the stage's default, which means the same
        assert given == value, f"{rule}: --{key.replace('_', '-')} is {given!r}, config {value!r}"


def check_job(job, config):
    """Parse the job's command with its stage's parser and compare it with the config."""
    module, args = stage_call(job.command)
    rule = job.rule
    if rule == "validate":
        assert_options(rule, args, config["validate"], skip=("max_seconds_train",
                                                              "max_seconds_eval"))
        assert args.workers == min(config["validate"]["workers"], CORES)
        limits = {config["validate"]["max_seconds_train"], config["validate"]["max_seconds_eval"]}
        assert args.max_seconds in limits
        assert args.teacher_family == config["models"]["teacher_family"]
    elif rule == "prepare":
        name = args.output.stem
        source = (config["presets"][name]["manifest"] if name in config["presets"]
                  else config["manifests"][name])
        assert_options(rule, args, source, skip=("path", "audio_dir"))
        assert args.source == source["path"]
        assert args.report == args.output.with_suffix(".report.json")
        if "audio_dir" in source:
            assert str(args.audio_dir) == source["audio_dir"]
    elif rule == "synth_demo":
        assert_options(rule, args, config["demo"], skip=("enabled",))
    elif rule == "tiny_models":
        assert args.seed == config["tiny_models"]["seed"]
        assert json.loads(args.spec) == config["tiny_models"]["spec"]
    elif rule == "bootstrap":
        role = args.output_dir.name.removeprefix("bootstrap_")
        roles = {"teacher", "student_base"}
        assert_options(rule, args, config["bootstrap"][role], skip=("convention",))
        assert_options(rule, args, config["bootstrap"], skip=roles)
        # A role with `convention: restyled` learns the restyled copy of the train split.
        restyled = config["bootstrap"][role].get("convention") == "restyled"
        assert Path(args.train).name == ("train_restyled.jsonl" if restyled else "train.jsonl")
    elif rule == "teacher_data":
        assert_options(rule, args, config["teacher_data"])
        assert args.num_shards == config["teacher_data"]["shards"]
    elif rule == "td_adapt":
        assert_options(rule, args, config["td_adapt"])
        # One run per seed, named after it: train/td_adapt@seed<k> -> student_td_adapted@seed<k>.
        assert args.seed in config["seeds"]
        assert Path(args.output_dir).name == f"td_adapt@seed{args.seed}"
        assert Path(args.export_dir).name == f"student_td_adapted@seed{args.seed}"
    elif rule == "calibrate":
        assert_options(rule, args, config["calibrate"])
        assert_options(rule, args, config["opd"]["step"])
        # The seed of the training run it gates (it previews that run's first batches).
        recipe, seed = seeded_name(Path(args.output).parent.name)
        assert args.seed == seed and seed in config["seeds"]
        assert_recipe_student(args.student, recipe, seed)
    elif rule == "train_opd":
        assert_options(rule, args, config["opd"], skip=("step",))
        assert_options(rule, args, config["opd"]["step"])
        run, seed = seeded_name(Path(args.output_dir).name)
        assert args.seed == seed and seed in config["seeds"]
        assert Path(args.calibration).parent.name == f"{run.removeprefix('opd_')}@seed{seed}"
        assert_recipe_student(args.student, run.removeprefix("opd_"), seed)
    elif rule == "report":
        assert_options(rule, args, config["report"])
        assert args.seeds == config["seeds"]
        # Rows are models, never one of their seed folders.
        assert all("@" not in name for name, _ in args.models), args.models
    elif rule == "evaluate":
        assert_options(rule, args, config["evaluate"])
        # Every preset, each with its own manifest, metric and normalizer.
        given = {option: dict(item.split("=", 1) for item in getattr(args, option))
                 for option in ("preset", "metric", "normalizer")}
        presets = config["presets"]
        assert sorted(given["preset"]) == sorted(presets)
        assert all(Path(path).name == f"{name}.jsonl" for name, path in given["preset"].items())
        for option in ("metric", "normalizer"):
            assert given[option] == {name: p[option] for name, p in presets.items()}, option
        assert args.output_dir.name == args.model_name
    elif rule == "export":
        assert_options(rule, args, config["export"])
    elif rule == "restyle_transcripts":
        assert (Path(args.input).name, Path(args.output).name) == ("train.jsonl",
                                                                    "train_restyled.jsonl")
    elif rule != "td_merge":
        raise AssertionError(f"rule {rule} has no contract check; add one here")
    if rule in ("bootstrap", "td_adapt", "teacher_data", "calibrate", "train_opd", "export",
                "evaluate"):  # every stage that loads a model
        assert args.packed_audio_windows == config["models"]["packed_audio_windows"], rule
    if rule in ("calibrate", "train_opd"):
        assert Path(args.train).name == f"{config['opd']['split']}.jsonl"
        models = config["models"]
        assert args.trust_remote_code == models["trust_remote_code"]
        assert (args.student_family, args.teacher_family) == (models["student_family"],
                                                              models["teacher_family"])
    return module


def seeded_name(folder):
    """(name, seed) of a per-seed folder `<name>@seed<k>`."""
    match = re.fullmatch(r"(.+)@seed(\d+)", folder)
    assert match, f"{folder} is not a per-seed folder <name>@seed<k>"
    return match[1], int(match[2])


def assert_recipe_student(student, recipe, seed):
    """An OPD recipe starts from the student base, or from the TD-adapted student of its seed."""
    if recipe == "td_adapted":
        assert Path(student).name == f"student_td_adapted@seed{seed}", (student, seed)
    else:
        assert "student_td_adapted" not in str(student), (student, recipe)


def plan_and_check(venv_env, config, *configfiles):
    jobs = [job for job in planned_jobs(venv_env, *configfiles) if job.rule != "all"]
    modules = {check_job(job, config) for job in jobs}
    return {job.rule for job in jobs}, modules


def demo_config():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return merged(config, yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))


def test_every_rule_passes_the_config_to_its_stage(venv_env):
    rules, modules = plan_and_check(venv_env, demo_config())
    assert rules == {"synth_demo", "validate", "tiny_models", "bootstrap", "teacher_data",
                     "td_merge", "td_adapt", "calibrate", "train_opd", "export", "evaluate",
                     "report"}
    assert len(modules) == 11  # every stage CLI (bootstrap and td_adapt both run stages.sft)


def test_the_other_branches_pass_the_config_too(venv_env, tmp_path):
    """Sampling, quarantine, a VUSS floor, several GPUs, extra models, families, remote code,
    packed audio windows, a student base in another transcript convention,
    the TD-adapted student's evaluation and a fixed export tolerance."""
    variant = {
        "bootstrap": {"student_base": {"convention": "restyled"}},
        "validate": {"on_error": "quarantine"},
        "models": {"extra": {"other_model": "org/other-model"}, "student_family":
                   "audio_chat_lm", "teacher_family": "qwen3_asr", "trust_remote_code": True,
                   "packed_audio_windows": True},
        "evaluate": {"student_td_adapted": True, "language_hint": False},
        "teacher_data": {"filters": ["empty", "repetition"], "max_units_per_second":
                         {"zh": 10.0, "default": 20.0}},
        "calibrate": {"min_vuss": 12.5},
        "td_adapt": {"gpus": 2},
        "opd": {"gpus": 2, "split": "td_pool", "step": {"sample": True, "sample_temperature": 0.7,
                                    "keep_stop_token": False}},
        "export": {"tolerance": 0.001, "dtype": "bfloat16"},
    }
    config = merged(demo_config(), variant)
    rules, _ = plan_and_check(venv_env, config, write_yaml(tmp_path / "variant.yaml", variant))
    assert {"evaluate", "restyle_transcripts"} <= rules
    commands = [j.command for j in planned_jobs(venv_env, tmp_path / "variant.yaml")]
    assert any("--rejects" in c for c in commands)  # quarantine names the rejects file
    assert any(re.search(r"\S+python\S* -m torch.distributed.run --standalone "
                         r"--nproc_per_node 2 -m stages.train_opd", c) for c in commands)
    assert any("--model-name other_model" in c for c in commands)


def test_every_seed_trains_exports_and_evaluates_its_own_models(venv_env, tmp_path):
    """seeds [1, 2]: TD adaptation and each OPD recipe train once per seed (the td_adapted
    recipe of seed k from the TD-adapted student of seed k), each run is calibrated, exported and
    evaluated under `<model>@seed<k>`; the base student and the teacher once; one report that
    reads every evaluation, summary and rows, with --seeds 1 2."""
    variant = {"seeds": [1, 2], "evaluate": {"student_td_adapted": True},
               "report": {"resamples": 200, "bootstrap_seed": 7, "confidence": 0.9}}
    config = merged(demo_config(), variant)
    jobs = [j for j in planned_jobs(venv_env, write_yaml(tmp_path / "seeds.yaml", variant))
            if j.rule != "all"]
    for job in jobs:
        check_job(job, config)

    def calls(rule):
        return [stage_call(j.command)[1] for j in jobs if j.rule == rule]

    assert sorted(args.seed for args in calls("td_adapt")) == [1, 2]
    assert sorted((Path(a.output_dir).name, a.seed) for a in calls("train_opd")) == [
        ("opd_base@seed1", 1), ("opd_base@seed2", 2),
        ("opd_td_adapted@seed1", 1), ("opd_td_adapted@seed2", 2)]
    assert sorted((Path(a.output).parent.name, a.seed) for a in calls("calibrate")) == [
        ("base@seed1", 1), ("base@seed2", 2), ("td_adapted@seed1", 1), ("td_adapted@seed2", 2)]
    assert sorted(Path(a.output).name for a in calls("export")) == [
        "opd_base@seed1", "opd_base@seed2", "opd_td_adapted@seed1", "opd_td_adapted@seed2"]
    evaluated = {a.model_name for a in calls("evaluate")}
    assert evaluated == {"student_base", "teacher", "student_td_adapted@seed1",
                         "student_td_adapted@seed2", "opd_base@seed1", "opd_base@seed2",
                         "opd_td_adapted@seed1", "opd_td_adapted@seed2"}
    assert len(calls("evaluate")) == len(evaluated)  # one job per model, all presets in it
    for args in calls("evaluate"):  # each seed's evaluation reads that seed's model
        assert Path(args.model).name in (args.model_name, "student_base", "teacher")
        assert Path(args.output_dir).name == args.model_name

    [report] = [j for j in jobs if j.rule == "report"]
    args = stage_call(report.command)[1]
    assert args.seeds == [1, 2]
    assert (args.resamples, args.bootstrap_seed, args.confidence) == (200, 7, 0.9)
    assert [name for name, _ in args.models] == ["student_base", "opd_base", "opd_td_adapted",
                                                 "teacher", "student_td_adapted"]
    eval_dir = Path(args.eval_dir)
    wanted = {str(eval_dir / model / f"{kind}_{preset}.{ext}")
              for model in evaluated for preset in config["presets"]
              for kind, ext in (("summary", "json"), ("test", "jsonl"))}
    assert wanted <= set(report.inputs), sorted(wanted - set(report.inputs))
    assert sorted(name for name, _ in args.metrics) == [
        "opd_base@seed1", "opd_base@seed2", "opd_td_adapted@seed1", "opd_td_adapted@seed2"]
    assert sorted(name for name, _ in args.calibration) == [
        "base@seed1", "base@seed2", "td_adapted@seed1", "td_adapted@seed2"]
    for name, path in [*args.metrics, *args.calibration]:
        assert path in report.inputs or str(Path(path).parent / "train_summary.json") in \
            report.inputs, (name, path)
        assert Path(path).parent.name == name


def test_seeds_given_with_dash_dash_config_are_numbers(venv_env):
    """`--config seeds=[1,2]` (which Snakemake passes as strings) plans seeds 1 and 2."""
    result = snakemake("-n", "--forceall", "--config", "seeds=[1,2]", env=venv_env)
    for seed in (1, 2):
        assert f"opd_td_adapted@seed{seed}" in result.stdout
    assert "@seed0" not in result.stdout
    refused = snakemake("-n", "--config", "seeds=[1,x]", env=venv_env, check=False)
    assert refused.returncode != 0 and "seeds" in refused.stdout + refused.stderr


@pytest.mark.parametrize("seeds", [[], [1, 1], [-1], [0.5], 3])
def test_seeds_must_be_a_list_of_distinct_non_negative_integers(venv_env, tmp_path, seeds):
    path = write_yaml(tmp_path / "seeds.yaml", {"seeds": seeds})
    result = snakemake("-n", "--configfile", str(path), env=venv_env, check=False)
    assert result.returncode != 0
    assert "seeds" in result.stdout + result.stderr


def test_the_paper_recipe_inherits_no_demo_value(venv_env, tmp_path):
    """Resolved, the paper recipe is config.yaml + the recipe: every job gets exactly those
    values, so none of the demo's tuned ones (config/demo.yaml) leaks into a real run."""
    recipe = paper_recipe(tmp_path)
    config = merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), recipe)
    rules, _ = plan_and_check(venv_env, config, write_yaml(tmp_path / "recipe.yaml", recipe))
    assert "bootstrap" not in rules and "train_opd" in rules
    # The demo's values differ from a real run's on these keys: none may appear.
    assert config["teacher_data"]["max_cer"] == 0.1 and config["opd"]["lr"] == 1e-4
    assert config["opd"]["step"]["max_new_tokens"] == 64


def test_a_recipe_that_forgets_demo_enabled_is_refused(venv_env, tmp_path):
    recipe = {"models": {"teacher": "org/teacher", "student_base": "org/student"}}
    result = snakemake("-n", "--configfile", str(write_yaml(tmp_path / "r.yaml", recipe)),
                       env=venv_env, check=False)
    assert result.returncode != 0
    assert "demo.enabled is true" in result.stdout + result.stderr


# ---- resources, logs, reruns -----------------------------------------------------------------

def planned_resources(env, configfile: Path | None, *args: str) -> list[tuple[str, dict]]:
    """(rule, resources) of every job of a forced dry run."""
    extra = ["--configfile", str(configfile)] if configfile else []
    result = snakemake("-n", "--forceall", *extra, *args, env=env)
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", result.stdout + result.stderr):
        rule = re.match(r"rule (\w+):", block)
        line = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and line and rule[1] != "all":
            resources = {}
            for item in re.split(r", (?=\w+=)", line[1]):
                key, value = item.split("=", 1)
                resources[key] = int(value) if value.isdigit() else value
            jobs.append((rule[1], resources))
    return jobs


def test_every_job_asks_for_its_configured_memory_time_and_gpu(venv_env, tmp_path):
    """Memory and wall time from `resources.<rule>`; a GPU only where the stage's device can be
    one: the demo's devices are auto (export: cpu); with every device cpu, no job asks."""
    config = demo_config()
    gpu_rules = {"bootstrap", "teacher_data", "td_adapt", "calibrate", "train_opd", "evaluate"}
    jobs = planned_resources(venv_env, None)
    assert {rule for rule, _ in jobs} >= gpu_rules | {"export", "validate", "report"}
    for rule, resources in jobs:
        assert resources["mem_mb"] == config["resources"][rule]["mem_mb"], rule
        assert resources["runtime"] == config["resources"][rule]["runtime"], rule
        assert resources.get("gpu", 0) == (1 if rule in gpu_rules else 0), (rule, resources)
    cpu = {section: {"device": "cpu"} for section in ("bootstrap", "teacher_data", "td_adapt",
                                                        "calibrate", "opd", "evaluate")}
    jobs = planned_resources(venv_env, write_yaml(tmp_path / "cpu.yaml", cpu))
    assert all(resources.get("gpu", 0) == 0 for _, resources in jobs)


def test_several_nodes_take_the_srun_route_and_the_job_needs_slurm(venv_env, tmp_path):
    variant = {"opd": {"nodes": 2, "gpus": 2, "threads": 3}}
    jobs = planned_resources(venv_env, write_yaml(tmp_path / "nodes.yaml", variant))
    train = [resources for rule, resources in jobs if rule == "train_opd"]
    assert train and all(r["nodes"] == 2 and r["tasks"] == 2 and r["mpi"] == "srun"
                         and r["gres"] == "gpu:2" and r["tasks_per_gpu"] == 0 for r in train)
    commands = [j.command for j in planned_jobs(venv_env, tmp_path / "nodes.yaml")
                if j.rule == "train_opd"]
    assert all("srun --nodes 2 --ntasks 2 --cpus-per-task" in c for c in commands)
    assert all('${SLURM_JOB_ID:?training on several nodes runs under Slurm only' in c
               for c in commands)


def test_every_job_appends_both_streams_of_every_attempt_to_its_log(venv_env):
    for job in planned_jobs(venv_env):
        if job.rule != "all":
            assert re.match(r"exec >> \S+\.log 2>&1; .*echo \"=== ", job.command), job.command
            assert " 2> " not in job.command
            # The interpreter that runs Snakemake, never `python` from PATH.
            assert not re.search(r"(^|[;\s])(python|torchrun) ", job.command), job.command


def tiny_real_project(tmp_path) -> tuple[Path, Path, str]:
    """A copy of the workflow and the stages in `tmp_path/project` (so the test may edit its
    code), a real-data config with a two-clip manifest, and the validated train manifest."""
    import numpy as np
    import soundfile as sf

    project = tmp_path / "project"
    for name in ("workflow", "config", "stages", "envs"):
        shutil.copytree(ROOT / name, project / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Snakefile", project / "Snakefile")
    rows = []
    for i in range(2):
        audio = 0.1 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        sf.write(tmp_path / f"clip{i}.wav", audio, 16000)
        rows.append(json.dumps({"audio": f"clip{i}.wav", "text": "hello", "language": "en"}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    config = {"demo": {"enabled": False}, "output_dir": str(tmp_path / "results"),
              "manifests": {"train": str(manifest), "td_pool": str(manifest)},
              "presets": {p: {"manifest": str(manifest)} for p in PAPER_PRESETS},
              "models": {"teacher": "org/teacher", "student_base": "org/student"}}
    return project, write_yaml(tmp_path / "real.yaml", config), str(
        tmp_path / "results" / "data" / "train.jsonl")


PAPER_PRESETS = ["aishell", "meeting", "net", "clean", "other"]


def test_a_changed_option_or_stage_code_reruns_the_job_and_nothing_else_does(venv_env,
                                                                            tmp_path):
    project, config, target = tiny_real_project(tmp_path)

    def plan(*configs):  # the copy's own Snakefile, so its stages are the ones fingerprinted
        result = run([str(BIN / "snakemake"), target, "-n", "--configfile", str(config),
                      *map(str, configs)], venv_env, cwd=project)
        return result.stdout + result.stderr

    run([str(BIN / "snakemake"), target, "--cores", "1", "--configfile", str(config)],
        venv_env, cwd=project)
    assert "Nothing to be done" in plan()
    # An option: validate.min_seconds.
    changed = write_yaml(tmp_path / "changed.yaml", {"validate": {"min_seconds": 0.5}})
    assert "Params have changed since last execution" in plan(changed)
    # Code the stage imports (indirectly) reruns it; code it does not import does not.
    imported = project / "stages" / "common" / "jsonl.py"
    unrelated = project / "stages" / "reporting" / "plots.py"
    original = unrelated.read_text()
    unrelated.write_text(original + "\n# an edit\n")
    assert "Nothing to be done" in plan()
    imported.write_text(imported.read_text() + "\n# an edit\n")
    assert "Params have changed since last execution" in plan()


def test_the_gpu_study_recipe_plans_three_seeds_on_the_large_grammar(venv_env, tmp_path):
    """config/recipes/gpu_study.yaml (README "The GPU study"): the demo DAG with the large
    grammar, GPU-sized tiny models and three training seeds, every job on a GPU when there is
    one; the student base learns the restyled train split, the teacher the split as written;
    the CPU-only demo values it replaces (export on cpu) do not leak in."""
    recipe = yaml.safe_load((ROOT / "config" / "recipes" / "gpu_study.yaml").read_text())
    recipe["output_dir"] = str(tmp_path / "results")
    jobs = planned_jobs(venv_env, write_yaml(tmp_path / "study.yaml", recipe))
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.rule] = counts.get(job.rule, 0) + 1
    assert counts == {
        "synth_demo": 1, "validate": 7, "restyle_transcripts": 1, "tiny_models": 1,
        "bootstrap": 2,
        "teacher_data": 4, "td_merge": 1, "td_adapt": 3,
        "calibrate": 6, "train_opd": 6, "export": 6,  # 2 recipes x 3 seeds
        "evaluate": 8,  # base, teacher, 2 recipes x 3 seeds: the 5 presets in one job each
        "report": 1, "all": 1,
    }
    calls = {}
    for job in jobs:
        if job.rule != "all":
            calls.setdefault(job.rule, []).append(stage_call(job.command)[1])
    synth = calls["synth_demo"][0]
    assert synth.grammar == "large" and tuple(synth.train_languages) == ("zh", "en")
    assert synth.telephone_share == 0.2  # chosen on dev_net (README "The GPU study")
    assert {"train=20000", "td_pool=4000", "aishell=200"} <= set(synth.sizes)
    spec = json.loads(calls["tiny_models"][0].spec)
    assert spec["teacher"]["hidden_size"] == 384 and spec["student"]["hidden_size"] == 256
    trains = {args.max_steps: Path(args.train).name for args in calls["bootstrap"]}
    assert trains == {350: "train_restyled.jsonl", 1200: "train.jsonl"}  # student, teacher
    assert sorted(args.seed for args in calls["train_opd"]) == [0, 0, 1, 1, 2, 2]
    for rule in ("bootstrap", "teacher_data", "td_adapt", "calibrate", "train_opd", "export",
                 "evaluate"):
        assert {args.device for args in calls[rule]} == {"auto"}, rule


def test_the_same_convention_recipe_reruns_the_study_with_one_convention(venv_env, tmp_path):
    """config/recipes/gpu_study_same_convention.yaml after gpu_study.yaml (the study's run 2):
    nothing restyled, both bootstraps learn the train split as written, in its own folder."""
    recipes = ROOT / "config" / "recipes"
    same = yaml.safe_load((recipes / "gpu_study_same_convention.yaml").read_text())
    assert same["output_dir"] == "results/gpu_study_same_convention"
    same["output_dir"] = str(tmp_path / "results")
    jobs = planned_jobs(venv_env, recipes / "gpu_study.yaml",
                        write_yaml(tmp_path / "same.yaml", same))
    assert "restyle_transcripts" not in {job.rule for job in jobs}
    bootstraps = [stage_call(job.command)[1] for job in jobs if job.rule == "bootstrap"]
    assert {args.max_steps: Path(args.train).name for args in bootstraps} == {
        350: "train.jsonl", 1200: "train.jsonl"}
    assert all(Path(args.train).is_relative_to(tmp_path / "results") for args in bootstraps)
