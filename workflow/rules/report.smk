# Report: the models x presets error-rate table (the paper's Table 1), training curves of the OPD
# runs, calibration and teacher-data summaries and provenance, in <output_dir>/report/
# (python -m stages.report --help). `snakemake --report results/report.html` then builds a
# self-contained HTML report: the table on its first page, figures and files by category.
# A model trained per seed is one row (mean ± sd over `seeds`, bootstrap intervals over the
# utterances of its rows files; config `report`). Needs eval.smk (EVAL_MODELS, EVAL_SUMMARIES,
# EVAL_ROWS) included before this file.
# (No `def` here: snakemake --lint wants functions and rules in separate files.)


report: "../report/workflow.rst"


REPORT_DIR = f"{OUT}/report"
REPORT_RECIPES = config["opd"]["recipes"]
# Every OPD run: (recipe, seed).
REPORT_RUNS = [(recipe, seed) for recipe in REPORT_RECIPES for seed in SEEDS]
# The TD report joins when something in the report was built from teacher data.
REPORT_TD = "td_adapted" in REPORT_RECIPES or config["evaluate"]["student_td_adapted"]
# Table rows and columns in the paper's order, then the others. A row is a model, not one of
# its seed folders (opd_base, not opd_base@seed0).
REPORT_MODELS = paper_order(
    list(dict.fromkeys(re.sub(r"@seed\d+$", "", name) for name in EVAL_MODELS)),
    PAPER_MODEL_ORDER,
)
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
        # Per-utterance rows: the intervals and paired comparisons come from them.
        rows=EVAL_ROWS,
        runs=[
            f"{OUT}/train/{seeded(f'opd_{recipe}', seed)}/train_summary.json"
            for recipe, seed in REPORT_RUNS
        ],
        calibrations=[
            f"{OUT}/calibrate/{seeded(recipe, seed)}/calibration.json"
            for recipe, seed in REPORT_RUNS
        ],
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
    resources:
        **job_resources("report"),
    params:
        out_dir=lambda wildcards, output: Path(output.markdown).parent,
        # Summaries are <eval_dir>/<model>/summary_<preset>.json.
        eval_dir=lambda wildcards, input: Path(input.summaries[0]).parent.parent,
        models=" ".join(REPORT_MODELS),
        presets=" ".join(REPORT_PRESETS),
        # metrics.jsonl sits beside each run's train_summary.json (not a declared output).
        metrics=lambda wildcards, input: " ".join(
            f"{Path(summary).parent.name}={Path(summary).parent / 'metrics.jsonl'}"
            for summary in input.runs
        ),
        calibrations=lambda wildcards, input: " ".join(
            f"{Path(path).parent.name}={path}" for path in input.calibrations
        ),
        seeds=" ".join(map(str, SEEDS)),
        intervals=stage_options(config["report"]),
        td=lambda wildcards, input: f"--td-report {input.td[0]}" if input.td else "",
        python=interpreter,
        code=code_version("stages.report"),
    shell:
        LOG
        + "{params.python} -m stages.report --eval-dir {params.eval_dir} --output-dir {params.out_dir}"
        " --models {params.models} --presets {params.presets}"
        " --metrics {params.metrics} --calibration {params.calibrations} {params.td}"
        " --seeds {params.seeds} {params.intervals}"
