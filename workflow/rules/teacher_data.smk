# Teacher data (TD): the teacher transcribes the validated td_pool in shards (one single-GPU job
# each; a killed shard resumes from its .partial file), quality filters drop bad pseudo-labels,
# td_merge gathers the shards in pool order; then the student base is fine-tuned on the result
# (td_adapt), which starts the `td_adapted` OPD recipe.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)

TD = config["teacher_data"]
TD_ADAPT = config["td_adapt"]
TD_SHARD_IDS = list(range(TD["shards"]))
TD_DIR = f"{OUT}/td"
# Every TD output (for `rule all`): the merged manifest, its report and the adapted student.
TD_TARGETS = [
    f"{TD_DIR}/td.jsonl",
    f"{TD_DIR}/report.json",
    f"{TD_DIR}/report.md",
    student_td_model(),
]


rule teacher_data:
    input:
        unpack(
            lambda wildcards: {
                "pool": validated("td_pool"),
                **local_model_inputs(teacher=teacher_model()),
            }
        ),
    output:
        manifest=f"{TD_DIR}/shards/shard_{{shard}}.jsonl",
        rejects=f"{TD_DIR}/shards/shard_{{shard}}.rejects.jsonl",
        report=f"{TD_DIR}/shards/shard_{{shard}}.report.json",
    log:
        f"{OUT}/logs/teacher_data/shard_{{shard}}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        ENV
    threads: TD["threads"]
    resources:
        gpu=1,
    params:
        teacher=teacher_model(),
        num_shards=TD["shards"],
        options=" ".join([stage_options(TD), family_option("teacher"), REMOTE_CODE]),
    shell:
        "python -m stages.teacher_data --teacher {params.teacher} --input {input.pool}"
        " --output {output.manifest} --rejects {output.rejects} --report {output.report}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} {params.options}"
        " --threads {threads} 2> {log}"


rule td_merge:
    input:
        pool=validated("td_pool"),
        shards=expand(f"{TD_DIR}/shards/shard_{{i}}.jsonl", i=TD_SHARD_IDS),
        rejects=expand(f"{TD_DIR}/shards/shard_{{i}}.rejects.jsonl", i=TD_SHARD_IDS),
        reports=expand(f"{TD_DIR}/shards/shard_{{i}}.report.json", i=TD_SHARD_IDS),
    output:
        manifest=f"{TD_DIR}/td.jsonl",
        rejects=f"{TD_DIR}/rejects.jsonl",
        report=f"{TD_DIR}/report.json",
        summary=f"{TD_DIR}/report.md",
    log:
        f"{OUT}/logs/td_merge.log",
    conda:
        ENV
    shell:
        "python -m stages.td_merge --shards {input.shards} --reports {input.reports}"
        " --rejects {input.rejects} --order {input.pool} --output {output.manifest}"
        " --rejects-output {output.rejects} --report {output.report} 2> {log}"


rule td_adapt:
    input:
        unpack(
            lambda wildcards: {
                "train": f"{TD_DIR}/td.jsonl",
                **local_model_inputs(model=student_base_model()),
            }
        ),
    output:
        model=directory(student_td_model()),
        summary=f"{OUT}/train/td_adapt/train_summary.json",
    log:
        f"{OUT}/logs/td_adapt.log",
    conda:
        ENV
    threads: TD_ADAPT["threads"]
    resources:
        gpu=TD_ADAPT["gpus"],
    params:
        launch=lambda wildcards: training_launcher(TD_ADAPT),
        model=student_base_model(),
        out_dir=lambda wildcards, output: Path(output.summary).parent,
        options=" ".join(
            [stage_options(TD_ADAPT), family_option("student"), REMOTE_CODE]
        ),
    shell:
        "{params.launch} -m stages.sft --model {params.model} --train {input.train}"
        " --output-dir {params.out_dir} {params.options}"
        " --stale-checkpoints set-aside --threads {threads}"
        " --export-dir {output.model} 2> {log}"
