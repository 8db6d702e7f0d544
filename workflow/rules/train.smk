# Training: the demo's bootstrap (SFT of the tiny random models into a teacher and a student
# base), then per OPD recipe a calibration that gates training and the OPD run itself.
# Run folders keep their checkpoints across reruns: only train_summary.json and the exported
# model are declared outputs, so a rerun of an interrupted job resumes (--resume auto), and a
# rerun with changed settings or inputs sets the old checkpoints aside and starts fresh.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)
import shlex

BOOTSTRAP = config["bootstrap"]
CALIBRATE = config["calibrate"]
OPD = config["opd"]
OPD_TRAIN_RECIPES = OPD["recipes"]
# Options of the OPD step, shared by calibrate and train_opd so both run the same step.
OPD_STEP_OPTIONS = " ".join(
    [
        f"--top-k {OPD['top_k']} --temperature {OPD['temperature']}",
        f"--max-new-tokens {OPD['max_new_tokens']}",
        "" if OPD["keep_stop_token"] else "--no-keep-stop-token",
        (
            f"--sample --sample-temperature {OPD['sample_temperature']}"
            if OPD["sample"]
            else ""
        ),
        f"--fallback-language {shlex.quote(OPD['fallback_language'])}",
        f"--latin-language {shlex.quote(OPD['latin_language'])}",
        family_option("student", "--student-family"),
        family_option("teacher", "--teacher-family"),
        REMOTE_CODE,
    ]
)
# SFT options of a bootstrap run (`role`: teacher or student).
bootstrap_options = lambda role: " ".join(
    [
        f"--max-steps {BOOTSTRAP[role]['max_steps']}",
        f"--batch-size {BOOTSTRAP[role]['batch_size']}",
        f"--lr {BOOTSTRAP[role]['lr']} --warmup-steps {BOOTSTRAP[role]['warmup_steps']}",
        f"--schedule {BOOTSTRAP[role]['schedule']}",
        f"--min-lr-ratio {BOOTSTRAP[role]['min_lr_ratio']}",
        f"--weight-decay {BOOTSTRAP['weight_decay']}",
        f"--save-every {BOOTSTRAP['save_every']} --seed {BOOTSTRAP['seed']}",
        f"--device {BOOTSTRAP['device']} --stale-checkpoints set-aside",
    ]
)


if DEMO:

    rule bootstrap_teacher:
        input:
            model=f"{OUT}/models/tiny/teacher_init",
            train=validated("train"),
        output:
            model=directory(teacher_model()),
            summary=f"{OUT}/train/bootstrap_teacher/train_summary.json",
        log:
            f"{OUT}/logs/bootstrap_teacher.log",
        conda:
            ENV
        threads: BOOTSTRAP["threads"]
        resources:
            gpu=1,
        params:
            train_dir=lambda wildcards, output: Path(output.summary).parent,
            options=bootstrap_options("teacher"),
        shell:
            "python -m stages.sft --model {input.model} --train {input.train}"
            " --output-dir {params.train_dir} --export-dir {output.model}"
            " {params.options} --threads {threads} 2> {log}"

    rule bootstrap_student:
        input:
            model=f"{OUT}/models/tiny/student_init",
            train=validated("train"),
        output:
            model=directory(student_base_model()),
            summary=f"{OUT}/train/bootstrap_student/train_summary.json",
        log:
            f"{OUT}/logs/bootstrap_student.log",
        conda:
            ENV
        threads: BOOTSTRAP["threads"]
        resources:
            gpu=1,
        params:
            train_dir=lambda wildcards, output: Path(output.summary).parent,
            options=bootstrap_options("student"),
        shell:
            "python -m stages.sft --model {input.model} --train {input.train}"
            " --output-dir {params.train_dir} --export-dir {output.model}"
            " {params.options} --threads {threads} 2> {log}"


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
        options=" ".join(
            [
                f"--batches {CALIBRATE['batches']} --batch-size {CALIBRATE['batch_size']}",
                f"--seed {OPD['seed']} --device {CALIBRATE['device']}",
                f"--min-vocab-coverage {CALIBRATE['min_vocab_coverage']}",
                f"--min-nonempty-ratio {CALIBRATE['min_nonempty_ratio']}",
                f"--min-stopped-ratio {CALIBRATE['min_stopped_ratio']}",
                f"--max-unmapped-fraction {CALIBRATE['max_unmapped_fraction']}",
                f"--max-initial-loss {CALIBRATE['max_initial_loss']}",
                (
                    f"--min-vuss {CALIBRATE['min_vuss']}"
                    if CALIBRATE["min_vuss"] is not None
                    else ""
                ),
                OPD_STEP_OPTIONS,
            ]
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
                f"--max-steps {OPD['max_steps']} --batch-size {OPD['batch_size']}",
                f"--grad-accum {OPD['grad_accum']} --max-grad-norm {OPD['max_grad_norm']}",
                f"--lr {OPD['lr']} --warmup-steps {OPD['warmup_steps']}",
                f"--schedule {OPD['schedule']} --min-lr-ratio {OPD['min_lr_ratio']}",
                f"--weight-decay {OPD['weight_decay']}",
                f"--save-every {OPD['save_every']} --keep-last {OPD['keep_last']}",
                f"--seed {OPD['seed']} --device {OPD['device']}",
                "--stale-checkpoints set-aside",
                OPD_STEP_OPTIONS,
            ]
        ),
    shell:
        "{params.launcher} -m stages.train_opd --student {params.student}"
        " --teacher {params.teacher} --train {input.train}"
        " --calibration {input.calibration} --output-dir {params.train_dir}"
        " {params.options} --threads {threads} 2> {log}"
