# Evaluation: every model on every preset, in one single-GPU job per model (python -m
# stages.evaluate_presets: one model load and warm-up for all presets; a job is mostly those).
# Files keep the reference recipe's names, so existing eval folders and tools work unchanged:
# eval/<model>/test_<preset>.jsonl (rows, worst first) and eval/<model>/summary_<preset>.json,
# where <model> is a model's name or, for a model trained once per seed (config `seeds`), its
# run of one seed: `opd_base@seed<k>` (the report's layout).
# (No `def` here: snakemake --lint wants functions and rules in separate files.)
# Model name -> (folder or hub id, adapter family or None): see evaluation_models().
EVAL_MODEL_SOURCES = evaluation_models()
EVAL_MODELS = list(EVAL_MODEL_SOURCES)
# Model name -> its folder (or hub id).
eval_model_dir = lambda name: EVAL_MODEL_SOURCES[name][0]

EVAL_SUMMARIES = expand(
    "{out}/eval/{model}/summary_{preset}.json",
    out=OUT,
    model=EVAL_MODELS,
    preset=PRESETS,
)
# Per-utterance rows, in the order of EVAL_SUMMARIES (the report's intervals come from them).
EVAL_ROWS = expand(
    "{out}/eval/{model}/test_{preset}.jsonl", out=OUT, model=EVAL_MODELS, preset=PRESETS
)
# Every evaluation output (for `rule all`): rows and summary per model and preset.
EVAL_TARGETS = EVAL_SUMMARIES + EVAL_ROWS


rule evaluate:
    input:
        # The model folder is an input unless the model is a hub id.
        unpack(
            lambda wildcards: {
                "manifests": [validated(preset) for preset in PRESETS],
                **local_model_inputs(model=eval_model_dir(wildcards.model)),
            }
        ),
    output:
        rows=expand(f"{OUT}/eval/{{{{model}}}}/test_{{preset}}.jsonl", preset=PRESETS),
        summaries=expand(
            f"{OUT}/eval/{{{{model}}}}/summary_{{preset}}.json", preset=PRESETS
        ),
    log:
        f"{OUT}/logs/evaluate/{{model}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{model}}.tsv"
    wildcard_constraints:
        model="|".join(map(re.escape, EVAL_MODELS)),
    conda:
        ENV
    threads: config["evaluate"]["threads"]
    resources:
        **job_resources("evaluate", config["evaluate"]),
    params:
        model=lambda wildcards: eval_model_dir(wildcards.model),
        family=lambda wildcards: (
            f"--family {EVAL_MODEL_SOURCES[wildcards.model][1]}"
            if EVAL_MODEL_SOURCES[wildcards.model][1]
            else ""
        ),
        folder=lambda wildcards: f"{OUT}/eval/{wildcards.model}",
        # Each preset's manifest, metric and normalizer.
        presets=stage_options(
            {
                "preset": {name: validated(name) for name in PRESETS},
                **{
                    key: {name: config["presets"][name][key] for name in PRESETS}
                    for key in ("metric", "normalizer")
                },
            }
        ),
        options=" ".join([stage_options(config["evaluate"]), MODEL_LOADING]),
        python=interpreter,
        code=code_version("stages.evaluate_presets"),
    shell:
        LOG + "{params.python} -m stages.evaluate_presets --model {params.model}"
        " --output-dir {params.folder} {params.presets} --model-name {wildcards.model}"
        " {params.options} {params.family} --threads {threads}"
