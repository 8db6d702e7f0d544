# The embedded demo: a synthesized multilingual speech corpus (espeak-ng), tiny random models and
# their bootstrap into a teacher and a student base, so the whole pipeline runs with no
# download. Only part of the DAG when demo.enabled is true (its settings: config/demo.yaml).
# (No `def` here: snakemake --lint wants functions and rules in separate files.)

BOOTSTRAP = config.get("bootstrap", {})
# Bootstrap roles: the model each one becomes (models/<role>) and the tiny model it starts from.
BOOTSTRAP_INIT = {"teacher": "teacher_init", "student_base": "student_init"}
# Keys of a bootstrap role that the workflow reads itself (not stages.sft options).
BOOTSTRAP_WORKFLOW_KEYS = ("convention",)
RESTYLED_TRAIN = f"{OUT}/data/train_restyled.jsonl"


rule synth_demo:
    output:
        manifests=expand(
            "{out}/demo/manifests/{split}.jsonl",
            out=OUT,
            split=list(config["demo"].get("sizes", {})),
        ),
        wavs=directory(f"{OUT}/demo/wavs"),
        details=directory(f"{OUT}/demo/details"),
        corpus=f"{OUT}/demo/corpus.json",
    log:
        f"{OUT}/logs/synth_demo.log",
    benchmark:
        f"{OUT}/benchmarks/synth_demo.tsv"
    conda:
        ENV
    threads: config["demo"].get("workers", 1)
    resources:
        **job_resources("synth_demo"),
    params:
        out_dir=lambda wildcards, output: Path(output.corpus).parent,
        options=stage_options(config["demo"], skip=("enabled",)),
        python=interpreter,
        code=code_version("stages.synth_demo"),
    shell:
        LOG
        + "{params.python} -m stages.synth_demo --output-dir {params.out_dir} {params.options}"
        " --workers {threads}"


rule tiny_models:
    input:
        train=f"{OUT}/data/train.jsonl",
        td_pool=f"{OUT}/data/td_pool.jsonl",
    output:
        tokenizer=directory(f"{OUT}/models/tiny/tokenizer"),
        teacher=directory(f"{OUT}/models/tiny/teacher_init"),
        student=directory(f"{OUT}/models/tiny/student_init"),
        summary=f"{OUT}/models/tiny/tiny_models.json",
    log:
        f"{OUT}/logs/tiny_models.log",
    conda:
        ENV
    resources:
        **job_resources("tiny_models"),
    params:
        out_dir=lambda wildcards, output: Path(output.summary).parent,
        options=stage_options(config.get("tiny_models", {}), skip=("spec",)),
        spec=shlex.quote(json.dumps(config.get("tiny_models", {}).get("spec", {}))),
        python=interpreter,
        code=code_version("stages.tiny_models"),
    shell:
        LOG
        + "{params.python} -m stages.tiny_models --manifests {input.train} {input.td_pool}"
        " --output-dir {params.out_dir} {params.options} --spec {params.spec}"


if DEMO:

    # The train split in another transcript convention, for a role with `convention: restyled`.
    rule restyle_transcripts:
        input:
            validated("train"),
        output:
            RESTYLED_TRAIN,
        log:
            f"{OUT}/logs/restyle_transcripts.log",
        conda:
            ENV
        resources:
            **job_resources("restyle_transcripts"),
        params:
            python=interpreter,
            code=code_version("stages.restyle_transcripts"),
        shell:
            LOG
            + "{params.python} -m stages.restyle_transcripts --input {input} --output {output}"

    # SFT of a tiny random model into the demo teacher or student base: bootstrap.<role> plus the
    # keys beside the roles.
    rule bootstrap:
        input:
            model=lambda wildcards: f"{OUT}/models/tiny/{BOOTSTRAP_INIT[wildcards.role]}",
            train=lambda wildcards: (
                RESTYLED_TRAIN
                if BOOTSTRAP[wildcards.role].get("convention") == "restyled"
                else validated("train")
            ),
        output:
            model=directory(f"{OUT}/models/{{role}}"),
            summary=f"{OUT}/train/bootstrap_{{role}}/train_summary.json",
        log:
            f"{OUT}/logs/bootstrap_{{role}}.log",
        benchmark:
            f"{OUT}/benchmarks/bootstrap_{{role}}.tsv"
        wildcard_constraints:
            role="|".join(BOOTSTRAP_INIT),
        conda:
            ENV
        threads: BOOTSTRAP.get("threads", 1)
        resources:
            **job_resources("bootstrap", BOOTSTRAP),
        params:
            train_dir=lambda wildcards, output: Path(output.summary).parent,
            options=lambda wildcards: stage_options(
                BOOTSTRAP[wildcards.role], skip=BOOTSTRAP_WORKFLOW_KEYS
            ),
            shared=stage_options(BOOTSTRAP, skip=BOOTSTRAP_INIT),
            loading=MODEL_LOADING,
            python=interpreter,
            code=code_version("stages.sft"),
        shell:
            LOG
            + "{params.python} -m stages.sft --model {input.model} --train {input.train}"
            " --output-dir {params.train_dir} --export-dir {output.model}"
            " {params.options} {params.shared} {params.loading} --stale-checkpoints set-aside"
            " --threads {threads}"
