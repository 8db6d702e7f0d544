# Paths, config lookups and the stage-option builder shared by every rule file.
import ast
import hashlib
import json
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

from snakemake.exceptions import WorkflowError

OUT = config["output_dir"]
DEMO = config["demo"]["enabled"]
# Config keys the workflow itself acts on (jobs, resources, launch); every other key of a stage's
# section is that stage's option of the same name.
WORKFLOW_KEYS = frozenset(
    {
        "gpus",
        "nodes",
        "launcher",
        "threads",
        "workers",
        "recipes",
        "shards",
        "student_td_adapted",
        "split",
    }
)
PRESETS = list(config["presets"])
# Training seeds: TD adaptation and each OPD recipe train once per seed; what they make is named
# `<name>@seed<k>` (the report's layout: one row per model, one folder per seed).
SEEDS = list(config["seeds"])
# Manifests the pipeline reads: training data, the teacher-data pool, and one per eval preset.
TRAINING_MANIFESTS = ["train", "td_pool"]
MANIFESTS = TRAINING_MANIFESTS + PRESETS
ENV = "../../envs/audio-opd.yaml"
# Memory (MB) and wall time (minutes) of each rule's jobs: config `resources.<rule>`.
RESOURCES = config["resources"]
# The interpreter that runs this Snakemake (the project's venv, activated or not): jobs never
# depend on `python` from PATH. With conda deployment each job's own env is on PATH instead.
PYTHON = (
    "python"
    if "conda"
    in {str(m).lower() for m in workflow.deployment_settings.deployment_method}
    else shlex.quote(sys.executable)
)


def interpreter(wildcards, threads):
    """PYTHON, as a rule's `params.python`. A function of `threads` so that Snakemake leaves it
    out of its params check: running from another venv path reruns nothing."""
    return PYTHON


# Every job's shell starts with this: both streams of every attempt in the log, each under a
# header saying where and when. Snakemake deletes a job's log before each attempt, so the log
# is also hard-linked as <log>.attempts, which it does not know: a retry (resources.attempt,
# see job_resources, > 1) copies the attempts before it from there, then links its own log
# there. The first attempt of a run starts afresh.
LOG = (
    "exec >> {log:q} 2>&1; keep={log:q}.attempts; "
    '[ {resources.attempt} -gt 1 ] && [ -f "$keep" ] && ! [ "$keep" -ef {log:q} ] && cat "$keep"; '
    'ln -f {log:q} "$keep"; echo "=== $(date -Is) host $(hostname)'
    ' slurm job ${{SLURM_JOB_ID:-none}} attempt {resources.attempt} ==="; '
)


wildcard_constraints:
    name="|".join(MANIFESTS),


def stage_options(section, *, skip=()):
    """The stage options of a config section: `--key value` for every key (dashes for
    underscores) except WORKFLOW_KEYS and `skip`. Booleans become `--key` / `--no-key`, lists
    `--key a b`, mappings `--key k=v ...`; a null value is left out (the stage's default, which
    means the same)."""
    options = []
    for key, value in section.items():
        if key in WORKFLOW_KEYS or key in skip or value is None:
            continue
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            options.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, dict):
            items = (shlex.quote(f"{k}={v}") for k, v in value.items())
            options.append(" ".join([flag, *items]))
        elif isinstance(value, list):
            options.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        else:
            options.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(options)


def manifest_setting(name):
    """(value, config key) of manifest `name`: a path, a corpus source (a dict) or None."""
    if name in config["presets"]:
        return config["presets"][name].get("manifest"), f"presets.{name}.manifest"
    return config["manifests"].get(name), f"manifests.{name}"


def configured_manifest(name):
    """The user's manifest for `name` (real-data mode): the path as given, or the prepare
    rule's output when the config names a corpus source; a clear error when unset."""
    value, where = manifest_setting(name)
    if not value:
        raise WorkflowError(
            f"config: {where} is not set. Give a manifest path or a corpus source there, or set "
            "demo.enabled: true to use the synthesized demo corpus."
        )
    if isinstance(value, dict):
        return f"{OUT}/prepared/{name}.jsonl"
    return value


def raw_manifest(wildcards):
    """The manifest a `validate` job reads: the demo's synthesized one or the user's."""
    if DEMO:
        return f"{OUT}/demo/manifests/{wildcards.name}.jsonl"
    return configured_manifest(wildcards.name)


def prepare_source(wildcards):
    """The corpus source of a `prepare` job (only planned for manifests given as one)."""
    value, where = manifest_setting(wildcards.name)
    if not isinstance(value, dict):
        raise WorkflowError(
            f"config: {where} is not a corpus source; nothing to prepare."
        )
    return value


def prepare_input(wildcards):
    """The corpus folder or file, an input so a missing one stops the dry run; an hf hub id
    (not on disk) is looked up in the local hub cache by the stage instead."""
    source = prepare_source(wildcards)
    if source["format"] == "hf" and not Path(source["path"]).exists():
        return []
    return source["path"]


def prepare_path(wildcards):
    """The corpus folder, file or (hf) hub id: the stage's --source."""
    return prepare_source(wildcards)["path"]


def prepare_options(wildcards):
    """Every key of the source but `path` is the stage's option of the same name."""
    return stage_options(prepare_source(wildcards), skip=("path",))


def validated(name):
    return f"{OUT}/data/{name}.jsonl"


def opd_audio():
    """The validated manifest OPD rolls out on and its calibration previews (`opd.split`)."""
    return validated(config["opd"]["split"])


def seeded(name, seed):
    """What seed `seed`'s run of `name` is called (a folder under train/, calibrate/, models/,
    eval/): `<name>@seed<k>`; `seed` may be the wildcard pattern `{seed}`."""
    return f"{name}@seed{seed}"


# Model folders (Hugging Face format) by role. Demo: built by the DAG. Real: the config's paths.
# OPD recipes name the student they start from: `base` (the student base) or `td_adapted`
# (the base after SFT on teacher transcripts, of the same seed).
def teacher_model():
    return f"{OUT}/models/teacher" if DEMO else config["models"]["teacher"]


def student_base_model():
    return f"{OUT}/models/student_base" if DEMO else config["models"]["student_base"]


def student_td_model(seed):
    return f"{OUT}/models/{seeded('student_td_adapted', seed)}"


def recipe_student(recipe, seed):
    return student_base_model() if recipe == "base" else student_td_model(seed)


def opd_model(recipe, seed):
    return f"{OUT}/models/{seeded(f'opd_{recipe}', seed)}"


for _role, _path in (
    ("teacher", teacher_model()),
    ("student_base", student_base_model()),
):
    if not _path:
        raise WorkflowError(
            f"config: models.{_role} is not set. Give a model folder or hub id there, or set "
            "demo.enabled: true to use the demo's own models."
        )
if DEMO:
    # A real recipe that forgot demo.enabled: false would silently run the demo instead.
    _given = [f"manifests.{k}" for k, v in config["manifests"].items() if v] + [
        f"models.{k}" for k in ("teacher", "student_base") if config["models"][k]
    ]
    if _given:
        raise WorkflowError(
            f"config: {', '.join(_given)} set while demo.enabled is true, and the demo ignores "
            "them. Set demo.enabled: false to run on your data and models."
        )

# Stage options passed to every stage that loads a model.
MODEL_LOADING = " ".join(
    flag
    for flag, on in (
        ("--trust-remote-code", config["models"]["trust_remote_code"]),
        ("--packed-audio-windows", config["models"]["packed_audio_windows"]),
    )
    if on
)


def family_option(role, flag="--family"):
    """`<flag> <family>` when models.<role>_family names the adapter family, else "" (the
    stage detects it from the checkpoint)."""
    family = config["models"][f"{role}_family"]
    return f"{flag} {family}" if family else ""


def evaluation_models():
    """Evaluation name (a folder under eval/) -> (folder or hub id, adapter family; None =
    from the checkpoint): the pipeline's own models, those trained per seed once per seed
    (`opd_base@seed0`), then `models.extra`, which may not reuse their names."""
    models = config["models"]
    student_family = models["student_family"]
    sources = {
        "student_base": (student_base_model(), student_family),
        "teacher": (teacher_model(), models["teacher_family"]),
    }
    trained = {}
    if config["evaluate"]["student_td_adapted"]:
        trained["student_td_adapted"] = student_td_model
    for recipe in config["opd"]["recipes"]:
        trained[f"opd_{recipe}"] = lambda seed, recipe=recipe: opd_model(recipe, seed)
    for name, model in trained.items():
        for seed in SEEDS:
            sources[seeded(name, seed)] = (model(seed), student_family)
    for name, path in models["extra"].items():
        pipeline = ["student_base", "teacher", *trained]
        if name in pipeline:
            raise WorkflowError(
                f"config: models.extra.{name} reuses the name of a pipeline model "
                f"({', '.join(pipeline)}); give the extra model another name."
            )
        # The name becomes a folder under eval/ and a wildcard value.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise WorkflowError(
                f"config: models.extra: {name!r} is not a usable model name; use letters, "
                "digits, '_', '.' and '-'."
            )
        sources[name] = (path, None)
    return sources


# The paper's Table 1: rows base, base+OPD, base+TD+OPD, teacher; its presets in its order.
PAPER_MODEL_ORDER = ["student_base", "opd_base", "opd_td_adapted", "teacher"]
PAPER_PRESET_ORDER = ["aishell", "meeting", "net", "clean", "other"]


def paper_order(names, paper):
    """`names` with the paper's ones first, in the paper's order, then the others as given."""
    return [n for n in paper if n in names] + [n for n in names if n not in paper]


def is_local_model(path):
    """A model folder made by this DAG or on disk, rather than a hub id such as `org/name`:
    only folders are job inputs, so a hub model does not count as a missing file."""
    return (
        path.startswith(f"{OUT}/")
        or path.startswith(".")
        or Path(path).is_absolute()
        or Path(path).exists()
    )


def local_model_inputs(**paths):
    """{name: path} of the model folders among `paths` (hub ids left out), for `input:`."""
    return {name: path for name, path in paths.items() if is_local_model(path)}


def can_use_gpu(section):
    """Whether a stage with this config section may run on a GPU: its `device` is not `cpu`
    (auto takes one when there is one). Only such jobs ask for a GPU."""
    return section.get("device", "cpu") != "cpu"


def job_resources(rule, section=None, gpus=1):
    """A rule's `resources:`: memory and wall time from config `resources.<rule>`, `gpus`
    GPUs when the section's device can be a GPU (the local profile caps the `gpu` total; the
    Slurm plugin asks for --gpus), and the job's attempt (job_attempt)."""
    limits = RESOURCES.get(rule)
    if limits is None:
        raise WorkflowError(
            f"config: resources.{rule} is not set; give its mem_mb and runtime (minutes)."
        )
    resources = dict(limits, attempt=job_attempt)
    if section is not None:
        resources["gpu"] = gpus if can_use_gpu(section) else 0
    return resources


def job_attempt(wildcards, attempt):
    """The attempt of a job (1, then 2 for the profile's retry), as `resources.attempt`: the
    log header (LOG) reads it. Not a resource anything is counted against."""
    return attempt


def training_world(name, section):
    """(nodes, processes per node) of a training section, checked against its global batch:
    every rank gets the same share (the paper's 960 = 40 per GPU x 3 nodes x 8 GPUs)."""
    nodes, per_node = section["nodes"], section["gpus"]
    world = nodes * per_node
    if section["batch_size"] % world:
        raise WorkflowError(
            f"config: {name}.batch_size {section['batch_size']} is not a multiple of "
            f"{name}.nodes x {name}.gpus = {nodes} x {per_node} = {world} ranks; every rank "
            "takes an equal share of the global batch."
        )
    if (
        section["launcher"] != "auto"
        and nodes > 1
        and "{nodes}" not in section["launcher"]
    ):
        raise WorkflowError(
            f"config: {name}.launcher is a template without {{nodes}} while {name}.nodes is "
            f"{nodes}; use launcher: auto (srun + torchrun on every node) or put {{nodes}} in it."
        )
    return nodes, per_node


def training_resources(rule, name, section):
    """`resources:` of a training job. One node: `gpus` GPUs (if its device can be a GPU).
    Several: the Slurm plugin's `mpi` route, so the job's shell runs in the allocation itself
    instead of inside the plugin's one-task `srun` (where our own srun would wait for a slot
    forever), with one task per node and `gpus` GPUs on each node (--gres, which is per node).
    """
    nodes, per_node = training_world(name, section)
    resources = job_resources(rule, section, gpus=per_node)
    if nodes > 1:
        gpu = resources.pop("gpu")
        resources.update(nodes=nodes, tasks=nodes, mpi="srun")
        if gpu:
            # The plugin reads `tasks` of a GPU job as tasks per GPU unless this says none.
            resources.update(gres=f"gpu:{per_node}", tasks_per_gpu=0)
    return resources


def training_launcher(section, threads, resources):
    """How a training job starts, followed by `-m stages.<stage> ...`: `python` (one process),
    torchrun on one node, or, on several nodes, `srun` starting one torchrun per task (node)
    that meet by c10d rendezvous on the node srun runs on (the allocation's first). The nodes and tasks are the
    job's resources (so --set-resources sees them); the task's own Slurm variables are
    expanded inside the task, where srun sets them (the plugin's job step hides the job's).
    A template (`launcher:` other than auto) gets {gpus} and {nodes} filled in. Rules pass it
    through `params:` inside a function: Snakemake would read the shell's ${VAR} braces as
    wildcards."""
    per_node = section["gpus"]
    if section["launcher"] != "auto":
        return (
            section["launcher"]
            .replace("{gpus}", str(per_node))
            .replace("{nodes}", str(section["nodes"]))
        )
    tasks = resources.get("tasks", 1)
    if tasks == 1:
        if per_node == 1:
            return PYTHON
        return f"{PYTHON} -m torch.distributed.run --standalone --nproc_per_node {per_node}"
    # The rendezvous: the node srun runs on (the allocation's first; an address, since a
    # Slurm node name need not be a host name), one port per job (two may share that node).
    torchrun = (
        'exec "$0" -m torch.distributed.run --nnodes "$SLURM_NTASKS"'
        f" --nproc_per_node {per_node}"
        ' --rdzv_backend c10d --rdzv_id "$SLURM_JOB_ID"'
        ' --rdzv_endpoint "$SLURM_LAUNCH_NODE_IPADDR:$((29500 + SLURM_JOB_ID % 1000))" "$@"'
    )
    return (
        ': "${SLURM_JOB_ID:?training on several nodes runs under Slurm only'
        ' (--workflow-profile workflow/profiles/slurm)}"; '
        f"srun --nodes {resources['nodes']} --ntasks {tasks} --cpus-per-task {threads}"
        f" --kill-on-bad-exit=1 bash -c {shlex.quote(torchrun)} {PYTHON}"
    )


@lru_cache
def code_version(module):
    """SHA-256 (12 hex digits) of the source of a stage module and of every project module it
    imports, directly or not (with their packages' __init__.py): a `params:` value, so a code
    change reruns the stage's jobs and what depends on them, and nothing else."""
    root = Path(workflow.basedir)
    seen, todo = {}, [module]
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if path is None or name in seen:
            continue
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        package = name if path.name == "__init__.py" else ".".join(parts[:-1])
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[
                        : len(package.split(".")) - node.level + 1
                    ]
                    base = ".".join([*anchor, *([base] if base else [])])
                todo.append(base)
                todo += [f"{base}.{alias.name}" for alias in node.names]
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(f"{name}\0".encode() + seen[name].read_bytes())
    return digest.hexdigest()[:12]


def _module_file(root, name):
    """The file of project module `name` (stages.*), or None for anything else."""
    if name != "stages" and not name.startswith("stages."):
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def validate_options(wildcards):
    """The options of a validate job; a function of the wildcards alone, so Snakemake compares
    them with the recorded ones (a function of `output` it would leave out)."""
    name = wildcards.name
    section = config["validate"]
    limit = "max_seconds_train" if name in TRAINING_MANIFESTS else "max_seconds_eval"
    options = [
        stage_options(section, skip=("max_seconds_train", "max_seconds_eval")),
        f"--max-seconds {section[limit]}",
        # The teacher-data pool is transcribed by the teacher; its references are optional.
        "--no-require-text" if name == "td_pool" else "--require-text",
        # Counts the lines whose language the teacher has no prompt for.
        family_option("teacher", "--teacher-family"),
    ]
    if section["on_error"] == "quarantine":
        rejects = f"{OUT}/data/{name}.rejects.jsonl"
        options.append(f"--rejects {rejects}")
    return " ".join(options)


def all_targets():
    """Everything: the report (which pulls in training, export and evaluation), plus the
    validation reports, the teacher-data report and the verified exports."""
    targets = [f"{OUT}/data/{name}.report.md" for name in MANIFESTS]
    return targets + (TD_TARGETS if REPORT_TD else []) + EXPORT_TARGETS + REPORT_TARGETS
