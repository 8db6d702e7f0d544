# audio-opd: on-policy distillation of a compact ASR model from a stronger teacher.
# The rules only wire paths and config values into the stage CLIs (`python -m stages.<name>`);
# every stage runs on its own too. See README.md and config/README.md.
from snakemake.utils import min_version, validate

min_version("9.0")


# Every setting, at the value a real run starts from.
configfile: "config/config.yaml"


# The demo's own values, for a demo run only, beneath anything given on the command line.
if config["demo"]["enabled"]:

    configfile: "config/demo.yaml"


# `--config seeds=[0,1,2]` arrives as strings (Snakemake reads --config values with YAML's
# BaseLoader): whole numbers written as text are the seeds that were meant.
if isinstance(config.get("seeds"), list):
    config["seeds"] = [
        int(s) if isinstance(s, str) and s.isdigit() else s for s in config["seeds"]
    ]

validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/teacher_data.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
