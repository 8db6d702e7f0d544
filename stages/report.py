"""report: the results report — models × presets error-rate table, training, calibration, TD.

Gathers what the pipeline wrote and makes one readable report (as in the paper's Table 1: rows
base, base+OPD, base+TD+OPD, teacher and any extra models; columns the presets' CER/WER in
percent, with the relative improvement over the base row per cell and an average column).
A missing evaluation is shown as `missing` (an empty CSV cell), never as zero. The table is also
printed to stdout.

Inputs:
  --eval-dir DIR            the evaluation folder (python -m stages.evaluate writes it):
                              <model>/summary_<preset>.json and <model>/test_<preset>.jsonl
                            a model trained once per seed has one folder per seed instead:
                              <model>@seed<k>/summary_<preset>.json and test_<preset>.jsonl
                            (k an integer, e.g. opd_base@seed1 opd_base@seed2 opd_base@seed3);
                            they form one row, <model>. A model has either a plain folder or
                            seed folders, never both. Every seed needs every preset the
                            model has.
  --models NAME[=LABEL] ... rows in order, with their labels (default: every model in
                            --eval-dir, in this order: student_base=base, opd_base=base+OPD,
                            opd_td_adapted=base+TD+OPD, teacher=teacher, student_td_adapted=
                            base+TD, then the others by name; those are also the default
                            labels). NAME is the model, not a seed folder (opd_base, not
                            opd_base@seed1; naming a seed folder makes that seed a row of its
                            own). A listed model without summaries is a row of missing cells.
  --seeds K ...             the study's training seeds: a seeded model must have exactly
                            these seed folders (others, e.g. left from an earlier config, are
                            ignored; an absent one is an error). Default: every seed folder.
  --presets NAME ...        columns in order (default: aishell meeting net clean other)
  --base-model NAME         the row improvements and paired comparisons refer to (default
                            student_base)
  --metrics NAME=FILE ...   OPD runs' metrics.jsonl: training curves and a summary table (one
                            per seed: e.g. opd_base@seed1=...)
  --calibration NAME=FILE   calibration.json (or calibration.failed.json) per recipe
  --td-report FILE          the teacher-data report.json (python -m stages.td_merge)

Intervals (from the per-utterance rows, test_<preset>.jsonl, beside each summary):
  Each cell is the corpus error rate (mean over seeds ± sd over seeds when the row has
  seeds; one evaluation: n/a) with a percentile bootstrap interval over utterances
  (--resamples draws of the utterances with replacement; each recomputes total edits /
  total reference units; with seeds, the seeds' rates on the same draw are averaged). Each
  row is compared with --base-model by a paired bootstrap (the same draws for both): the
  share of resamples in which it is better (strictly lower rate; ties are not better).
  A cell better in fewer than --confidence of the resamples and worse in fewer than
  --confidence is marked ≈ (not distinguishable from the base). A cell whose rows file is
  absent has no interval (listed under the table); rows without `errors` and `ref_len`, or
  evaluations of one preset on different utterances, are errors naming the files.

Outputs in --output-dir:
  report.md            the tables, the figures, a provenance section (git commits, config
                       hashes and package versions of every input)
  results.csv          one row per model: model, label, <preset>_<metric> and
                       <preset>_rel_impr for each preset, avg, avg_rel_impr (percent, 2
                       decimals; empty = missing); then seeds and, per preset and avg,
                       _sd, _low, _high (percent), _p_better, _p_worse (shares) and
                       _vs_base (better, worse, not distinguishable)
  results_table.html   the formatted table as an HTML fragment (the Snakemake report shows it)
  report.json          the same data (rows, missing cells, seeds per model, interval
                       settings, cells without interval, training, calibration, TD summary,
                       inputs) with provenance
  error_rates.png      bars per preset and model with the bootstrap interval as error
                       bars and each seed's rate as a dot
  training_curves.png, td_filters.png   (written even without data: the figure then says
                       so)

Example:
  python -m stages.report --eval-dir results/eval --output-dir results/report \\
      --metrics opd_base=results/train/opd_base/metrics.jsonl \\
      --calibration base=results/calibrate/base/calibration.json \\
      --td-report results/td/report.json
  # seeded OPD models (eval/opd_base@seed1 ... eval/opd_base@seed3), 3 seeds required:
  python -m stages.report --eval-dir results/eval --output-dir results/report --seeds 1 2 3 \\
      --metrics opd_base@seed1=results/train/opd_base@seed1/metrics.jsonl ...
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

from stages.common.cli import parser, run_stage
from stages.common.errors import UserError
from stages.common.fsutil import outputs_together
from stages.common.jsonl import atomic_writer, read_json, write_json
from stages.common.provenance import provenance
from stages.common.settings import add_settings, as_dict, settings_from_args
from stages.reporting import plots
from stages.reporting.results import (
    DEFAULT_BASE,
    DEFAULT_LABELS,
    PAPER_PRESETS,
    ReportInputs,
    calibration_row,
    collect_results,
    csv_rows,
    html_table,
    provenance_rows,
    read_metrics,
    render_markdown,
    results_markdown,
    td_summary,
    training_summary,
    vuss_by_recipe,
)
from stages.reporting.stats import Bootstrap

log = logging.getLogger("stages.report")

PLOTS = {"Error rates": "error_rates.png", "Training curves": "training_curves.png",
         "Teacher-data filters": "td_filters.png"}


def pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (for argparse)."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def model_row(text: str) -> tuple[str, str]:
    """``NAME=LABEL``, or ``NAME`` alone (its default label)."""
    if "=" in text:
        return pair(text)
    if not text:
        raise argparse.ArgumentTypeError("empty model name")
    return text, DEFAULT_LABELS.get(text, text)


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--eval-dir", required=True, type=Path,
                   help="folder of <model>/ (or <model>@seed<k>/) evaluation folders")
    p.add_argument("--output-dir", required=True, type=Path, help="where the report goes")
    p.add_argument("--models", nargs="+", type=model_row, default=None, metavar="NAME[=LABEL]",
                   help="rows in order, optionally with labels (default: every model folder)")
    p.add_argument("--presets", nargs="+", default=list(PAPER_PRESETS),
                   help=f"columns in order (default: {' '.join(PAPER_PRESETS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="K",
                   help="training seeds every seeded model (<model>@seed<k> folders) must "
                        "have (default: the seed folders found)")
    p.add_argument("--base-model", default=DEFAULT_BASE,
                   help=f"row the relative improvements and paired comparisons refer to "
                        f"(default {DEFAULT_BASE})")
    p.add_argument("--metrics", nargs="*", type=pair, default=[], metavar="NAME=FILE",
                   help="metrics.jsonl of OPD runs")
    p.add_argument("--calibration", nargs="*", type=pair, default=[], metavar="NAME=FILE",
                   help="calibration reports per recipe")
    p.add_argument("--td-report", type=Path, default=None, help="teacher-data report.json")
    p.add_argument("--title", default="audio-opd results", help="report title")
    add_settings(p, Bootstrap, title="intervals")
    return p


def _unique(pairs: list[tuple[str, str]], option: str) -> None:
    names = [n for n, _ in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{option}: {', '.join(dupes)} given more than once")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_writer(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["model"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])


def main(args: argparse.Namespace) -> int:
    for option, pairs in (("--models", args.models or []), ("--metrics", args.metrics),
                          ("--calibration", args.calibration)):
        _unique(pairs, option)
    if len(set(args.presets)) != len(args.presets):
        raise UserError(f"--presets lists a preset twice: {' '.join(args.presets)}")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds lists a seed twice: {' '.join(map(str, args.seeds))}")
    bootstrap = settings_from_args(Bootstrap, args)
    table = collect_results(args.eval_dir, args.presets, models=args.models,
                            base=args.base_model, seeds=args.seeds, bootstrap=bootstrap)
    if table.base is None:
        log.warning("base model %r is not a row: no relative improvements", args.base_model)
    for name, label in table.models:
        if all(table.rates.get((name, p)) is None for p in table.presets):
            log.warning("%s (%s): no evaluation summaries in %s", name, label,
                        args.eval_dir / name)
    if table.no_rows:
        log.warning("no interval for %d cell(s) without per-utterance rows "
                    "(test_<preset>.jsonl): %s", len(table.no_rows),
                    ", ".join(f"{m}/{p}" for m, p in table.no_rows))

    runs = {name: read_metrics(path) for name, path in args.metrics}
    calibration_docs = [(name, path, read_json(path)) for name, path in args.calibration]
    calibrations = [calibration_row(name, doc, path) for name, path, doc in calibration_docs]
    td_report = read_json(args.td_report) if args.td_report else None
    td = td_summary(td_report, args.td_report) if td_report is not None else None

    sources: list[tuple[str, Any, Any]] = [
        ("evaluation", path, table.summaries[key].get("provenance"))
        for key, path in sorted(table.sources.items(), key=lambda item: str(item[1]))]
    sources += [("calibration", path, doc.get("provenance"))
                for _, path, doc in calibration_docs]
    if td_report is not None:
        sources.append(("teacher data", args.td_report, td_report.get("provenance")))
    inputs = ReportInputs(table=table,
                          training=[training_summary(n, rows) for n, rows in runs.items()],
                          calibration=calibrations, td=td,
                          provenance=provenance_rows(sources), plots=PLOTS)

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    written = [out / name for name in (*PLOTS.values(), "results.csv", "results_table.html",
                                       "report.json", "report.md")]
    with outputs_together(*written):  # no table or plot left without report.md
        plots.error_rates(table, out / PLOTS["Error rates"])
        plots.training_curves(runs, out / PLOTS["Training curves"])
        plots.td_filters(td, out / PLOTS["Teacher-data filters"])
        rows = csv_rows(table)
        write_csv(out / "results.csv", rows)
        with atomic_writer(out / "results_table.html") as handle:
            handle.write(html_table(table))
        settings = {"eval_dir": str(args.eval_dir), "models": table.models,
                    "presets": table.presets, "base": table.base, "seeds": args.seeds,
                    "intervals": as_dict(bootstrap),
                    "metrics": dict(args.metrics), "calibration": dict(args.calibration),
                    "td_report": str(args.td_report) if args.td_report else None}
        write_json(out / "report.json", {
            "title": args.title, "base": table.base, "presets": table.presets,
            "metrics": table.metrics, "rows": rows,
            "seeds": {name: table.seeds(name) for name, _ in table.models},
            "intervals": as_dict(bootstrap),
            "no_interval": [{"model": m, "preset": p} for m, p in table.no_rows],
            "missing": [{"model": m, "preset": p} for m, p in table.missing()],
            "training": inputs.training, "calibration": calibrations,
            "calibration_vuss_by_recipe": vuss_by_recipe(calibrations), "teacher_data": td,
            "inputs": [{k: v for k, v in r.items() if k != "versions"}
                       for r in inputs.provenance],
            "provenance": provenance(settings)})
        with atomic_writer(out / "report.md") as handle:  # last: its presence means complete
            handle.write(render_markdown(inputs, title=args.title))

    print(f"\n{args.title}: error rates (%), relative improvement over "
          f"{dict(table.models).get(table.base, 'n/a')} in parentheses\n")
    print(results_markdown(table))
    print(f"\nreport: {out / 'report.md'}")
    missing = table.missing()
    log.info("report for %d models x %d presets (%d missing) -> %s", len(table.models),
             len(table.presets), len(missing), out)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
