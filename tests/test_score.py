"""score_rows and the `score` stage CLI: per-row fields, corpus rate, order, errors, end to end."""

import json
import subprocess
import sys

import pytest

from stages.common.errors import UserError
from stages.eval.scoring import score_rows


def rows_of(pairs):
    return [{"id": f"u{i}", "text": ref, "pred_text": hyp} for i, (ref, hyp) in enumerate(pairs)]


def test_scored_row_fields_and_summary():
    rows = rows_of([("今天，天气很好。", "今天天汽很好"), ("你好", "")])
    scored, summary = score_rows(rows, "cer", "zh")
    first = scored[0]
    assert first["id"] == "u1"  # 2 deletions sort before 1 substitution
    assert first["pred_text"] == "" and first["pred_norm"] == ""
    assert (first["errors"], first["deletions"], first["ref_len"], first["error_rate"]) == (
        2, 2, 2, 1.0)
    second = scored[1]
    assert second["ref_norm"] == "今天 天气很好"
    assert second["substitutions"] == 1 and second["cer_errors"] == 1
    assert second["error_rate"] == pytest.approx(1 / 6)
    assert "wer_errors" not in second
    assert summary["metric"] == "cer" and summary["normalizer"] == "zh"
    assert (summary["errors"], summary["ref_len"], summary["utterances"]) == (3, 8, 2)
    assert (summary["substitutions"], summary["deletions"], summary["insertions"]) == (1, 2, 0)
    assert summary["empty_predictions"] == 1
    assert summary["rate"] == summary["cer"] == pytest.approx(3 / 8)


def test_corpus_rate_is_total_errors_over_total_length_not_mean_of_rates():
    scored, summary = score_rows(rows_of([("ab", ""), ("abcdefgh", "abcdefgh")]), "cer", "none")
    rates = [row["error_rate"] for row in scored]
    assert rates == [1.0, 0.0]  # a mean of rates would be 0.5
    assert summary["rate"] == pytest.approx(2 / 10)


def test_prediction_that_normalizes_to_nothing_counts_as_empty():
    _, summary = score_rows(rows_of([("好", "。！"), ("好", "好")]), "cer", "zh")
    assert summary["empty_predictions"] == 1
    assert summary["deletions"] == 1


def test_worst_first_with_stable_ties():
    pairs = [
        ("abcd", "abcx"),  # u0: 1 error, rate .25
        ("abc", "xyz"),  # u1: 3, 1.0
        ("ab", "ax"),  # u2: 1, .5
        ("abc", "abc"),  # u3: 0
        ("abcdef", "xyzdef"),  # u4: 3, .5
        ("abcd", "abcy"),  # u5: 1, .25 (tie with u0: input order)
        ("", "q"),  # u6: 1 insertion on an empty reference: rate undefined, sorts as worst
        ("", ""),  # u7: 0, rate undefined
    ]
    scored, summary = score_rows(rows_of(pairs), "cer", "none")
    assert [row["id"] for row in scored] == ["u1", "u4", "u6", "u2", "u0", "u5", "u3", "u7"]
    by_id = {row["id"]: row for row in scored}
    assert by_id["u6"]["error_rate"] is None and by_id["u6"]["insertions"] == 1
    assert by_id["u7"]["error_rate"] is None and by_id["u7"]["errors"] == 0
    assert summary["empty_references"] == 2


def test_wer_scoring_replaces_stale_score_fields():
    rows = [{"text": "It's 10 o'clock", "pred_text": "it is ten o'clock", "cer_errors": 99,
             "errors": 99, "extra": [1, 2]}]
    scored, summary = score_rows(rows, "wer", "en")
    row = scored[0]
    assert "cer_errors" not in row and row["extra"] == [1, 2]
    assert (row["ref_norm"], row["pred_norm"]) == ("it is 100 clock", "it is 100 clock")
    assert row["errors"] == row["wer_errors"] == 0
    assert summary["normalizer"] == "en" and summary["wer"] == 0.0


def test_custom_keys_and_callable_normalizer():
    rows = [{"ref": "A B", "hyp": "a c"}]
    scored, summary = score_rows(rows, "wer", str.lower, ref_key="ref", hyp_key="hyp")
    assert scored[0]["substitutions"] == 1 and summary["normalizer"] == "lower"


def test_bad_rows_name_source_and_line():
    rows = [{"text": "a", "pred_text": "a"}, {"text": "b"}, {"text": None, "pred_text": 3}]
    with pytest.raises(UserError) as info:
        score_rows(rows, "cer", "zh", source="preds.jsonl", line_numbers=[1, 3, 4])
    message = str(info.value)
    assert "preds.jsonl:3: field 'pred_text' is missing" in message
    assert "preds.jsonl:4: field 'text' is null, expected a string" in message
    assert "preds.jsonl:4: field 'pred_text' is int, expected a string" in message
    assert "3 problem(s)" in message


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "stages.score", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_end_to_end(tmp_path):
    preds = tmp_path / "preds.jsonl"
    lines = [
        {"id": "a", "audio": "a.wav", "text": "今 天 天 气", "pred_text": "今天天气"},
        {"id": "b", "audio": "b.wav", "text": "我用iPhone打电话。", "pred_text": "我用iphone打电"},
        {"id": "c", "audio": "c.wav", "text": "１２３", "pred_text": ""},
    ]
    preds.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in lines) + "\n\n",
                     encoding="utf-8")
    out, summary_path = tmp_path / "out" / "scored.jsonl", tmp_path / "out" / "summary.json"
    result = run_cli("--input", preds, "--output", out, "--summary", summary_path,
                     "--metric", "cer")
    assert result.returncode == 0, result.stderr
    scored = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in scored] == ["c", "b", "a"]
    assert [row["cer_errors"] for row in scored] == [3, 1, 0]
    assert scored[2]["audio"] == "a.wav" and scored[2]["ref_norm"] == "今 天 天 气"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["normalizer"] == "zh"  # the CER default
    assert (summary["errors"], summary["ref_len"], summary["utterances"]) == (4, 18, 3)
    assert summary["rate"] == pytest.approx(4 / 18)
    assert summary["empty_predictions"] == 1
    assert {"config_hash", "git_commit", "versions"} <= summary["provenance"].keys()


def test_cli_reports_missing_field_with_file_and_line(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"text": "a", "pred_text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    out = tmp_path / "scored.jsonl"
    result = run_cli("--input", preds, "--output", out, "--summary", tmp_path / "s.json",
                     "--metric", "wer")
    assert result.returncode == 1
    assert f"{preds}:3: field 'pred_text' is missing" in result.stderr
    assert not out.exists()


def test_cli_help_names_defaults():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "default: zh for cer, en for wer" in result.stdout


def test_cli_refuses_an_empty_predictions_file(tmp_path, capsys):
    from stages.common.cli import run_stage
    from stages.score import build_parser, main

    preds = tmp_path / "empty.jsonl"
    preds.write_text("\n", encoding="utf-8")
    argv = ["--input", str(preds), "--output", str(tmp_path / "o.jsonl"),
            "--summary", str(tmp_path / "s.json"), "--metric", "cer"]
    assert run_stage(main, build_parser(), argv) == 1
    assert "empty.jsonl: no rows to score" in capsys.readouterr().err
