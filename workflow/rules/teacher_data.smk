# Teacher data (TD): the teacher transcribes the validated td_pool in shards (one single-GPU job
# each; a killed shard resumes from its .partial file), quality filters drop bad pseudo-labels,
# td_merge gathers the shards in pool order; then the student base is fine-tuned on the result
# once per seed (td_adapt: models/student_td_adapted@seed<k>), which starts the `td_adapted` OPD
# recipe of that seed.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)

TD = config["teacher_data"]
TD_ADAPT = config["td_adapt"]
TD_SHARD_IDS = list(range(TD["shards"]))
TD_DIR = f"{OUT}/td"
# Every TD output (for `rule all`): the merged manifest, its report and the adapted students.
TD_TARGETS = [
    f"{TD_DIR}/td.jsonl",
    f"{TD_DIR}/report.json",
    f"{TD_DIR}/report.md",
    *(student_td_model(seed) for seed in SEEDS),
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
    benchmark:
        f"{OUT}/benchmarks/teacher_data/shard_{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    conda:
        ENV
    threads: TD["threads"]
    resources:
        **job_resources("teacher_data", TD),
    params:
        teacher=teacher_model(),
        num_shards=TD["shards"],
        options=" ".join([stage_options(TD), family_option("teacher"), MODEL_LOADING]),
        python=interpreter,
        code=code_version("stages.teacher_data"),
    shell:
        LOG
        + "{params.python} -m stages.teacher_data --teacher {params.teacher} --input {input.pool}"
        " --output {output.manifest} --rejects {output.rejects} --report {output.report}"
        " --shard {wildcards.shard} --num-shards {params.num_shards} {params.options}"
        " --threads {threads}"


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
    resources:
        **job_resources("td_merge"),
    params:
        python=interpreter,
        code=code_version("stages.td_merge"),
    shell:
        LOG
        + "{params.python} -m stages.td_merge --shards {input.shards} --reports {input.reports}"
        " --rejects {input.rejects} --order {input.pool} --output {output.manifest}"
        " --rejects-output {output.rejects} --report {output.report}"


rule td_adapt:
    input:
        unpack(
            lambda wildcards: {
                "train": f"{TD_DIR}/td.jsonl",
                **local_model_inputs(model=student_base_model()),
            }
        ),
    output:
        model=directory(student_td_model("{seed}")),
        summary=f"{OUT}/train/{seeded('td_adapt', '{seed}')}/train_summary.json",
    log:
        f"{OUT}/logs/{seeded('td_adapt', '{seed}')}.log",
    benchmark:
        f"{OUT}/benchmarks/{seeded('td_adapt', '{seed}')}.tsv"
    wildcard_constraints:
        seed="|".join(map(str, SEEDS)),
    conda:
        ENV
    # CPUs of one node: `threads` for each of its `gpus` processes.
    threads: TD_ADAPT["threads"] * TD_ADAPT["gpus"]
    resources:
        **training_resources("td_adapt", "td_adapt", TD_ADAPT),
    params:
        launch=lambda wildcards, threads, resources: training_launcher(
            TD_ADAPT, threads, resources
        ),
        process_threads=lambda wildcards, threads: max(1, threads // TD_ADAPT["gpus"]),
        # Ranks (nodes x processes per node): the launcher above is left out of Snakemake's
        # params check (it reads the job's resources), the world it starts is not.
        world=f"{TD_ADAPT['nodes']}x{TD_ADAPT['gpus']}",
        model=student_base_model(),
        out_dir=lambda wildcards, output: Path(output.summary).parent,
        options=" ".join(
            [stage_options(TD_ADAPT), family_option("student"), MODEL_LOADING]
        ),
        code=code_version("stages.sft"),
    shell:
        LOG
        + "{params.launch} -m stages.sft --model {params.model} --train {input.train}"
        " --output-dir {params.out_dir} {params.options}"
        " --stale-checkpoints set-aside --threads {params.process_threads}"
        " --export-dir {output.model} --seed {wildcards.seed}"
