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
