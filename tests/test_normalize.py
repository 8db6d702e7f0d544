"""Text normalizers: exact outputs on hand-picked inputs."""

import json

import pytest

from stages.common.errors import UserError
from stages.eval.normalize import default_normalizer, normalize_zh, normalizer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("你好，世界。！？", "你好 世界"),  # full-width punctuation
        ("Hello, world! (ok)?", "hello world ok"),  # ASCII punctuation, lower-case
        ("１２３ＡＢＣ", "123abc"),  # full-width digits and letters to ASCII
        ("今天\u3000天气", "今天 天气"),  # ideographic space is whitespace
        ("《红楼梦》、“好”——～", "红楼梦 好"),  # CJK brackets, quotes, dashes, tilde
        ("中\u200b文\ufeff", "中文"),  # zero-width space and BOM are dropped
        ("ｶﾞｷﾞ", "ガギ"),  # half-width katakana composes to full-width
        ("  我用 iPhone\t打电话 \n", "我用 iphone 打电话"),
        ("", ""),
    ],
)
def test_zh_normalizer(raw, expected):
    assert normalize_zh(raw) == expected
    assert normalizer("zh")(raw) == expected


def test_zh_normalizer_keeps_cjk_ideographs():
    text = "今天天气很好我们一起去公园散步吧龘齉"
    assert normalize_zh(text) == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Whisper reads "o" after a number as zero: its known behaviour, kept as is.
        ("It's 10 o'clock", "it is 100 clock"),
        ("Mr. Smith paid $20.50 for twenty-one apples.", "mister smith paid $20.50 for 21 apples"),
        ("I can't, won't; they're", "i can not will not they are"),
        ("Um, hello [noise] (laughs) world!", "hello world"),
        ("one hundred and twenty three", "123"),
        ("1,000,000 people", "1000000 people"),
        ("Dr. Who", "doctor who"),
        ("The colour grey", "the colour grey"),  # no spelling map: kept as written
    ],
)
def test_en_normalizer_matches_whisper(raw, expected):
    assert normalizer("en")(raw) == expected


def test_en_spelling_map_from_mapping_and_file(tmp_path):
    assert normalizer("en", english_spelling={"colour": "color"})("The colour") == "the color"
    path = tmp_path / "normalizer.json"
    path.write_text(json.dumps({"grey": "gray"}), encoding="utf-8")
    assert normalizer("en", english_spelling=path)("Grey cat") == "gray cat"
    assert normalizer("en", english_spelling=str(path))("grey") == "gray"


def test_bad_spelling_map_is_a_user_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(["colour", "color"]), encoding="utf-8")
    with pytest.raises(UserError, match="bad.json: expected a JSON object"):
        normalizer("en", english_spelling=path)
    with pytest.raises(UserError, match="not found"):
        normalizer("en", english_spelling=tmp_path / "missing.json")
    with pytest.raises(UserError, match="only applies to the 'en'"):
        normalizer("zh", english_spelling={"a": "b"})


def test_basic_and_none_normalizers():
    basic = normalizer("basic")
    assert basic("Hello, World!") == "hello world"  # Whisper leaves a trailing space; stripped
    assert basic("naïve café [music]") == "naïve café"
    assert basic("我用iPhone打电话。") == "我用iphone打电话"
    assert normalizer("none")("  Hello, World! ") == "Hello, World!"


def test_defaults_and_unknown_names():
    assert default_normalizer("cer") == "zh"
    assert default_normalizer("wer") == "en"
    with pytest.raises(UserError, match="unknown normalizer 'fr'"):
        normalizer("fr")
    with pytest.raises(ValueError, match="unknown metric"):
        default_normalizer("ser")
