"""The report stage: the models × presets table, CSV, plots, the other sections, and the
Snakemake HTML report rendered in headless Chromium.

Inputs are crafted summaries, metrics, calibrations and a TD report with known numbers, so every
table cell is checked exactly (rates in percent with 2 decimals, relative improvements over the
base, averages only for complete rows, missing cells shown as missing).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from stages import report
from stages.common.cli import run_stage
from stages.reporting.results import collect_results, csv_rows, display_rows
from tests.conftest import BIN, ROOT

PRESETS = ["aishell", "meeting", "net", "clean", "other"]
METRIC = {"aishell": "cer", "meeting": "cer", "net": "cer", "clean": "wer", "other": "wer"}
# Error rates (fractions); None: no summary written (a missing evaluation).
RATES = {
    "student_base": [0.20, 0.40, 0.30, 0.10, 0.25],
    "opd_base": [0.15, 0.30, 0.27, 0.09, 0.20],
    "opd_td_adapted": [0.12, 0.28, None, 0.08, 0.19],
    "teacher": [0.05, 0.10, 0.08, 0.04, 0.07],
}
PROVENANCE = {"config_hash": "abc123", "git_commit": "deadbeef", "created_utc": "2026-01-01",
              "versions": {"torch": "2.13.0", "transformers": "5.24.0"}}


def write_summary(eval_dir: Path, model: str, preset: str, value: float, **extra) -> Path:
    """A summary as stages.evaluate writes it (``extra`` overrides fields)."""
    path = eval_dir / model / f"summary_{preset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    ref_len = 1000
    summary = {"metric": METRIC[preset], "rate": value, METRIC[preset]: value,
               "errors": round(value * ref_len), "ref_len": ref_len, "utterances": 40,
               "preset": preset, "model_name": model, "model": f"results/models/{model}",
               "provenance": PROVENANCE} | extra
    path.write_text(json.dumps(summary))
    return path


def write_eval_dir(root: Path) -> Path:
    eval_dir = root / "eval"
    for model, rates in RATES.items():
        for preset, rate in zip(PRESETS, rates, strict=True):
            if rate is not None:
                write_summary(eval_dir, model, preset, rate)
    return eval_dir


def write_metrics(path: Path, steps: int, *, skipped: tuple[int, ...] = ()) -> Path:
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 2.0 / step, "vuss": 40.0 + step, "rollout_len": 10.0 + step,
               "top1_agree": 0.5 + step / 100, "skipped": int(step in skipped)}
        if step in skipped:
            row["loss"] = None
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_calibration(path: Path, *, passed: bool) -> Path:
    report_doc = {"passed": passed, "failed": [] if passed else ["stopped_ratio"],
                  "metrics": {"loss": 1.25, "vuss": 45.5, "nonempty_ratio": 0.875,
                              "stopped_ratio": 0.9 if passed else 0.25, "unmapped_tokens": 3,
                              "unmapped_fraction": 0.002},
                  "vocabulary": {"in_play_fraction": 1.0}, "provenance": PROVENANCE}
    path.write_text(json.dumps(report_doc))
    return path


def write_td_report(path: Path) -> Path:
    doc = {"summary": {"rows": 300, "kept": 210, "dropped": 90, "kept_fraction": 0.7,
                       "hours": 0.5, "kept_hours": 0.35,
                       "dropped_by_reason": {"empty": 5, "unfinished": 10, "repetition": 15,
                                             "low_logprob": 20, "high_error_rate": 40},
                       "teacher_error_rate": {"before": {"cer": 0.3, "wer": 0.4},
                                              "after": {"cer": 0.12, "wer": 0.2}}},
           "provenance": PROVENANCE}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    return {
        "eval": write_eval_dir(tmp_path),
        "metrics_base": write_metrics(tmp_path / "opd_base.jsonl", 12, skipped=(5,)),
        "metrics_td": write_metrics(tmp_path / "opd_td.jsonl", 8),
        "cal_base": write_calibration(tmp_path / "cal_base.json", passed=True),
        "cal_td": write_calibration(tmp_path / "cal_td.failed.json", passed=False),
        "td": write_td_report(tmp_path / "td_report.json"),
    }


def run_report(inputs, out: Path, *extra) -> int:
    argv = ["--eval-dir", inputs["eval"], "--output-dir", out,
            "--metrics", f"opd_base={inputs['metrics_base']}",
            f"opd_td_adapted={inputs['metrics_td']}",
            "--calibration", f"base={inputs['cal_base']}", f"td_adapted={inputs['cal_td']}",
            "--td-report", inputs["td"], *extra]
    return run_stage(report.main, report.build_parser(), [str(a) for a in argv])


def test_table_numbers_improvements_and_missing_cells(inputs):
    table = collect_results(inputs["eval"], PRESETS)
    assert [label for _, label in table.models] == ["base", "base+OPD", "base+TD+OPD",
                                                    "teacher"]
    rows = {r["model"]: r for r in csv_rows(table)}
    opd = rows["opd_base"]
    assert opd["aishell_cer"] == 15.0 and opd["clean_wer"] == 9.0
    assert opd["aishell_rel_impr"] == 25.0           # (20 - 15) / 20
    assert opd["meeting_rel_impr"] == 25.0           # (40 - 30) / 40
    assert opd["net_rel_impr"] == 10.0               # (30 - 27) / 30
    assert opd["other_rel_impr"] == 20.0             # (25 - 20) / 25
    assert rows["student_base"]["avg"] == 25.0       # mean of 20 40 30 10 25
    assert opd["avg"] == 20.2                        # mean of 15 30 27 9 20
    assert opd["avg_rel_impr"] == 19.2               # (25 - 20.2) / 25
    assert rows["teacher"]["avg_rel_impr"] == 72.8   # (25 - 6.8) / 25
    # the base row has no improvement over itself; the incomplete row has no average
    assert rows["student_base"]["aishell_rel_impr"] is None
    td = rows["opd_td_adapted"]
    assert td["net_cer"] is None and td["net_rel_impr"] is None
    assert td["avg"] is None and td["avg_rel_impr"] is None
    assert td["aishell_rel_impr"] == 40.0
    assert table.missing() == [("opd_td_adapted", "net")]

    header, body = display_rows(table)
    assert header == ["model", "aishell CER", "meeting CER", "net CER", "clean WER",
                      "other WER", "avg"]
    assert body[0] == ["base", "20.00", "40.00", "30.00", "10.00", "25.00", "25.00"]
    assert body[1][1] == "15.00 (+25.00%)" and body[1][-1] == "20.20 (+19.20%)"
    assert body[2][3] == "missing" and body[2][-1] == "missing"


def test_worse_model_has_negative_improvement(tmp_path):
    eval_dir = tmp_path / "eval"
    write_summary(eval_dir, "student_base", "aishell", 0.1)
    write_summary(eval_dir, "opd_base", "aishell", 0.125)
    rows = csv_rows(collect_results(eval_dir, ["aishell"]))
    assert rows[1]["aishell_rel_impr"] == -25.0
    assert rows[1]["avg"] == 12.5


def test_report_stage_writes_everything(inputs, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_report(inputs, out) == 0
    printed = capsys.readouterr().out
    assert "| base+OPD | 15.00 (+25.00%) |" in printed and "missing" in printed

    frame = pd.read_csv(out / "results.csv")
    assert list(frame["label"]) == ["base", "base+OPD", "base+TD+OPD", "teacher"]
    assert frame.columns[:7].tolist() == ["model", "label", "aishell_cer", "meeting_cer",
                                          "net_cer", "clean_wer", "other_wer"]
    assert frame.loc[1, "avg_rel_impr"] == pytest.approx(19.2)
    assert pd.isna(frame.loc[2, "net_cer"])          # missing stays missing, not zero
    with (out / "results.csv").open() as handle:
        assert next(csv.DictReader(handle))["aishell_rel_impr"] == ""   # base row

    for name in ("error_rates.png", "training_curves.png", "td_filters.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name

    md = (out / "report.md").read_text()
    assert "| base+TD+OPD | 12.00 (+40.00%) | 28.00 (+30.00%) | missing |" in md
    assert "Missing (1): opd_td_adapted/net" in md
    # training: 12 steps, one skipped; last = mean of the final 10 logged (non-skipped) steps
    losses = [2.0 / s for s in range(1, 13) if s != 5]
    assert f"| opd_base | 12 | 1 | 2 | {sum(losses[-10:]) / 10:.4g} |" in md
    assert "| base | pass | 1.25 | 45.5 | 87.50 | 90.00 | 3 | 0.002 | 100.00 |" in md
    assert "| td_adapted | FAIL (stopped_ratio) |" in md
    assert "| dropped: high_error_rate | 40 |" in md
    assert "| kept | 210 (70.00 %) |" in md
    assert "| teacher CER % (before / after filtering) | 30.00 / 12.00 |" in md
    assert "`deadbeef`" in md and "| torch | 2.13.0 |" in md
    html = (out / "results_table.html").read_text()
    assert "<table" in html and "15.00 (+25.00%)" in html and "missing" in html

    doc = json.loads((out / "report.json").read_text())
    assert doc["missing"] == [{"model": "opd_td_adapted", "preset": "net"}]
    assert doc["rows"][0]["model"] == "student_base" and "provenance" in doc
    assert doc["teacher_data"]["kept"] == 210


def test_calibration_vuss_is_averaged_per_recipe_over_seeds(inputs, tmp_path):
    """VUSS before TD adaptation (recipe base) and after it (td_adapted), each the mean over its
    seeds' calibrations: the paper's comparison in one line of the report."""
    seeded = []
    for recipe, vusses in (("base", (54.5, 54.75)), ("td_adapted", (52.5, 53.0))):
        for seed, vuss in enumerate(vusses):
            path = write_calibration(tmp_path / f"{recipe}{seed}.json", passed=True)
            doc = json.loads(path.read_text())
            doc["metrics"]["vuss"] = vuss
            path.write_text(json.dumps(doc))
            seeded.append(f"{recipe}@seed{seed}={path}")
    out = tmp_path / "report"
    argv = ["--eval-dir", inputs["eval"], "--output-dir", out, "--calibration", *seeded]
    assert run_stage(report.main, report.build_parser(), [str(a) for a in argv]) == 0
    md = (out / "report.md").read_text()
    assert ("VUSS, mean over each recipe's calibrations (base: before TD adaptation, td_adapted:"
            " after it): base 54.62 (2), td_adapted 52.75 (2).") in md
    doc = json.loads((out / "report.json").read_text())
    assert doc["calibration_vuss_by_recipe"] == {
        "base": {"vuss_mean": 54.625, "calibrations": 2},
        "td_adapted": {"vuss_mean": 52.75, "calibrations": 2}}


def test_models_option_orders_labels_and_shows_absent_models(inputs, tmp_path):
    out = tmp_path / "report"
    assert run_report(inputs, out, "--models", "teacher=Teacher (1.7B)", "student_base",
                      "ghost=never evaluated") == 0
    frame = pd.read_csv(out / "results.csv")
    assert list(frame["label"]) == ["Teacher (1.7B)", "base", "never evaluated"]
    assert frame.loc[0, "aishell_rel_impr"] == pytest.approx(75.0)
    assert frame.loc[2, PRESETS[0] + "_cer":"other_wer"].isna().all()
    assert "| never evaluated | missing | missing | missing | missing | missing | missing |" \
        in (out / "report.md").read_text()


def test_report_without_optional_inputs_still_writes_plots(inputs, tmp_path):
    out = tmp_path / "bare"
    argv = ["--eval-dir", inputs["eval"], "--output-dir", out, "--presets", "aishell", "clean"]
    assert run_stage(report.main, report.build_parser(), [str(a) for a in argv]) == 0
    assert (out / "training_curves.png").stat().st_size > 1000
    assert (out / "td_filters.png").stat().st_size > 1000
    assert pd.read_csv(out / "results.csv").columns.tolist()[2:4] == ["aishell_cer", "clean_wer"]


def test_bad_inputs_are_named(inputs, tmp_path, capsys):
    bad = write_summary(inputs["eval"], "opd_base", "meeting", 0.3, rate="high")
    assert run_report(inputs, tmp_path / "r1") == 1
    assert f"{bad}: `rate` is 'high'" in capsys.readouterr().err
    write_summary(inputs["eval"], "opd_base", "meeting", 0.3, metric="wer")
    assert run_report(inputs, tmp_path / "r2") == 1
    assert "preset meeting is scored with wer" in capsys.readouterr().err
    write_summary(inputs["eval"], "opd_base", "meeting", 0.3)
    inputs["metrics_base"].write_text('{"loss": 1.0}\n')
    assert run_report(inputs, tmp_path / "r3") == 1
    assert "has no integer `step`" in capsys.readouterr().err


# ---- the Snakemake HTML report in headless Chromium ------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get "
                    "install -y chromium); it renders the Snakemake HTML report")
def test_snakemake_html_report_renders_the_table(inputs, tmp_path, venv_env):
    """A minimal workflow whose rule runs stages.report with report(...) outputs and the
    project's captions; `snakemake --report` builds the HTML; Chromium renders it."""
    work = tmp_path / "wf"
    (work / "report").mkdir(parents=True)
    for name in ("workflow.rst", "results_csv.rst", "results_table.rst", "error_rates.rst"):
        shutil.copy(ROOT / "workflow" / "report" / name, work / "report" / name)
    (work / "Snakefile").write_text(textwrap.dedent(f"""
        report: "report/workflow.rst"

        rule report:
            input:
                eval_dir="{inputs['eval']}",
            output:
                csv=report("out/report/results.csv", caption="report/results_csv.rst",
                           category="Results"),
                html=report("out/report/results_table.html",
                            caption="report/results_table.rst", category="Results"),
                plot=report("out/report/error_rates.png", caption="report/error_rates.rst",
                            category="Results"),
            log:
                "out/logs/report.log",
            shell:
                "python -m stages.report --eval-dir {{input.eval_dir}} --output-dir out/report"
                " 2> {{log}}"
        """))
    env = venv_env | {"PYTHONPATH": str(ROOT)}
    snakemake = [str(BIN / "snakemake"), "--cores", "1", "--directory", str(work),
                 "--snakefile", str(work / "Snakefile")]
    for extra in ([], ["--report", str(work / "report.html")]):
        done = subprocess.run(snakemake + extra, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    profile = tmp_path / "chromium-profile"
    rendered = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
         "--dump-dom", (work / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    # The page's markup as rendered by React (scripts, which also hold the raw data, removed)
    # shows the results table on the landing page.
    page = re.sub(r"<script\b.*?</script>", "", rendered.stdout, flags=re.S)
    assert '<table class="dataframe results-table">' in page, page[-3000:]
    table = page.split('<table class="dataframe results-table">', 1)[1].split("</table>", 1)[0]
    for cell in ("aishell CER", "other WER", "base+OPD", "15.00 (+25.00%)", "20.20 (+19.20%)",
                 "missing", "teacher"):
        assert f">{cell}<" in table, cell
