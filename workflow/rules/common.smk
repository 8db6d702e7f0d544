# Paths, config lookups and the stage-option builder shared by every rule file.
import json
import re
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError

OUT = config["output_dir"]
DEMO = config["demo"]["enabled"]
# Config keys the workflow itself acts on (jobs, resources, launch); every other key of a stage's
# section is that stage's option of the same name.
WORKFLOW_KEYS = frozenset(
    {
        "gpus",
        "launcher",
        "threads",
        "workers",
        "recipes",
        "shards",
        "student_td_adapted",
    }
)
PRESETS = list(config["presets"])
# Manifests the pipeline reads: training data, the teacher-data pool, and one per eval preset.
TRAINING_MANIFESTS = ["train", "td_pool"]
MANIFESTS = TRAINING_MANIFESTS + PRESETS
ENV = "../../envs/audio-opd.yaml"


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


# Model folders (Hugging Face format) by role. Demo: built by the DAG. Real: the config's paths.
# OPD recipes name the student they start from: `base` (the student base) or `td_adapted`
# (the base after SFT on teacher transcripts).
def teacher_model():
    return f"{OUT}/models/teacher" if DEMO else config["models"]["teacher"]


def student_base_model():
    return f"{OUT}/models/student_base" if DEMO else config["models"]["student_base"]


def student_td_model():
    return f"{OUT}/models/student_td_adapted"


def recipe_student(recipe):
    return student_base_model() if recipe == "base" else student_td_model()


def opd_model(recipe):
    return f"{OUT}/models/opd_{recipe}"


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

# Stage option passed to every stage that loads a model.
REMOTE_CODE = "--trust-remote-code" if config["models"]["trust_remote_code"] else ""


def family_option(role, flag="--family"):
    """`<flag> <family>` when models.<role>_family names the adapter family, else "" (the
    stage detects it from the checkpoint)."""
    family = config["models"][f"{role}_family"]
    return f"{flag} {family}" if family else ""


def evaluation_models():
    """Model name -> (folder or hub id, adapter family; None = from the checkpoint): the
    pipeline's own models, then `models.extra`, which may not reuse their names."""
    models = config["models"]
    student_family = models["student_family"]
    sources = {
        "student_base": (student_base_model(), student_family),
        "teacher": (teacher_model(), models["teacher_family"]),
    }
    if config["evaluate"]["student_td_adapted"]:
        sources["student_td_adapted"] = (student_td_model(), student_family)
    for recipe in config["opd"]["recipes"]:
        sources[f"opd_{recipe}"] = (opd_model(recipe), student_family)
    for name, path in models["extra"].items():
        if name in sources:
            raise WorkflowError(
                f"config: models.extra.{name} reuses the name of a pipeline model "
                f"({', '.join(sources)}); give the extra model another name."
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


def training_launcher(section):
    """How a training job of a config section (`gpus`, `launcher`) starts: one process,
    torchrun on one node, or the user's template with {gpus} filled in. Rules pass it to
    `params:` inside a function: Snakemake would read other braces of a template (${VAR})
    as wildcards."""
    gpus = section["gpus"]
    if section["launcher"] != "auto":
        return section["launcher"].replace("{gpus}", str(gpus))
    return "python" if gpus == 1 else f"torchrun --standalone --nproc_per_node {gpus}"


def validate_options(wildcards, output):
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
        rejects = Path(output.manifest).with_suffix(".rejects.jsonl")
        options.append(f"--rejects {rejects}")
    return " ".join(options)


def all_targets():
    """Everything: the report (which pulls in training, export and evaluation), plus the
    validation reports, the teacher-data report and the verified exports."""
    targets = [f"{OUT}/data/{name}.report.md" for name in MANIFESTS]
    return targets + (TD_TARGETS if REPORT_TD else []) + EXPORT_TARGETS + REPORT_TARGETS
