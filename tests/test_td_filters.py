"""Teacher-data quality filters and report arithmetic, on crafted teacher outputs (no model)."""

from __future__ import annotations

import pytest

from stages.eval.scoring import ErrorCounts
from stages.td.filters import (
    FILTERS,
    Candidate,
    FilterSettings,
    judge,
    longest_char_run,
    longest_tandem_repeat,
    metric_for,
    normalizer_name_for,
    spoken_units,
)
from stages.td.merge import check_reports, gather
from stages.td.summary import add_counts, empty_counts, shard_counts, summarize

DEFAULT = FilterSettings()


def ok(text="the cat sat on the mat", language="en", duration=3.0, logprob=-0.2, stopped=True,
       reference=None):
    """A candidate that passes every filter unless a field is overridden."""
    return Candidate(text=text, language=language, duration=duration, mean_logprob=logprob,
                     stopped=stopped, reference=reference)


def one(candidate, settings=DEFAULT):
    return judge([candidate], settings)[0]


def test_clean_candidate_passes_everything():
    verdict = one(ok(reference="The cat sat on the mat."))
    assert verdict.kept and verdict.reasons == [] and verdict.details == {}
    assert verdict.metric == "wer" and verdict.counts == ErrorCounts(0, 0, 0, 6)


def test_empty():
    verdict = one(ok(text="   "))
    assert verdict.reasons == ["empty"]
    assert verdict.repetition_checks == []


def test_unfinished():
    assert one(ok(stopped=False)).reasons == ["unfinished"]


def test_tandem_repeat_counts():
    assert longest_tandem_repeat(list("abababab"), 10) == (4, 2)
    assert longest_tandem_repeat(list("xabcabcabcy"), 10) == (3, 3)
    assert longest_tandem_repeat(list("aaaa"), 10) == (4, 1)
    assert longest_tandem_repeat(list("ab"), 10) == (1, 1)
    assert longest_tandem_repeat([], 10) == (0, 0)
    # period longer than the n-gram bound is not seen
    assert longest_tandem_repeat(list("abcabc"), 2) == (1, 1)


def test_ngram_repetition_bound_is_exclusive():
    four = "i said it again " * 4  # 4 copies of a 4-gram: allowed (max_repeats 4)
    five = "i said it again " * 5
    assert one(ok(text=four, duration=10)).kept
    verdict = one(ok(text=five, duration=10))
    assert verdict.reasons == ["repetition"]
    assert "ngram" in verdict.repetition_checks
    assert "4-gram repeated 5 times" in verdict.details["repetition"]


def test_cjk_repetition_counts_characters():
    assert one(ok(text="我想" * 4, language="zh", duration=5)).kept
    verdict = one(ok(text="我想" * 5, language="zh", duration=5))
    assert verdict.reasons == ["repetition"] and verdict.repetition_checks == ["ngram"]


def test_char_run():
    assert longest_char_run("ahh hhhh!") == (4, "h")
    assert one(ok(text="no" + "o" * 9, duration=5)).kept  # run of 10
    verdict = one(ok(text="no" + "o" * 10, duration=5))  # run of 11
    assert verdict.reasons == ["repetition"]
    assert verdict.repetition_checks == ["char_run"]  # one English word: no n-gram loop


def test_compression_ratio():
    phrase = "one two three four five six seven eight nine ten eleven twelve thirteen "
    assert one(ok(text=phrase * 2, duration=20)).kept  # ratio 2.15
    verdict = one(ok(text=phrase * 3, duration=20))  # ratio 3.2; period 13 words > 10
    assert verdict.reasons == ["repetition"] and verdict.repetition_checks == ["compression"]


@pytest.mark.parametrize(("language", "text", "units"), [
    ("zh", "今天，天气好！", 5), ("ja", "きょうは晴れ。", 6), ("ko", "안녕 하세요", 5),
    ("en", "it's 10 o'clock", 9), (None, "Äpfel, bitte", 10)])
def test_spoken_units(language, text, units):
    assert spoken_units(text, language) == units


def test_rate_per_language():
    assert one(ok(text="今天天气很好我们去公园散", language="zh", duration=1.0)).kept  # 12/s
    fast_zh = "今天天气很好我们去公园散步吃饭睡觉"  # 17 characters, all distinct pairs
    assert one(ok(text=fast_zh, language="zh", duration=1.5)).kept  # 11.3/s
    verdict = one(ok(text=fast_zh, language="zh", duration=1.0))  # 17/s > 12
    assert verdict.reasons == ["repetition"] and verdict.repetition_checks == ["rate"]
    kana = "きょうははれてかぜがふいてい"  # 14 kana in 1 s: under ja's 15, over zh's 12
    assert one(ok(text=kana, language="ja", duration=1.0)).kept
    assert one(ok(text=kana, language="zh", duration=1.0)).repetition_checks == ["rate"]
    # other languages count letters against the default bound (25/s)
    assert one(ok(text="hello wonderful world", language="de", duration=0.8)).kept  # 23.8
    assert one(ok(text="hello wonderful world", language="de",
                  duration=0.7)).repetition_checks == ["rate"]  # 27.1
    custom = FilterSettings(max_units_per_second={"default": 30.0})
    assert one(ok(text=fast_zh, language="zh", duration=1.0), custom).kept


def test_low_logprob_threshold():
    assert one(ok(logprob=-1.0)).kept  # not below the bound
    verdict = one(ok(logprob=-1.01))
    assert verdict.reasons == ["low_logprob"]
    assert verdict.details["low_logprob"] == "mean log-prob -1.010 (min -1.0)"


def test_metric_and_normalizer_by_language():
    assert [metric_for(x) for x in ("zh", "ja", "ko", "yue", "en", "de", None)] == \
        ["cer"] * 4 + ["wer"] * 3
    assert [normalizer_name_for(x) for x in ("zh", "ko", "en", "fr", None)] == \
        ["zh", "zh", "en", "basic", "basic"]


def test_high_error_rate_wer_and_cer():
    en = one(ok(text="the cat sat on a mat", reference="The cat sat on the mat."))
    assert en.reasons == ["high_error_rate"] and en.counts == ErrorCounts(1, 0, 0, 6)
    assert en.details["high_error_rate"] == "wer 0.167 (max 0.1)"
    assert one(ok(text="the cat sat on a mat", reference="The cat sat on the mat."),
               FilterSettings(max_wer=0.2)).kept
    # en normalizer: spelled-out numbers and contractions match
    assert one(ok(text="it is ten dollars", reference="It's $10.")).counts.errors == 0
    # zh: characters, punctuation and width folded away
    zh = one(ok(text="今天天气很好。", language="zh", reference="今天 天气 很好"))
    assert zh.kept and zh.metric == "cer" and zh.counts == ErrorCounts(0, 0, 0, 6)
    wrong = one(ok(text="今天天汽很好", language="zh", reference="今天天气很好"))
    assert wrong.reasons == ["high_error_rate"] and wrong.counts == ErrorCounts(1, 0, 0, 6)
    # other languages: basic normalizer, WER
    de = one(ok(text="guten tag", language="de", reference="Guten Tag!"))
    assert de.kept and de.counts == ErrorCounts(0, 0, 0, 2)


def test_empty_reference_fails_only_with_output():
    assert one(ok(text="hello", reference="。")).reasons == ["high_error_rate"]
    verdict = one(ok(text="", reference="。"))
    assert verdict.reasons == ["empty"] and verdict.error_rate == 0.0


def test_every_failure_listed_in_filter_order():
    verdict = one(ok(text="", stopped=False, logprob=-3.0, reference="hello world"))
    assert verdict.reasons == ["empty", "unfinished", "low_logprob", "high_error_rate"]
    assert list(verdict.details) == verdict.reasons


def test_disabled_filters_do_not_drop_but_still_count():
    settings = FilterSettings(filters=("empty",))
    verdict = one(ok(text="la " * 8, stopped=False, logprob=-5.0, reference="hello"), settings)
    assert verdict.kept and verdict.repetition_checks == ["ngram"]
    assert verdict.counts == ErrorCounts(1, 0, 7, 1)  # still scored for the report


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown filter"):
        FilterSettings(filters=("empty", "profanity"))
    with pytest.raises(ValueError, match="default"):
        FilterSettings(max_units_per_second={"zh": 10.0})
    assert FilterSettings().as_dict()["enabled"] == list(FILTERS)


# ---- report arithmetic -------------------------------------------------------------------------

def _rows_and_verdicts():
    candidates = [
        ok(text="the cat sat", reference="the cat sat"),  # kept, wer 0/3
        ok(text="a dog", reference="the cat sat"),  # dropped: high_error_rate (3/3)
        ok(text="", language="zh", reference="今天"),  # dropped: empty (+ cer 2/2)
        ok(text="hello", language=None, logprob=-2.0),  # dropped: low_logprob, no reference
    ]
    verdicts = judge(candidates, DEFAULT)
    rows = [{"duration": c.duration, "language": c.language,
             "language_source": "manifest" if c.language else "none"} for c in candidates]
    return rows, verdicts


def test_shard_counts_and_summary():
    rows, verdicts = _rows_and_verdicts()
    counts = shard_counts(rows, verdicts)
    assert counts["rows"] == {"input": 4, "kept": 1, "dropped": 3, "with_reference": 3}
    assert counts["dropped_by_reason"] == {"empty": 1, "unfinished": 0, "repetition": 0,
                                           "low_logprob": 1, "high_error_rate": 1}
    assert counts["failed_by_filter"]["high_error_rate"] == 2  # the empty zh row too
    before, after = counts["teacher_errors"]["before"], counts["teacher_errors"]["after"]
    assert (before["wer"]["errors"], before["wer"]["ref_len"], before["wer"]["rows"]) == (3, 6, 2)
    assert (before["cer"]["errors"], before["cer"]["ref_len"]) == (2, 2)
    assert (after["wer"]["errors"], after["wer"]["ref_len"], after["cer"]["rows"]) == (0, 3, 0)
    assert counts["languages"]["unknown"]["rows"] == 1
    assert counts["language_sources"] == {"manifest": 3, "detected": 0, "none": 1}
    summary = summarize(counts)
    assert summary["teacher_error_rate"] == {"before": {"cer": 1.0, "wer": 0.5},
                                             "after": {"cer": None, "wer": 0.0}}
    assert summary["kept_fraction"] == 0.25
    assert summary["hours"] == round(12 / 3600, 6)


def test_merged_rates_come_from_summed_counts():
    a, b = empty_counts(), empty_counts()
    a["teacher_errors"]["before"]["wer"].update(errors=1, ref_len=10, rows=1)
    b["teacher_errors"]["before"]["wer"].update(errors=9, ref_len=90, rows=1)
    b["teacher_errors"]["before"]["cer"].update(errors=5, ref_len=10, rows=1)
    a["timing"].update(transcribed_audio_seconds=30.0, transcribe_seconds=1.0)
    b["timing"].update(transcribed_audio_seconds=10.0, transcribe_seconds=3.0)
    merged = summarize(add_counts(a, b))
    assert merged["teacher_error_rate"]["before"] == {"cer": 0.5, "wer": 0.1}
    assert merged["audio_seconds_per_second"] == 10.0  # 40 s / 4 s, not the mean of 30 and 3.3


def _report(index, count=2, sha="abc", shard_rows=1):
    return {"shards": {"index": index, "count": count},
            "pool": {"path": "pool.jsonl", "sha256": sha, "rows": 2, "shard_rows": shard_rows},
            "teacher": {"fingerprint": "t"}, "settings": {"generation": {}, "filters": {}}}


def test_merge_checks_and_order():
    from stages.common.errors import UserError

    assert check_reports([("r1", _report(1)), ("r0", _report(0))]) == 2
    with pytest.raises(UserError, match="missing shard"):
        check_reports([("r0", _report(0))])
    with pytest.raises(UserError, match="both shard 0"):
        check_reports([("a", _report(0)), ("b", _report(0))])
    with pytest.raises(UserError, match="pool checksum"):
        check_reports([("r0", _report(0)), ("r1", _report(1, sha="other"))])
    with pytest.raises(UserError, match="cover 3 rows"):
        check_reports([("r0", _report(0, shard_rows=2)), ("r1", _report(1))])
    shards = [("s0", [{"id": "c"}, {"id": "a"}]), ("s1", [{"id": "b"}])]
    assert [r["id"] for r in gather(shards)] == ["a", "b", "c"]
    assert [r["id"] for r in gather(shards, order=["c", "b", "a", "d"])] == ["c", "b", "a"]
    with pytest.raises(UserError, match="not in the pool"):
        gather(shards, order=["a", "b"])
    with pytest.raises(UserError, match="also in"):
        gather([("s0", [{"id": "a"}]), ("s1", [{"id": "a"}])])
