"""The pipeline on a real Slurm, through the shipped profile (workflow/profiles/slurm) plus a site
profile that names only an account and a partition, as README "Running on Slurm" tells users.

``test_the_paper_recipe_asks_slurm_for_what_its_config_says`` needs only the executor plugin: it
builds the plugin's own sbatch command for every job of the paper recipe's plan. The other test
stands up a Slurm cluster on this machine with .ci/slurm_up.sh (Debian's slurm-wlm, slurmdbd on
MariaDB for sacct, munge; the daemons are stopped by pid afterwards with .ci/slurm_down.sh),
runs the small demo DAG on it with CPU devices, kills one training job's processes
mid-run (a crashed node) so Snakemake's retry resumes it, and checks every output and Slurm's
own accounting of every job: state, account, partition, CPUs, memory, wall time, no GPU, and
the two-node training job.
It skips, saying why, where Slurm or the plugin is not installed or it may not start daemons.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import BIN, ROOT
from tests.test_dag_e2e import PRESETS, small_config
from tests.test_workflow import merged, paper_recipe, planned_resources, write_yaml

pytestmark = pytest.mark.slow

SLURM_PROGRAMS = ("sbatch", "sacct", "squeue", "scancel", "srun", "sinfo", "scontrol",
                  "sacctmgr", "slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")
ACCOUNT, PARTITION = "audioopd", "ci"  # made by .ci/slurm_up.sh; `main` is the default partition


def missing_programs() -> list[str]:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [p for p in SLURM_PROGRAMS if shutil.which(p, path=path) is None]


def plugin_missing() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return 'the Slurm executor plugin is not installed (pip install -e ".[slurm]")'
    return None


def why_no_cluster() -> str | None:
    """Why this machine cannot get a test cluster, or None."""
    if plugin_missing():
        return plugin_missing()
    if missing := missing_programs():
        return (f"Slurm is not installed ({', '.join(missing)} not found): apt-get install "
                "slurm-wlm slurmdbd mariadb-server munge (.ci/run does)")
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd, slurmdbd, MariaDB and munged needs root"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and "audio-opd .ci/slurm_up.sh" not in conf.read_text():
        return "this machine has its own Slurm configuration; the test leaves it alone"
    return None


def slurm_env(venv_env: dict[str, str]) -> dict[str, str]:
    env = dict(venv_env)
    env["PATH"] = f"{env['PATH']}:/usr/sbin:/sbin"
    env.pop("PYTHONPATH", None)
    return env


# ---- the plan: what the plugin would ask sbatch for (no cluster needed) ------------------------

class PlannedJob(SimpleNamespace):
    """The part of a Snakemake job the plugin's sbatch builder reads."""

    def __init__(self, rule: str, resources: dict, threads: int):
        super().__init__(name=rule, threads=threads, resources=SimpleNamespace(**resources))
        self.resources.get = lambda key, default=None: resources.get(key, default)


def sbatch_command(rule: str, resources: dict, threads: int) -> str:
    """The plugin's own sbatch command line for a job (its `get_submit_command` and
    `set_gres_string`, as its executor calls them)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = PlannedJob(rule, resources, threads)
    params = {"run_uuid": "plan", "slurm_logfile": "log", "comment_str": f"rule_{rule}",
              "account": "-A site", "partition": "-p gpu", "workdir": str(ROOT)}
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.skipif(plugin_missing() is not None, reason=plugin_missing() or "")
def test_the_paper_recipe_asks_slurm_for_what_its_config_says(venv_env, tmp_path):
    """Training: 3 nodes x 8 GPUs in one job (one task per node, GPUs per node), its memory and
    wall time; evaluation and teacher-data shards: one GPU each; nothing else a GPU."""
    recipe = paper_recipe(tmp_path)
    config = merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), recipe)
    jobs = planned_resources(slurm_env(venv_env), write_yaml(tmp_path / "recipe.yaml", recipe),
                             "--workflow-profile", "workflow/profiles/slurm")
    by_rule = Counter(rule for rule, _ in jobs)
    assert by_rule["train_opd"] == 2 and by_rule["evaluate"] == 4
    assert by_rule["teacher_data"] == 16
    opd = config["opd"]
    assert opd["nodes"] * opd["gpus"] * 40 == opd["batch_size"] == 960
    for rule, resources in jobs:
        threads = {"train_opd": opd["threads"] * opd["gpus"]}.get(rule, 2)
        call = sbatch_command(rule, resources, threads)
        limits = config["resources"][rule]
        assert f"--mem {limits['mem_mb']}" in call and f"-t {limits['runtime']}" in call, call
        assert "-A site" in call and "-p gpu" in call
        if rule == "train_opd":
            assert "--nodes=3" in call and "--ntasks=3" in call and "--gres=gpu:8" in call
            assert "--gpus" not in call and "--ntasks-per-gpu" not in call, call
            assert f"--cpus-per-task={opd['threads'] * opd['gpus']}" in call
            assert resources["mpi"] == "srun"  # the plugin then runs the shell without its srun
        elif rule == "td_adapt":  # one node of 8 GPUs: torchrun --standalone inside the job
            assert "--gpus=8" in call and "--nodes" not in call, call
        elif rule in ("evaluate", "teacher_data", "calibrate"):
            assert "--gpus=1" in call, call
        else:  # validate, prepare, td_merge, report; export runs on cuda in the recipe
            assert ("--gpus=1" in call) == (rule == "export"), call


def test_a_batch_that_the_ranks_cannot_share_fails_the_plan(venv_env, tmp_path):
    recipe = paper_recipe(tmp_path)
    recipe["opd"]["batch_size"] = 1000
    done = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "-n", "--configfile",
         str(write_yaml(tmp_path / "recipe.yaml", recipe))],
        cwd=ROOT, env=venv_env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert ("opd.batch_size 1000 is not a multiple of opd.nodes x opd.gpus = 3 x 8 = 24"
            in done.stdout + done.stderr)


# ---- the real thing ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A Slurm cluster on this machine for the module: (state folder, number of nodes)."""
    reason = why_no_cluster()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    try:  # whatever slurm_up.sh started is stopped, even if it failed half-way
        up = subprocess.run([str(ROOT / ".ci" / "slurm_up.sh"), str(state)],
                            capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, f"slurm_up.sh failed:\n{up.stdout}\n{up.stderr}"
        yield state, int((state / "nodes").read_text())
    finally:
        subprocess.run([str(ROOT / ".ci" / "slurm_down.sh"), str(state)], timeout=120)


def slurm_config(out: Path, nodes: int) -> dict:
    """The end-to-end test's small demo, on CPUs (this cluster has no GPU), with OPD training
    on two ranks through the multi-node launcher and enough steps to be cancelled mid-run."""
    config = small_config(str(out))
    cpu = {"device": "cpu"}
    for section in ("evaluate", "teacher_data", "calibrate", "export", "bootstrap"):
        config[section] = {**config.get(section, {}), **cpu}
    config["td_adapt"] = {**config["td_adapt"], **cpu}
    # Two Slurm tasks, one torchrun of one process each: two nodes when the cluster has them.
    config["opd"] = {**config["opd"], **cpu, "nodes": 2, "gpus": 1, "threads": 1,
                     "max_steps": 16, "save_every": 2}
    return config


def trained(name: str) -> str:
    """What the run of `name` with the config's (first) training seed is called: `<name>@seed<k>`
    (workflow/rules/common.smk `seeded`), or `name` in a config without `seeds`."""
    seeds = merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                   yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())).get("seeds")
    return f"{name}@seed{seeds[0]}" if seeds else name


def sacct_rows(since: str) -> list[dict]:
    fields = ["JobID", "JobName", "Comment", "State", "Account", "Partition", "ReqCPUS",
              "ReqMem", "Timelimit", "NNodes", "NodeList", "ReqTRES", "AllocTRES", "ExitCode"]
    done = subprocess.run(["sacct", "-X", "-P", "-n", "-S", since, "-o", ",".join(fields)],
                          capture_output=True, text=True, check=True)
    return [dict(zip(fields, line.split("|"), strict=True))
            for line in done.stdout.splitlines() if line]


def wait_for_running_job(comment: str, ready, proc, timeout: float = 900) -> str:
    """The Slurm job id of the running job whose comment starts with `comment` (the rule and
    its first wildcards) once `ready()` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        listing = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"],
                                 capture_output=True, text=True).stdout
        for line in listing.splitlines():
            job_id, _, job_comment = line.partition("|")
            if job_comment.startswith(comment) and ready():
                return job_id
        time.sleep(0.5)
    raise AssertionError(f"no running job {comment} became ready")


def test_the_demo_dag_runs_on_slurm(slurm_cluster, venv_env, tmp_path):
    state, nodes = slurm_cluster
    out = tmp_path / "results"
    config = slurm_config(out, nodes)
    config_path = write_yaml(tmp_path / "config.yaml", config)
    site = tmp_path / "site"  # the user's own profile: account and partition, nothing else
    site.mkdir()
    write_yaml(site / "config.yaml", {"default-resources": [f"slurm_account={ACCOUNT}",
                                                            f"slurm_partition={PARTITION}"]})
    extra = []
    if nodes == 1:  # one machine, one slurmd: both tasks of the launcher on the one node
        extra = ["--set-resources", "train_opd:nodes=1"]
    env = slurm_env(venv_env)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    started = time.monotonic()
    command = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(ROOT), "--profile", str(site),
               "--workflow-profile", "workflow/profiles/slurm", "--configfile", str(config_path),
               "--slurm-logdir", str(tmp_path / "slurm_logs"),
               "--slurm-init-seconds-before-status-checks", "2", *extra]
    log_path = tmp_path / "snakemake.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Preempt the base recipe's training once it has saved a checkpoint: Snakemake's
            # retry (the profile's `retries: 1`) must resume it.
            run_dir = out / "train" / trained("opd_base")
            cancelled = wait_for_running_job(
                "rule_train_opd_wildcards_base",
                lambda: any(run_dir.glob("checkpoints/step_*/checksums.json")), proc)
            # Kill the training step's processes (as a crashed node would). Not `scancel`:
            # plugin 2.8.0 compares sacct's state "CANCELLED by <uid>" with "CANCELLED" and
            # would wait for the cancelled job forever.
            listing = subprocess.run(["scontrol", "listpids", cancelled], capture_output=True,
                                     text=True, check=True).stdout.split("\n")[1:]
            step_pids = [int(f[0]) for f in (line.split() for line in listing)
                         if len(f) >= 3 and f[2] == "0"]
            assert step_pids, listing
            for pid in step_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=2400)
        finally:
            if proc.poll() is None:
                proc.kill()
    seconds = time.monotonic() - started
    output = log_path.read_text()
    assert proc.returncode == 0, output[-6000:]

    # Every output, as the local end-to-end test checks them.
    for name in ["train", "td_pool", *PRESETS]:
        assert json.loads((out / "data" / f"{name}.report.json").read_text())["rejected"] == []
    models = ["teacher", "student_base", trained("opd_base"), trained("opd_td_adapted")]
    assert sorted(p.name for p in (out / "eval").iterdir()) == sorted(models)
    for model in models:
        for preset in PRESETS:
            summary = json.loads((out / "eval" / model / f"summary_{preset}.json").read_text())
            assert summary["utterances"] == 4
    assert (out / "report" / "report.md").is_file()
    assert (out / "models" / trained("opd_base")).is_dir()
    for recipe in ("base", "td_adapted"):
        summary = json.loads((out / "train" / trained(f"opd_{recipe}") / "train_summary.json")
                             .read_text())
        assert summary["world_size"] == 2 and summary["optimizer_steps"] >= 1
        assert summary["global_batch"] == config["opd"]["batch_size"]
    base = json.loads((out / "train" / trained("opd_base") / "train_summary.json").read_text())
    assert base["resumed_from"], "the retried training did not resume its checkpoint"

    # Both attempts in one log: the cancelled one's output is kept above the retry's.
    log = (out / "logs" / "train_opd" / f"{trained('base')}.log").read_text()
    attempts = re.findall(r"^=== \S+ host \S+ slurm job (\d+) attempt (\d) ===$", log, re.M)
    assert [n for _, n in attempts] == ["1", "2"], log
    assert attempts[0][0] == cancelled and attempts[1][0] != cancelled, log
    first, second = log.split(f"slurm job {attempts[1][0]} attempt 2 ===")
    assert "step" in first and "resuming" in second

    # Slurm's accounting of every job.
    rows = [r for r in sacct_rows(since) if r["Comment"].startswith("rule_")]
    assert {r["Account"] for r in rows} == {ACCOUNT}
    assert {r["Partition"] for r in rows} == {PARTITION}
    states = Counter((r["Comment"].split("_wildcards_")[0][5:], r["State"].split()[0])
                     for r in rows)
    planned = Counter({"synth_demo": 1, "validate": 7, "tiny_models": 1, "bootstrap": 2,
                       "teacher_data": 2, "td_merge": 1, "td_adapt": 1, "calibrate": 2,
                       "train_opd": 2, "export": 2, "evaluate": 4, "report": 1})
    assert Counter({rule: n for (rule, state), n in states.items() if state == "COMPLETED"}) \
        == planned, states
    assert [(k, n) for k, n in states.items() if k[1] != "COMPLETED"] == \
        [(("train_opd", "FAILED"), 1)], states
    threads = {"synth_demo": config_value("demo", "workers"),
               "validate": config_value("validate", "workers"),
               "bootstrap": config_value("bootstrap", "threads"),
               "teacher_data": config_value("teacher_data", "threads"),
               "td_adapt": config_value("td_adapt", "threads"),
               "calibrate": config_value("calibrate", "threads"),
               "train_opd": 1, "export": config_value("export", "threads"),
               "evaluate": config_value("evaluate", "threads")}
    resources = merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                       yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))["resources"]
    for row in rows:
        rule = row["Comment"].split("_wildcards_")[0][5:]
        assert int(row["ReqCPUS"]) == threads.get(rule, 1) * (2 if rule == "train_opd" else 1), \
            row
        per_job = nodes if rule == "train_opd" else 1  # sacct: memory per node x nodes
        assert row["ReqMem"] == f"{resources[rule]['mem_mb'] * per_job}M", row
        hours, minutes = divmod(resources[rule]["runtime"], 60)  # sacct: [D-]HH:MM:SS
        assert row["Timelimit"] == f"{hours:02d}:{minutes:02d}:00", row
        assert "gpu" not in row["ReqTRES"] + row["AllocTRES"], row
        if rule == "train_opd":
            assert row["NNodes"] == str(nodes), row
    per_rule = ", ".join(f"{rule} {n} {state}" for (rule, state), n in sorted(states.items()))
    summary = f"slurm: {len(rows)} jobs on {nodes} node(s) in {seconds:.0f} s; sacct: {per_rule}"
    (tmp_path / "summary.txt").write_text(summary + "\n")
    print(f"\n{summary}")


def config_value(section: str, key: str):
    config = merged(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                    yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))
    return config[section][key]
