# Training: per OPD recipe a calibration that gates training, then the OPD run itself (the demo's
# bootstrap is in demo.smk, TD adaptation in teacher_data.smk).
# Run folders keep their checkpoints across reruns: only train_summary.json and the exported
# model are declared outputs, so a rerun of an interrupted job resumes (--resume auto), and a
# rerun with changed settings or inputs sets the old checkpoints aside and starts fresh.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)

CALIBRATE = config["calibrate"]
OPD = config["opd"]
OPD_TRAIN_RECIPES = OPD["recipes"]
# The OPD step and the models, shared by calibrate and train_opd so both run the same step.
OPD_STEP_OPTIONS = " ".join(
    [
        stage_options(OPD["step"]),
        family_option("student", "--student-family"),
        family_option("teacher", "--teacher-family"),
        REMOTE_CODE,
    ]
)


# Written only when every check passes; a failed calibration fails the job and leaves its
# report as calibration.failed.json beside the declared output.
rule calibrate:
    input:
        unpack(
            lambda wildcards: local_model_inputs(
                student=recipe_student(wildcards.recipe), teacher=teacher_model()
            )
        ),
        train=validated("train"),
    output:
        f"{OUT}/calibrate/{{recipe}}/calibration.json",
    log:
        f"{OUT}/logs/calibrate/{{recipe}}.log",
    wildcard_constraints:
        recipe="|".join(OPD_TRAIN_RECIPES),
    conda:
        ENV
    threads: CALIBRATE["threads"]
    resources:
        gpu=1,
    params:
        student=lambda wildcards: recipe_student(wildcards.recipe),
        teacher=teacher_model(),
        # Training's seed: calibration previews the batches training starts with.
        options=" ".join(
            [stage_options(CALIBRATE), f"--seed {OPD['seed']}", OPD_STEP_OPTIONS]
        ),
    shell:
        "python -m stages.calibrate --student {params.student} --teacher {params.teacher}"
        " --train {input.train} --output {output} {params.options}"
        " --threads {threads} 2> {log}"


rule train_opd:
    input:
        unpack(
            lambda wildcards: local_model_inputs(
                student=recipe_student(wildcards.recipe), teacher=teacher_model()
            )
        ),
        train=validated("train"),
        calibration=f"{OUT}/calibrate/{{recipe}}/calibration.json",
    output:
        summary=f"{OUT}/train/opd_{{recipe}}/train_summary.json",
    log:
        f"{OUT}/logs/train_opd/{{recipe}}.log",
    wildcard_constraints:
        recipe="|".join(OPD_TRAIN_RECIPES),
    conda:
        ENV
    threads: OPD["threads"]
    resources:
        gpu=OPD["gpus"],
    params:
        launcher=lambda wildcards: training_launcher(OPD),
        student=lambda wildcards: recipe_student(wildcards.recipe),
        teacher=teacher_model(),
        train_dir=lambda wildcards, output: Path(output.summary).parent,
        options=" ".join(
            [
                stage_options(OPD, skip=("step",)),
                "--stale-checkpoints set-aside",
                OPD_STEP_OPTIONS,
            ]
        ),
    shell:
        "{params.launcher} -m stages.train_opd --student {params.student}"
        " --teacher {params.teacher} --train {input.train}"
        " --calibration {input.calibration} --output-dir {params.train_dir}"
        " {params.options} --threads {threads} 2> {log}"
