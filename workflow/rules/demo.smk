# The embedded demo: a synthesized multilingual speech corpus (espeak-ng), so the whole
# pipeline runs with no download. Only part of the DAG when demo.enabled is true.


rule synth_demo:
    output:
        manifests=expand(
            "{out}/demo/manifests/{split}.jsonl",
            out=OUT,
            split=list(config["demo"]["sizes"]),
        ),
        wavs=directory(f"{OUT}/demo/wavs"),
        details=directory(f"{OUT}/demo/details"),
        corpus=f"{OUT}/demo/corpus.json",
    log:
        f"{OUT}/logs/synth_demo.log",
    conda:
        ENV
    threads: config["demo"]["workers"]
    params:
        out_dir=lambda wildcards, output: Path(output.corpus).parent,
        seed=config["demo"]["seed"],
        sizes=" ".join(f"{k}={v}" for k, v in config["demo"]["sizes"].items()),
        languages=" ".join(config["demo"]["train_languages"]),
    shell:
        "python -m stages.synth_demo --output-dir {params.out_dir} --seed {params.seed}"
        " --sizes {params.sizes} --train-languages {params.languages}"
        " --workers {threads} 2> {log}"


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
    params:
        out_dir=lambda wildcards, output: Path(output.summary).parent,
        spec=json.dumps(config["tiny_models"]["spec"]),
        seed=config["tiny_models"]["seed"],
    shell:
        "python -m stages.tiny_models --manifests {input.train} {input.td_pool}"
        " --output-dir {params.out_dir} --spec '{params.spec}' --seed {params.seed} 2> {log}"
