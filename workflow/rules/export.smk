# Export: the final checkpoint of each OPD run as a verified Hugging Face folder with a model card,
# <output_dir>/models/opd_<recipe>/, the folder evaluation reads. The folder appears only after
# the reload check passed: every checkpoint
# tensor equal, and the same greedy responses and logits on a probe batch (the first preset's
# first clips). (No `def` here: snakemake --lint wants functions and rules in separate files.)

EXPORT = config["export"]
EXPORT_RECIPES = config["opd"]["recipes"]
# The verified export of a recipe's OPD run (a pattern with {recipe}).
EXPORT_DIR = opd_model("{recipe}")
# Every export (for `rule all`).
EXPORT_TARGETS = expand(EXPORT_DIR, recipe=EXPORT_RECIPES)


rule export:
    input:
        unpack(
            lambda wildcards: {
                "summary": f"{OUT}/train/opd_{wildcards.recipe}/train_summary.json",
                "probe": validated(PRESETS[0]),
                **local_model_inputs(base=recipe_student(wildcards.recipe)),
            }
        ),
    output:
        directory(EXPORT_DIR),
    log:
        f"{OUT}/logs/export/opd_{{recipe}}.log",
    wildcard_constraints:
        recipe="|".join(EXPORT_RECIPES),
    conda:
        ENV
    threads: EXPORT["threads"]
    resources:
        gpu=0 if EXPORT["device"] == "cpu" else 1,
    params:
        run_dir=lambda wildcards, input: Path(input.summary).parent,
        base=lambda wildcards: recipe_student(wildcards.recipe),
        options=" ".join([stage_options(EXPORT), family_option("student"), REMOTE_CODE]),
    shell:
        "python -m stages.export --checkpoint {params.run_dir} --base {params.base}"
        " --output {output} --probe-manifest {input.probe} {params.options}"
        " --threads {threads} 2> {log}"
