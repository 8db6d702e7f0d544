# Paths and config lookups shared by every rule file.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

OUT = config["output_dir"]
DEMO = config["demo"]["enabled"]
PRESETS = list(config["presets"])
# Manifests the pipeline reads: training data, the teacher-data pool, and one per eval preset.
TRAINING_MANIFESTS = ["train", "td_pool"]
MANIFESTS = TRAINING_MANIFESTS + PRESETS
ENV = "../../envs/audio-opd.yaml"


wildcard_constraints:
    name="|".join(MANIFESTS),


def configured_manifest(name):
    """The user's manifest path for `name` (real-data mode), with a clear error when missing."""
    if name in config["presets"]:
        path, where = (
            config["presets"][name].get("manifest"),
            f"presets.{name}.manifest",
        )
    else:
        path, where = config["manifests"].get(name), f"manifests.{name}"
    if not path:
        raise WorkflowError(
            f"config: {where} is not set. Give a manifest path there, or set demo.enabled: true "
            "to use the synthesized demo corpus."
        )
    return path


def raw_manifest(wildcards):
    """The manifest a `validate` job reads: the demo's synthesized one or the user's."""
    if DEMO:
        return f"{OUT}/demo/manifests/{wildcards.name}.jsonl"
    return configured_manifest(wildcards.name)


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

# Stage option passed to every stage that loads a model.
REMOTE_CODE = "--trust-remote-code" if config["models"]["trust_remote_code"] else ""


def family_option(role, flag="--family"):
    """`<flag> <family>` when models.<role>_family names the adapter family, else "" (the
    stage detects it from the checkpoint)."""
    family = config["models"][f"{role}_family"]
    return f"{flag} {family}" if family else ""


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
    limit = "max_seconds_train" if name in TRAINING_MANIFESTS else "max_seconds_eval"
    on_error = config["validate"]["on_error"]
    options = [
        f"--on-error {on_error}",
        f"--min-seconds {config['validate']['min_seconds']}",
        f"--max-seconds {config['validate'][limit]}",
        # The teacher-data pool is transcribed by the teacher; its references are optional.
        "--no-require-text" if name == "td_pool" else "--require-text",
    ]
    if on_error == "quarantine":
        rejects = Path(output.manifest).with_suffix(".rejects.jsonl")
        options.append(f"--rejects {rejects}")
    return " ".join(options)


def all_targets():
    """Everything: the report (which pulls in training, export and evaluation), plus the
    validation reports, the teacher-data report and the verified exports."""
    targets = [f"{OUT}/data/{name}.report.md" for name in MANIFESTS]
    return targets + (TD_TARGETS if REPORT_TD else []) + EXPORT_TARGETS + REPORT_TARGETS
