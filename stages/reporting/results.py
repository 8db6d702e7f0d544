"""The results report: the models × presets table (as in the paper's Table 1) and its companions.

Inputs are the files the pipeline already writes: the evaluation summaries
(``<eval-dir>/<model>/summary_<preset>.json``), the OPD runs' ``metrics.jsonl``, the
calibration reports and the teacher-data report. Everything here is pure data handling (no
plotting, no argv): :func:`collect_results` builds a :class:`ResultsTable`; the render functions
turn it and the other inputs into Markdown, CSV rows and an HTML table.

Numbers: error rates are shown in percent with two decimals. The relative improvement of a cell
is ``(base - model) / base`` in percent (positive: fewer errors than the base row), computed from
the unrounded rates; the average column is the mean of a row's preset error rates and exists only
when every preset of the row has one. A missing summary is a missing cell, shown as ``missing``
(empty in the CSV), never as zero.

Uncertainty: a model trained per seed has one evaluation folder per seed
(:mod:`stages.reporting.evaluations`); its cells are the mean over seeds ± their sd. With the
per-utterance rows beside the summaries, :func:`add_intervals` adds a bootstrap interval to
every cell and a paired comparison with the base (:mod:`stages.reporting.stats` says how);
cells that cannot be told from the base are marked ``≈``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.errors import UserError
from stages.common.jsonl import read_json, read_jsonl
from stages.reporting.evaluations import (
    Run,
    UtteranceCounts,
    align,
    group_runs,
    read_counts,
    run_of,
)
from stages.reporting.stats import (
    Bootstrap,
    CellStats,
    average_stats,
    format_interval,
    preset_stats,
)

PAPER_PRESETS = ("aishell", "meeting", "net", "clean", "other")
# The metric of each paper preset, for the header of a column that has no summary at all.
KNOWN_METRICS = {"aishell": "cer", "meeting": "cer", "net": "cer", "clean": "wer",
                 "other": "wer"}
# Row labels of the pipeline's own models, in the paper's order (extras follow).
DEFAULT_LABELS = {"student_base": "base", "opd_base": "base+OPD",
                  "opd_td_adapted": "base+TD+OPD", "teacher": "teacher",
                  "student_td_adapted": "base+TD"}
DEFAULT_BASE = "student_base"
MISSING = "missing"
_SUMMARY = re.compile(r"^summary_(.+)\.json$")


# ---- evaluation summaries -------------------------------------------------------------------

def read_model_summaries(model_dir: str | Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``{preset: (path, summary)}`` for every ``summary_<preset>.json`` in ``model_dir``."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return found
    for path in sorted(model_dir.iterdir()):
        match = _SUMMARY.match(path.name)
        if not match:
            continue
        summary = read_json(path)
        if not isinstance(summary, dict) or "rate" not in summary or "metric" not in summary:
            raise UserError(f"{path}: not an evaluation summary (needs `rate` and `metric`); "
                            "give the summary_<preset>.json files python -m stages.evaluate "
                            "writes")
        rate = summary["rate"]
        if rate is not None and not (isinstance(rate, int | float) and math.isfinite(rate)
                                     and rate >= 0):
            raise UserError(f"{path}: `rate` is {rate!r}; expected a non-negative number or null")
        found[match.group(1)] = (path, summary)
    return found


def relative_improvement(base: float | None, value: float | None) -> float | None:
    """``(base - value) / base`` in percent; None when either is missing or the base is 0."""
    if base is None or value is None or base == 0:
        return None
    return 100.0 * (base - value) / base


@dataclass
class ResultsTable:
    """Error rates (fractions) by (model, preset); ``None`` where no summary exists."""

    models: list[tuple[str, str]]  # (name, label), row order
    presets: list[str]
    metrics: dict[str, str]  # preset -> cer | wer
    rates: dict[tuple[str, str], float | None]
    sources: dict[tuple[str, str], Path] = field(default_factory=dict)
    summaries: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    base: str | None = DEFAULT_BASE
    # model -> its evaluations (one, or one per seed); sources and summaries are keyed by
    # (run folder, preset), which is (model, preset) for a single evaluation.
    runs: dict[str, list[Run]] = field(default_factory=dict)
    # (model, preset) -> interval and paired comparison; preset None: the average column.
    cells: dict[tuple[str, str | None], CellStats] = field(default_factory=dict)
    no_rows: list[tuple[str, str]] = field(default_factory=list)  # rates without rows files
    bootstrap: Bootstrap | None = None  # None: intervals were not computed

    def rate_percent(self, model: str, preset: str) -> float | None:
        rate = self.rates.get((model, preset))
        return None if rate is None else 100.0 * rate

    def average(self, model: str) -> float | None:
        """Mean error rate (percent) over the presets; None unless all are present."""
        values = [self.rate_percent(model, p) for p in self.presets]
        if not values or any(v is None for v in values):
            return None
        return math.fsum(values) / len(values)

    def improvement(self, model: str, preset: str | None) -> float | None:
        """Relative improvement over the base row (preset None: of the average)."""
        if self.base is None or model == self.base:
            return None
        if preset is None:
            return relative_improvement(self.average(self.base), self.average(model))
        return relative_improvement(self.rate_percent(self.base, preset),
                                    self.rate_percent(model, preset))

    def missing(self) -> list[tuple[str, str]]:
        return [(m, p) for m, _ in self.models for p in self.presets
                if self.rates.get((m, p)) is None]

    def column(self, preset: str) -> str:
        return f"{preset} {self.metrics[preset].upper()}"

    def seeds(self, model: str) -> list[int]:
        """The training seeds of a seeded model ([] for a single evaluation)."""
        return [r.seed for r in self.runs.get(model, []) if r.seed is not None]

    @property
    def seeded(self) -> bool:
        """Some row averages several evaluations (so its cells show a seed sd)."""
        return any(len(runs) > 1 for runs in self.runs.values())


def default_model_order(names: Iterable[str]) -> list[str]:
    """The pipeline's models in the paper's order, then the others alphabetically."""
    names = list(dict.fromkeys(names))
    known = [n for n in DEFAULT_LABELS if n in names]
    return known + sorted(n for n in names if n not in DEFAULT_LABELS)


def collect_results(eval_dir: str | Path, presets: Sequence[str], *,
                    models: Sequence[tuple[str, str]] | None = None,
                    base: str | None = DEFAULT_BASE, seeds: Sequence[int] | None = None,
                    bootstrap: Bootstrap | None = None) -> ResultsTable:
    """Read every model's summaries under ``eval_dir`` (one folder per model, or one per
    training seed: see :mod:`stages.reporting.evaluations`).

    ``models``: (name, label) rows in order; default every model found, in
    :func:`default_model_order`, labelled with :data:`DEFAULT_LABELS`. ``base``: the row the
    relative improvements and paired comparisons refer to (None or absent: none). ``seeds``:
    the seeds seeded models must have (default: whichever seed folders exist).
    ``bootstrap``: compute intervals and paired comparisons from the rows files beside the
    summaries (None: rates only).
    """
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise UserError(f"--eval-dir {eval_dir}: no such folder; give the folder holding "
                        "<model>/summary_<preset>.json")
    found = {d.name: s for d in sorted(eval_dir.iterdir()) if d.is_dir()
             and (s := read_model_summaries(d))}
    groups = group_runs(eval_dir, list(found), seeds=seeds)
    if models is None:
        if not groups:
            raise UserError(f"{eval_dir}: no <model>/summary_<preset>.json found; run the "
                            "evaluate stage first")
        models = [(n, DEFAULT_LABELS.get(n, n)) for n in default_model_order(groups)]
    table = ResultsTable(models=list(models), presets=list(presets), metrics={}, rates={},
                         base=base if base in {n for n, _ in models} else None)
    metric_source: dict[str, Path] = {}
    for name, _ in table.models:
        # A listed seeded folder (``opd_base@seed1``) is a row of its own.
        runs = groups.get(name) or ([Run(name, None, name)] if name in found else [])
        table.runs[name] = runs
        for preset in table.presets:
            have = [run for run in runs if preset in found[run.folder]]
            if not have:
                continue
            if len(have) < len(runs):
                lacking = [str(eval_dir / r.folder / f"summary_{preset}.json")
                           for r in runs if r not in have]
                raise UserError(f"{name}: {', '.join(lacking)} missing while the other seeds "
                                f"have {preset}; evaluate every seed (or restrict --seeds)")
            rates = []
            for run in runs:
                path, summary = found[run.folder][preset]
                metric = str(summary["metric"]).lower()
                if preset in table.metrics and table.metrics[preset] != metric:
                    raise UserError(f"{path}: preset {preset} is scored with {metric}, but "
                                    f"{metric_source[preset]} uses {table.metrics[preset]}; "
                                    "re-evaluate with one metric per preset")
                table.metrics[preset] = metric
                metric_source.setdefault(preset, path)
                table.sources[(run.folder, preset)] = path
                table.summaries[(run.folder, preset)] = summary
                rates.append(summary["rate"])
            table.rates[(name, preset)] = (None if any(r is None for r in rates)
                                           else math.fsum(rates) / len(rates))
    for preset in table.presets:
        table.metrics.setdefault(preset, KNOWN_METRICS.get(preset, "error rate"))
    if bootstrap is not None:
        add_intervals(table, eval_dir, bootstrap)
    return table


def add_intervals(table: ResultsTable, eval_dir: Path, bootstrap: Bootstrap) -> None:
    """Fill ``table.cells`` from the rows files (``test_<preset>.jsonl``) beside the summaries.

    A cell whose rows files are absent has no interval (listed in ``table.no_rows``); a rows
    file without per-utterance counts, or evaluations of one preset on different utterances,
    is an error naming the files.
    """
    table.bootstrap = bootstrap
    per_preset: list[dict[str, CellStats]] = []
    for preset in table.presets:
        counts: dict[str, list[UtteranceCounts]] = {}
        for name, _ in table.models:
            if table.rates.get((name, preset)) is None:
                continue
            runs = table.runs[name]
            files = [run.rows_file(eval_dir, preset) for run in runs]
            if not all(f.is_file() for f in files):
                table.no_rows.append((name, preset))
                continue
            counts[name] = [read_counts(f, table.summaries[(run.folder, preset)])
                            for run, f in zip(runs, files, strict=True)]
        if not counts:
            continue
        ref_len, errors = align(counts)
        cells = preset_stats(errors, ref_len, stream=preset, base=table.base,
                             settings=bootstrap)
        per_preset.append(cells)
        table.cells.update({(name, preset): cell for name, cell in cells.items()})
    if len(per_preset) == len(table.presets):
        averages = average_stats(per_preset, base=table.base,
                                 confidence=bootstrap.confidence)
        table.cells.update({(name, None): cell for name, cell in averages.items()})


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


NOT_DISTINGUISHABLE = "≈"  # the marker of a cell that cannot be told from the base


def _percent(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(100.0 * value, digits)


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def csv_rows(table: ResultsTable) -> list[dict[str, Any]]:
    """One dict per model: rates and relative improvements (percent, 2 decimals; None where
    missing). Column names: ``<preset>_<metric>``, ``<preset>_rel_impr``, ``avg``,
    ``avg_rel_impr``; then ``seeds`` (the training seeds averaged, space-separated; empty for a
    single evaluation) and, per preset and for ``avg``: ``_sd`` (over seeds; empty for one),
    ``_low`` and ``_high`` (the bootstrap interval), ``_p_better`` and ``_p_worse`` (shares of
    paired resamples in which the model is better / worse than the base) and ``_vs_base``
    (better, worse or not distinguishable)."""
    rows = []
    for name, label in table.models:
        row: dict[str, Any] = {"model": name, "label": label}
        for preset in table.presets:
            row[f"{preset}_{table.metrics[preset]}"] = _round(table.rate_percent(name, preset))
        for preset in table.presets:
            row[f"{preset}_rel_impr"] = _round(table.improvement(name, preset))
        row["avg"] = _round(table.average(name))
        row["avg_rel_impr"] = _round(table.improvement(name, None))
        row["seeds"] = " ".join(map(str, table.seeds(name)))
        for preset in (*table.presets, None):
            cell = table.cells.get((name, preset))
            low, high = (cell.interval if cell and cell.interval else (None, None))
            prefix = preset or "avg"
            row[f"{prefix}_sd"] = _percent(cell.sd if cell else None)
            row[f"{prefix}_low"] = _percent(low)
            row[f"{prefix}_high"] = _percent(high)
            row[f"{prefix}_p_better"] = _share(cell.p_better if cell else None)
            row[f"{prefix}_p_worse"] = _share(cell.p_worse if cell else None)
            row[f"{prefix}_vs_base"] = cell.verdict if cell else None
        rows.append(row)
    return rows


def _cell_text(table: ResultsTable, name: str, preset: str | None) -> str:
    """``mean[ ± sd][ [low, high]][ (+gain%)][ ≈]`` in percent; the sd part only when some row
    averages seeds (then a single evaluation shows ``± n/a``)."""
    value = table.rate_percent(name, preset) if preset is not None else table.average(name)
    if value is None:
        return MISSING
    text = f"{value:.2f}"
    cell = table.cells.get((name, preset))
    if table.seeded:
        text += " ± n/a" if cell is None or cell.sd is None else f" ± {100 * cell.sd:.2f}"
    if cell is not None:
        text += " " + format_interval(cell.interval)
    gain = table.improvement(name, preset)
    if gain is not None:
        text += f" ({gain:+.2f}%)"
    if cell is not None and cell.indistinguishable:
        text += f" {NOT_DISTINGUISHABLE}"
    return text


def display_rows(table: ResultsTable) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells: ``12.34 (+5.67%)``, ``missing`` for absent rates; with
    intervals ``12.34 [11.02, 13.71] (+5.67%)``, with seeds ``12.34 ± 0.41 [...] ...``, and
    ``≈`` after a cell not distinguishable from the base."""
    header = ["model", *(table.column(p) for p in table.presets), "avg"]
    body = [[label, *(_cell_text(table, name, p) for p in (*table.presets, None))]
            for name, label in table.models]
    return header, body


def comparison_rows(table: ResultsTable) -> tuple[list[str], list[list[str]]]:
    """The paired bootstrap against the base: per model (the base excepted) and preset, the
    share of resamples in which the model is better, ``(worse)`` when it is worse in at least
    the confidence share, ``n/a`` without per-utterance rows."""
    header = ["model", *(table.column(p) for p in table.presets), "avg"]
    body = []
    for name, label in table.models:
        if name == table.base:
            continue
        cells = [label]
        for preset in (*table.presets, None):
            cell = table.cells.get((name, preset))
            if cell is None or cell.p_better is None:
                cells.append("n/a")
            else:
                worse = " (worse)" if cell.verdict == "worse" else ""
                mark = f" {NOT_DISTINGUISHABLE}" if cell.indistinguishable else ""
                cells.append(f"{cell.p_better:.3f}{worse}{mark}")
        body.append(cells)
    return header, body


# ---- markdown helpers -----------------------------------------------------------------------

def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any, digits: int = 4, percent: bool = False) -> str:
    """A number for a table: ``missing`` for None, percent with 2 decimals when asked."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{100 * value:.2f}" if percent else f"{value:.{digits}g}"
    return str(value)


# ---- training metrics -----------------------------------------------------------------------

CURVES = (("loss", ("loss",)), ("VUSS", ("vuss", "opd_valid_topk_mean")),
          ("rollout length", ("rollout_len",)), ("top-1 agreement", ("top1_agree",)))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl`` rows (one per step); each must have a ``step``."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("step"), int):
            raise UserError(f"{path}: row {number} has no integer `step`; give the "
                            "metrics.jsonl a training stage writes")
    return rows


def curve(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[list[int],
                                                                             list[float]]:
    """(steps, values) of the first of ``keys`` present, skipping null and skipped steps."""
    steps, values = [], []
    for row in rows:
        if row.get("skipped"):
            continue
        value = next((row[k] for k in keys if row.get(k) is not None), None)
        if value is not None:
            steps.append(int(row["step"]))
            values.append(float(value))
    return steps, values


def training_summary(name: str, rows: Sequence[Mapping[str, Any]], tail: int = 10
                     ) -> dict[str, Any]:
    """First and last values of a run (last: mean of the final ``tail`` logged steps)."""
    out: dict[str, Any] = {"run": name, "steps": max((int(r["step"]) for r in rows), default=0),
                           "skipped_steps": sum(1 for r in rows if r.get("skipped"))}
    for _, keys in CURVES:
        _, values = curve(rows, keys)
        key = keys[0]
        out[f"{key}_first"] = values[0] if values else None
        last = values[-tail:]
        out[f"{key}_last"] = math.fsum(last) / len(last) if last else None
    return out


# ---- calibration and teacher data -----------------------------------------------------------

def calibration_row(name: str, report: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    if not isinstance(report, Mapping) or "passed" not in report:
        raise UserError(f"{path}: not a calibration report (no `passed`); give the "
                        "calibration.json (or calibration.failed.json) of stages.calibrate")
    metrics = report.get("metrics") or {}
    return {"recipe": name, "passed": bool(report["passed"]),
            "failed": list(report.get("failed") or []),
            "initial_loss": metrics.get("loss"), "vuss": metrics.get("vuss"),
            "nonempty_ratio": metrics.get("nonempty_ratio"),
            "stopped_ratio": metrics.get("stopped_ratio"),
            "unmapped_tokens": metrics.get("unmapped_tokens"),
            "unmapped_fraction": metrics.get("unmapped_fraction"),
            "vocab_coverage": (report.get("vocabulary") or {}).get("in_play_fraction")}


def vuss_by_recipe(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Mean calibration VUSS of each recipe over its seeds (`base@seed0` and `base@seed1` are
    recipe `base`) and how many calibrations it averages: base against td_adapted is VUSS
    before and after TD adaptation, the paper's comparison."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if row["vuss"] is not None:
            groups.setdefault(run_of(row["recipe"]).model, []).append(float(row["vuss"]))
    return {name: {"vuss_mean": math.fsum(values) / len(values), "calibrations": len(values)}
            for name, values in groups.items()}


def td_summary(report: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    summary = report.get("summary") if isinstance(report, Mapping) else None
    if not isinstance(summary, Mapping) or "dropped_by_reason" not in summary:
        raise UserError(f"{path}: not a teacher-data report (no `summary.dropped_by_reason`); "
                        "give the report.json python -m stages.td_merge writes")
    return dict(summary)


# ---- provenance -----------------------------------------------------------------------------

def provenance_rows(inputs: Iterable[tuple[str, str | Path, Mapping[str, Any] | None]]
                    ) -> list[dict[str, Any]]:
    """One row per input (kind, file, config hash, git commit, created) from its provenance."""
    rows = []
    for kind, path, block in inputs:
        block = block or {}
        rows.append({"kind": kind, "file": str(path), "config_hash": block.get("config_hash"),
                     "git_commit": block.get("git_commit"), "created": block.get("created_utc"),
                     "versions": block.get("versions") or {}})
    return rows


def version_spread(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Every package version seen across the inputs (more than one: mixed environments)."""
    seen: dict[str, set[str]] = {}
    for row in rows:
        for package, version in row["versions"].items():
            seen.setdefault(package, set()).add(str(version))
    return {package: sorted(versions) for package, versions in sorted(seen.items())}


# ---- the report -----------------------------------------------------------------------------

@dataclass
class ReportInputs:
    """Everything a report shows, already read and checked."""

    table: ResultsTable
    training: list[dict[str, Any]] = field(default_factory=list)  # training_summary rows
    calibration: list[dict[str, Any]] = field(default_factory=list)  # calibration_row rows
    td: dict[str, Any] | None = None  # td_summary
    provenance: list[dict[str, Any]] = field(default_factory=list)  # provenance_rows
    plots: dict[str, str] = field(default_factory=dict)  # title -> file name


def results_markdown(table: ResultsTable) -> str:
    header, body = display_rows(table)
    return markdown_table(header, body)


def _training_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ["run", "steps", "skipped", "loss first", "loss last", "VUSS last",
              "rollout len last", "top-1 agree last"]
    body = [[r["run"], r["steps"], r["skipped_steps"], fmt(r["loss_first"]),
             fmt(r["loss_last"]), fmt(r["vuss_last"]), fmt(r["rollout_len_last"]),
             fmt(r["top1_agree_last"])] for r in rows]
    return ["## Training (OPD runs)", "",
            "Last: mean of the final 10 logged steps (skipped steps left out).", "",
            markdown_table(header, body), ""]


def _calibration_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ["recipe", "result", "initial loss", "VUSS", "non-empty", "stopped",
              "unmapped tokens", "unmapped fraction", "vocab coverage"]
    body = [[r["recipe"], "pass" if r["passed"] else "FAIL (" + ", ".join(r["failed"]) + ")",
             fmt(r["initial_loss"]), fmt(r["vuss"]), fmt(r["nonempty_ratio"], percent=True),
             fmt(r["stopped_ratio"], percent=True), fmt(r["unmapped_tokens"]),
             fmt(r["unmapped_fraction"]), fmt(r["vocab_coverage"], percent=True)]
            for r in rows]
    lines = ["## Calibration", "", "Non-empty, stopped and coverage in percent.", "",
             markdown_table(header, body), ""]
    means = vuss_by_recipe(rows)
    if sum(m["calibrations"] for m in means.values()) > 1:  # one alone says nothing new
        lines += ["VUSS, mean over each recipe's calibrations (base: before TD adaptation, "
                  "td_adapted: after it): " + ", ".join(
                      f"{name} {fmt(m['vuss_mean'])} ({m['calibrations']})"
                      for name, m in means.items()) + ".", ""]
    return lines


def _td_section(td: Mapping[str, Any]) -> list[str]:
    rows = [["rows (teacher transcripts)", fmt(td.get("rows"))],
            ["kept", f"{fmt(td.get('kept'))} ({fmt(td.get('kept_fraction'), percent=True)} %)"],
            ["dropped", fmt(td.get("dropped"))]]
    rows += [[f"dropped: {reason}", fmt(count)]
             for reason, count in td["dropped_by_reason"].items()]
    rows += [["hours (kept / all)", f"{fmt(td.get('kept_hours'))} / {fmt(td.get('hours'))}"]]
    rates = td.get("teacher_error_rate") or {}
    for metric in ("cer", "wer"):
        before = (rates.get("before") or {}).get(metric)
        after = (rates.get("after") or {}).get(metric)
        rows.append([f"teacher {metric.upper()} % (before / after filtering)",
                     f"{fmt(before, percent=True)} / {fmt(after, percent=True)}"])
    return ["## Teacher data (TD) filters", "", markdown_table(["", "value"], rows), ""]


def _provenance_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    commits = sorted({str(r["git_commit"]) for r in rows})
    hashes = sorted({str(r["config_hash"]) for r in rows})
    out = ["## Provenance", "",
           f"Git commits of the inputs: {', '.join(f'`{c}`' for c in commits) or MISSING}.",
           f"Config hashes of the inputs: {len(hashes)} distinct (each stage hashes its own "
           "settings; see Inputs).", ""]
    spread = version_spread(rows)
    if spread:
        out += [markdown_table(["package", "versions seen"],
                               [[p, ", ".join(v) + (" (MIXED)" if len(v) > 1 else "")]
                                for p, v in spread.items()], ["---", "---"]), ""]
    out += ["<details><summary>Inputs</summary>", "",
            markdown_table(["kind", "file", "config hash", "git commit", "created (UTC)"],
                           [[r["kind"], f"`{r['file']}`", fmt(r["config_hash"]),
                             fmt(r["git_commit"]), fmt(r["created"])] for r in rows],
                           ["---"] * 5),
            "", "</details>", ""]
    return out


def _uncertainty_notes(table: ResultsTable, base_label: str | None) -> list[str]:
    """The table's footnotes: what ±, the brackets and the marker mean, and the seeds."""
    notes = []
    models = dict(table.models)
    if table.seeded:
        seeded = "; ".join(f"{models[m]}: seeds {', '.join(map(str, table.seeds(m)))}"
                           for m, _ in table.models if len(table.runs.get(m, [])) > 1)
        notes.append(f"Mean over training seeds ± their sd (n/a: one evaluation, no seeds to "
                     f"compare). {seeded}.")
    elif any(table.seeds(m) for m, _ in table.models):
        trained = "; ".join(f"{models[m]}: seed {table.seeds(m)[0]}"
                            for m, _ in table.models if table.seeds(m))
        notes.append(f"One training seed per model ({trained}): no sd over seeds.")
    elif table.runs:
        notes.append("One evaluation per model (no training seeds): no sd over seeds.")
    boot = table.bootstrap
    if boot is not None and table.cells:
        level = f"{100 * boot.confidence:g} %"
        notes.append(f"In brackets: {level} percentile bootstrap interval over utterances "
                     f"({boot.resamples} resamples; each resample recomputes the corpus rate "
                     "from the drawn utterances' edit counts, and with seeds averages the "
                     "seeds' rates on the same draw; avg: presets resampled independently).")
        if base_label and any(c.p_better is not None for c in table.cells.values()):
            notes.append(f"{NOT_DISTINGUISHABLE}: not distinguishable from `{base_label}`: "
                         f"in the paired bootstrap (same utterance draws for both) the model is "
                         f"better in fewer than {level} of the resamples and worse in fewer "
                         f"than {level}.")
    if table.no_rows:
        notes.append(f"No interval ({len(table.no_rows)}): "
                     + ", ".join(f"{m}/{p}" for m, p in table.no_rows)
                     + " (no test_<preset>.jsonl beside the summary).")
    return [line for note in notes for line in (note, "")]


def _comparison_section(table: ResultsTable, base_label: str | None) -> list[str]:
    if not base_label or not any(c.p_better is not None for c in table.cells.values()):
        return []
    header, body = comparison_rows(table)
    return ["## Paired bootstrap against the base", "",
            f"Share of resamples in which the model's error rate is lower than "
            f"`{base_label}`'s on the same drawn utterances (ties, e.g. identical outputs, "
            f"count as not better). (worse): worse in at least "
            f"{100 * table.bootstrap.confidence:g} % of the resamples; "
            f"{NOT_DISTINGUISHABLE}: neither.", "",
            markdown_table(header, body), ""]


def render_markdown(inputs: ReportInputs, *, title: str = "audio-opd results") -> str:
    table = inputs.table
    base_label = dict(table.models).get(table.base) if table.base else None
    lines = [f"# {title}", "", "## Error rates (%)", ""]
    if base_label:
        lines += [f"In parentheses: relative improvement over `{base_label}` "
                  "((base - model) / base; positive = fewer errors). avg: mean over the presets "
                  "(only when every preset has a result).", ""]
    lines += [results_markdown(table), ""]
    lines += _uncertainty_notes(table, base_label)
    missing = table.missing()
    if missing:
        lines += [f"Missing ({len(missing)}): " + ", ".join(f"{m}/{p}" for m, p in missing)
                  + " (no summary_<preset>.json).", ""]
    lines += _comparison_section(table, base_label)
    for plot_title, name in inputs.plots.items():
        lines += [f"![{plot_title}]({name})", ""]
    if inputs.training:
        lines += _training_section(inputs.training)
    if inputs.calibration:
        lines += _calibration_section(inputs.calibration)
    if inputs.td is not None:
        lines += _td_section(inputs.td)
    if inputs.provenance:
        lines += _provenance_section(inputs.provenance)
    return "\n".join(lines).rstrip() + "\n"


def html_table(table: ResultsTable) -> str:
    """The results table as an HTML fragment (for the Snakemake report's description)."""
    import pandas as pd  # pandas escapes the cells and writes the markup

    header, body = display_rows(table)
    frame = pd.DataFrame(body, columns=header)
    return frame.to_html(index=False, escape=True, border=0, classes="results-table") + "\n"
