# Export: the final checkpoint of each OPD run as a verified Hugging Face folder with a model card,
# <output_dir>/models/opd_<recipe>@seed<k>/, the folder evaluation reads. The folder appears only after
# the reload check passed: every checkpoint
# tensor equal, and the same greedy responses and logits on a probe batch (the first preset's
# first clips). Needs train.smk (OPD_RUN) included before this file.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)

EXPORT = config["export"]
EXPORT_RECIPES = config["opd"]["recipes"]
# The verified export of a recipe's OPD run of one seed (a pattern with {recipe} and {seed}).
EXPORT_DIR = opd_model("{recipe}", "{seed}")
# Every export (for `rule all`).
EXPORT_TARGETS = expand(EXPORT_DIR, recipe=EXPORT_RECIPES, seed=SEEDS)


rule export:
    input:
        unpack(
            lambda wildcards: {
                "summary": f"{OUT}/train/{OPD_RUN}/train_summary.json".format(
                    **wildcards
                ),
                "probe": validated(PRESETS[0]),
                **local_model_inputs(
                    base=recipe_student(wildcards.recipe, wildcards.seed)
                ),
            }
        ),
    output:
        directory(EXPORT_DIR),
    log:
        f"{OUT}/logs/export/{OPD_RUN}.log",
    benchmark:
        f"{OUT}/benchmarks/export/{OPD_RUN}.tsv"
    wildcard_constraints:
        recipe="|".join(EXPORT_RECIPES),
        seed="|".join(map(str, SEEDS)),
    conda:
        ENV
    threads: EXPORT["threads"]
    resources:
        **job_resources("export", EXPORT),
    params:
        run_dir=lambda wildcards, input: Path(input.summary).parent,
        base=lambda wildcards: recipe_student(wildcards.recipe, wildcards.seed),
        options=" ".join(
            [stage_options(EXPORT), family_option("student"), MODEL_LOADING]
        ),
        python=interpreter,
        code=code_version("stages.export"),
    shell:
        LOG
        + "{params.python} -m stages.export --checkpoint {params.run_dir} --base {params.base}"
        " --output {output} --probe-manifest {input.probe} {params.options}"
        " --threads {threads}"
