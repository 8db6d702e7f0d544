# Report: the models x presets error-rate table (the paper's Table 1), training curves of the OPD
# runs, calibration and teacher-data summaries and provenance, in <output_dir>/report/
# (python -m stages.report --help). `snakemake --report results/report.html` then builds a
# self-contained HTML report: the table on its first page, figures and files by category.
# Needs eval.smk (EVAL_MODELS, EVAL_SUMMARIES) included before this file.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)


report: "../report/workflow.rst"


REPORT_DIR = f"{OUT}/report"
REPORT_RECIPES = config["opd"]["recipes"]
# The TD report joins when something in the report was built from teacher data.
REPORT_TD = "td_adapted" in REPORT_RECIPES or config["evaluate"]["student_td_adapted"]
# Table rows and columns in the paper's order, then the others.
REPORT_MODELS = paper_order(EVAL_MODELS, PAPER_MODEL_ORDER)
REPORT_PRESETS = paper_order(PRESETS, PAPER_PRESET_ORDER)
# Every report output (for `rule all`).
REPORT_TARGETS = [
    f"{REPORT_DIR}/{name}"
    for name in (
        "report.md",
        "results.csv",
        "results_table.html",
        "report.json",
        "error_rates.png",
        "training_curves.png",
        "td_filters.png",
    )
]


rule report:
    input:
        summaries=EVAL_SUMMARIES,
        runs=expand(
            "{out}/train/opd_{recipe}/train_summary.json",
            out=OUT,
            recipe=REPORT_RECIPES,
        ),
        calibrations=expand(
            "{out}/calibrate/{recipe}/calibration.json", out=OUT, recipe=REPORT_RECIPES
        ),
        td=[f"{OUT}/td/report.json"] if REPORT_TD else [],
    output:
        markdown=report(
            f"{REPORT_DIR}/report.md",
            caption="../report/report_md.rst",
            category="Results",
        ),
        csv=report(
            f"{REPORT_DIR}/results.csv",
            caption="../report/results_csv.rst",
            category="Results",
        ),
        html=report(
            f"{REPORT_DIR}/results_table.html",
            caption="../report/results_table.rst",
            category="Results",
        ),
        json=f"{REPORT_DIR}/report.json",
        error_rates=report(
            f"{REPORT_DIR}/error_rates.png",
            caption="../report/error_rates.rst",
            category="Results",
        ),
        curves=report(
            f"{REPORT_DIR}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        td_filters=report(
            f"{REPORT_DIR}/td_filters.png",
            caption="../report/td_filters.rst",
            category="Teacher data",
        ),
    log:
        f"{OUT}/logs/report.log",
    conda:
        ENV
    params:
        out_dir=lambda wildcards, output: Path(output.markdown).parent,
        # Summaries are <eval_dir>/<model>/summary_<preset>.json.
        eval_dir=lambda wildcards, input: Path(input.summaries[0]).parent.parent,
        models=" ".join(REPORT_MODELS),
        presets=" ".join(REPORT_PRESETS),
        # metrics.jsonl sits beside each run's train_summary.json (not a declared output).
        metrics=lambda wildcards, input: " ".join(
            f"opd_{recipe}={Path(summary).parent / 'metrics.jsonl'}"
            for recipe, summary in zip(REPORT_RECIPES, input.runs)
        ),
        calibrations=lambda wildcards, input: " ".join(
            f"{recipe}={path}"
            for recipe, path in zip(REPORT_RECIPES, input.calibrations)
        ),
        td=lambda wildcards, input: f"--td-report {input.td[0]}" if input.td else "",
    shell:
        "python -m stages.report --eval-dir {params.eval_dir} --output-dir {params.out_dir}"
        " --models {params.models} --presets {params.presets}"
        " --metrics {params.metrics} --calibration {params.calibrations} {params.td}"
        " 2> {log}"
