# Evaluation: every model on every preset, one single-GPU job each. Files keep the reference
# recipe's names, so existing eval folders and tools work unchanged:
# eval/<model>/test_<preset>.jsonl (rows, worst first) and eval/<model>/summary_<preset>.json.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)
import re

# OPD recipes whose exported students are evaluated (the `opd` section may list them).
OPD_RECIPES = config["opd"]["recipes"]

# Model name -> (folder or hub id, adapter family; None = from the checkpoint's model_type):
# the pipeline's own models, then `models.extra`, which may not reuse their names.
EVAL_MODEL_SOURCES = {
    "student_base": (student_base_model(), config["models"]["student_family"]),
    "teacher": (teacher_model(), config["models"]["teacher_family"]),
}
if config["evaluate"]["student_td_adapted"]:
    EVAL_MODEL_SOURCES["student_td_adapted"] = (
        student_td_model(),
        config["models"]["student_family"],
    )
for _recipe in OPD_RECIPES:
    EVAL_MODEL_SOURCES[f"opd_{_recipe}"] = (
        opd_model(_recipe),
        config["models"]["student_family"],
    )
for _name, _path in config["models"]["extra"].items():
    if _name in EVAL_MODEL_SOURCES:
        raise WorkflowError(
            f"config: models.extra.{_name} reuses the name of a pipeline model "
            f"({', '.join(EVAL_MODEL_SOURCES)}); give the extra model another name."
        )
    # The name becomes a folder under eval/ and a wildcard value.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", _name):
        raise WorkflowError(
            f"config: models.extra: {_name!r} is not a usable model name; use letters, digits, "
            "'_', '.' and '-'."
        )
    EVAL_MODEL_SOURCES[_name] = (_path, None)

EVAL_MODELS = list(EVAL_MODEL_SOURCES)
# Model name -> its folder (or hub id).
eval_model_dir = lambda name: EVAL_MODEL_SOURCES[name][0]

EVAL_SUMMARIES = expand(
    "{out}/eval/{model}/summary_{preset}.json",
    out=OUT,
    model=EVAL_MODELS,
    preset=PRESETS,
)
# Every evaluation output (for `rule all`): rows and summary per model and preset.
EVAL_TARGETS = EVAL_SUMMARIES + expand(
    "{out}/eval/{model}/test_{preset}.jsonl", out=OUT, model=EVAL_MODELS, preset=PRESETS
)


rule evaluate:
    input:
        # The model folder is an input unless the model is a hub id.
        unpack(
            lambda wildcards: {
                "manifest": validated(wildcards.preset),
                **local_model_inputs(model=eval_model_dir(wildcards.model)),
            }
        ),
    output:
        rows=f"{OUT}/eval/{{model}}/test_{{preset}}.jsonl",
        summary=f"{OUT}/eval/{{model}}/summary_{{preset}}.json",
    log:
        f"{OUT}/logs/evaluate/{{model}}/{{preset}}.log",
    wildcard_constraints:
        model="|".join(map(re.escape, EVAL_MODELS)),
        preset="|".join(map(re.escape, PRESETS)),
    conda:
        ENV
    threads: config["evaluate"]["threads"]
    resources:
        gpu=1,
    params:
        model=lambda wildcards: eval_model_dir(wildcards.model),
        family=lambda wildcards: (
            f"--family {EVAL_MODEL_SOURCES[wildcards.model][1]}"
            if EVAL_MODEL_SOURCES[wildcards.model][1]
            else ""
        ),
        metric=lambda wildcards: config["presets"][wildcards.preset]["metric"],
        normalizer=lambda wildcards: config["presets"][wildcards.preset]["normalizer"],
        batch_size=config["evaluate"]["batch_size"],
        max_new_tokens=config["evaluate"]["max_new_tokens"],
        device=config["evaluate"]["device"],
        dtype=config["evaluate"]["dtype"],
        language_hint="on" if config["evaluate"]["language_hint"] else "off",
        remote_code=REMOTE_CODE,
    shell:
        "python -m stages.evaluate --model {params.model} --input {input.manifest}"
        " --output {output.rows} --summary {output.summary}"
        " --model-name {wildcards.model} --preset {wildcards.preset}"
        " --metric {params.metric} --normalizer {params.normalizer}"
        " --batch-size {params.batch_size} --max-new-tokens {params.max_new_tokens}"
        " --device {params.device} --dtype {params.dtype}"
        " --language-hint {params.language_hint} {params.family} {params.remote_code}"
        " --threads {threads} 2> {log}"
