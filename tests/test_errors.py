"""Error counting: substitutions/deletions/insertions checked by hand for CER and WER."""

import jiwer
import pytest

from stages.eval.normalize import normalize_zh
from stages.eval.scoring import ErrorCounts, count_errors, count_errors_batch, total, units


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("a b c d", "a x c d e", ErrorCounts(1, 0, 1, 4)),
        ("the cat sat on the mat", "the cat sat on mat", ErrorCounts(0, 1, 0, 6)),
        ("a b", "c d e", ErrorCounts(2, 0, 1, 2)),
        ("hello world", "", ErrorCounts(0, 2, 0, 2)),
        ("", "two words", ErrorCounts(0, 0, 2, 0)),
        ("", "", ErrorCounts(0, 0, 0, 0)),
        ("same  words\there", " same words here ", ErrorCounts(0, 0, 0, 3)),
    ],
)
def test_wer_counts(ref, hyp, expected):
    assert count_errors(ref, hyp, "wer") == expected


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("abcd", "abxd", ErrorCounts(1, 0, 0, 4)),
        ("今天天气很好", "今天气很好", ErrorCounts(0, 1, 0, 6)),
        ("今天天气", "今天天天气", ErrorCounts(0, 0, 1, 4)),
        ("今天天气", "明天天汽", ErrorCounts(2, 0, 0, 4)),
        ("今 天 天 气", "今天天气", ErrorCounts(0, 0, 0, 4)),  # whitespace is not a character
        ("abc", "", ErrorCounts(0, 3, 0, 3)),
        ("", "abc", ErrorCounts(0, 0, 3, 0)),
        # mixed scripts: every Latin letter is one character (2 + 6 + 3 = 11)
        ("我用iphone打电话", "我用iphome打电话", ErrorCounts(1, 0, 0, 11)),
        ("我用iphone打电话", "我用phone打电话", ErrorCounts(0, 1, 0, 11)),
        ("我用iphone打电话", "我用 iphone 打电话吧", ErrorCounts(0, 0, 1, 11)),
    ],
)
def test_cer_counts(ref, hyp, expected):
    assert count_errors(ref, hyp, "cer") == expected


def test_space_separated_chinese_reference_is_zero_cer_after_normalization():
    ref, hyp = normalize_zh("今 天 天 气，"), normalize_zh("今天天气。")
    counts = count_errors(ref, hyp, "cer")
    assert (counts.errors, counts.ref_len, counts.rate) == (0, 4, 0.0)


def test_mixed_script_cer_with_normalization():
    ref, hyp = normalize_zh("我用iPhone打电话。"), normalize_zh("我用 IPHONE 打电话")
    counts = count_errors(ref, hyp, "cer")
    assert counts == ErrorCounts(0, 0, 0, 11)


def test_units():
    assert units(" 今 天\tab ", "cer") == ["今", "天", "a", "b"]
    assert units(" hello  big\nworld ", "wer") == ["hello", "big", "world"]
    with pytest.raises(ValueError, match="unknown metric"):
        units("x", "ser")


def test_error_counts_properties_and_total():
    a, b = ErrorCounts(1, 2, 3, 10), ErrorCounts(0, 1, 0, 0)
    assert (a.errors, a.hits, a.rate) == (6, 7, 0.6)
    assert b.rate is None
    assert total([a, b]) == ErrorCounts(1, 3, 3, 10)
    assert total([]) == ErrorCounts()


def test_batch_equals_single_pairs_and_jiwer_totals():
    refs = ["a b c d", "", "x y z", "one", "p q"]
    hyps = ["a x c d e", "new", "x z", "", "p q"]
    batch = count_errors_batch(refs, hyps, "wer")
    assert batch == [count_errors(r, h, "wer") for r, h in zip(refs, hyps, strict=True)]
    corpus = total(batch)
    out = jiwer.process_words(refs, hyps)
    assert (corpus.substitutions, corpus.deletions, corpus.insertions) == (
        out.substitutions, out.deletions, out.insertions)
    assert corpus == ErrorCounts(1, 2, 2, 10)


def test_batch_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        count_errors_batch(["a", "b"], ["a"], "cer")
    assert count_errors_batch([], [], "cer") == []
