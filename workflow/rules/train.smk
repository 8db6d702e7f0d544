# Training: per OPD recipe and seed (config `seeds`) a calibration that gates training, then the
# OPD run itself, in calibrate/<recipe>@seed<k>/ and train/opd_<recipe>@seed<k>/ (the demo's
# bootstrap is in demo.smk, TD adaptation in teacher_data.smk).
# Run folders keep their checkpoints across reruns: only train_summary.json and the exported
# model are declared outputs, so a rerun of an interrupted job resumes (--resume auto), and a
# rerun with changed settings or inputs sets the old checkpoints aside and starts fresh.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)

CALIBRATE = config["calibrate"]
OPD = config["opd"]
OPD_TRAIN_RECIPES = OPD["recipes"]
# A recipe's run of one seed (a pattern with {recipe} and {seed}).
OPD_RUN = seeded("opd_{recipe}", "{seed}")
CALIBRATION = f"{OUT}/calibrate/{seeded('{recipe}', '{seed}')}/calibration.json"
# The OPD step and the models, shared by calibrate and train_opd so both run the same step.
OPD_STEP_OPTIONS = " ".join(
    [
        stage_options(OPD["step"]),
        family_option("student", "--student-family"),
        family_option("teacher", "--teacher-family"),
        MODEL_LOADING,
    ]
)


# Written only when every check passes; a failed calibration fails the job and leaves its
# report as calibration.failed.json beside the declared output.
# It runs with its training run's seed: it previews the batches that run starts with.
rule calibrate:
    input:
        unpack(
            lambda wildcards: local_model_inputs(
                student=recipe_student(wildcards.recipe, wildcards.seed),
                teacher=teacher_model(),
            )
        ),
        train=opd_audio(),
    output:
        CALIBRATION,
    log:
        f"{OUT}/logs/calibrate/{seeded('{recipe}', '{seed}')}.log",
    benchmark:
        f"{OUT}/benchmarks/calibrate/{seeded('{recipe}', '{seed}')}.tsv"
    wildcard_constraints:
        recipe="|".join(OPD_TRAIN_RECIPES),
        seed="|".join(map(str, SEEDS)),
    conda:
        ENV
    threads: CALIBRATE["threads"]
    resources:
        **job_resources("calibrate", CALIBRATE),
    params:
        student=lambda wildcards: recipe_student(wildcards.recipe, wildcards.seed),
        teacher=teacher_model(),
        options=" ".join([stage_options(CALIBRATE), OPD_STEP_OPTIONS]),
        python=interpreter,
        code=code_version("stages.calibrate"),
    shell:
        LOG
        + "{params.python} -m stages.calibrate --student {params.student} --teacher {params.teacher}"
        " --train {input.train} --output {output} {params.options} --threads {threads}"
        " --seed {wildcards.seed}"


rule train_opd:
    input:
        unpack(
            lambda wildcards: local_model_inputs(
                student=recipe_student(wildcards.recipe, wildcards.seed),
                teacher=teacher_model(),
            )
        ),
        train=opd_audio(),
        calibration=CALIBRATION,
    output:
        summary=f"{OUT}/train/{OPD_RUN}/train_summary.json",
    log:
        f"{OUT}/logs/train_opd/{seeded('{recipe}', '{seed}')}.log",
    benchmark:
        f"{OUT}/benchmarks/train_opd/{seeded('{recipe}', '{seed}')}.tsv"
    wildcard_constraints:
        recipe="|".join(OPD_TRAIN_RECIPES),
        seed="|".join(map(str, SEEDS)),
    conda:
        ENV
    # CPUs of one node: `threads` for each of its `gpus` processes.
    threads: OPD["threads"] * OPD["gpus"]
    resources:
        **training_resources("train_opd", "opd", OPD),
    params:
        launcher=lambda wildcards, threads, resources: training_launcher(
            OPD, threads, resources
        ),
        process_threads=lambda wildcards, threads: max(1, threads // OPD["gpus"]),
        # Ranks (nodes x processes per node): the launcher above is left out of Snakemake's
        # params check (it reads the job's resources), the world it starts is not.
        world=f"{OPD['nodes']}x{OPD['gpus']}",
        student=lambda wildcards: recipe_student(wildcards.recipe, wildcards.seed),
        teacher=teacher_model(),
        train_dir=lambda wildcards, output: Path(output.summary).parent,
        options=" ".join(
            [
                stage_options(OPD, skip=("step",)),
                "--stale-checkpoints set-aside",
                OPD_STEP_OPTIONS,
            ]
        ),
        code=code_version("stages.train_opd"),
    shell:
        LOG + "{params.launcher} -m stages.train_opd --student {params.student}"
        " --teacher {params.teacher} --train {input.train}"
        " --calibration {input.calibration} --output-dir {params.train_dir}"
        " {params.options} --threads {params.process_threads} --seed {wildcards.seed}"
