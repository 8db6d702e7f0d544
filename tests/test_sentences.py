"""Sentence generator: deterministic, small vocabulary, many combinations, right scripts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from stages.demo.sentences import (
    GRAMMARS,
    LANGUAGES,
    MAX_WORDS,
    MIN_WORDS,
    PARTITIONS,
    generate_sentence,
    partition_of,
    sample_sentences,
    vocabulary,
    word_bounds,
)

# Whole-sentence patterns per language: script, separators and final punctuation.
SCRIPTS = {
    "zh": re.compile(r"[\u4e00-\u9fff]+[。？]"),
    "ja": re.compile(r"[\u3041-\u309f\u30a0-\u30ff]+。"),  # hiragana and katakana only
    "ko": re.compile(r"[\uac00-\ud7a3]+( [\uac00-\ud7a3]+)*[.?]"),
    "en": re.compile(r"[a-z]+( [a-z]+)*[.?]"),
    "de": re.compile(r"[a-zA-ZäöüÄÖÜß]+( [a-zA-ZäöüÄÖÜß]+)*[.?]"),
    "fr": re.compile(r"[a-zàâçéèêëîïôûùüÿœ'-]+( [a-zàâçéèêëîïôûùüÿœ'-]+)*[.?]"),
}


def _draw(language: str, seed: int, count: int):
    rng = np.random.default_rng(seed)
    return [generate_sentence(language, rng) for _ in range(count)]


@pytest.mark.parametrize("language", LANGUAGES)
def test_scripts_lengths_and_vocabulary(language):
    vocab = vocabulary(language)
    assert 20 <= len(vocab) <= 32
    used = set()
    for sentence in _draw(language, 0, 3000):
        assert SCRIPTS[language].fullmatch(sentence.text), sentence.text
        assert MIN_WORDS <= len(sentence.words) <= MAX_WORDS
        assert set(sentence.words) <= vocab, sentence.words
        used.update(sentence.words)
    assert used == vocab, f"never produced: {sorted(vocab - used)}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_combinations_are_numerous(language):
    texts = [sentence.text for sentence in _draw(language, 1, 4000)]
    # The evaluated languages (zh, en) need room for ~800 distinct training sentences plus
    # their td_pool and eval partitions; the others fill a few dozen clips each.
    assert len(set(texts)) > (800 if language in ("zh", "en") else 150)


def test_deterministic_for_a_seed():
    for language in LANGUAGES:
        assert _draw(language, 5, 50) == _draw(language, 5, 50)
        assert _draw(language, 5, 50) != _draw(language, 6, 50)


def test_zh_and_ja_have_no_spaces_others_do():
    assert " " not in "".join(s.text for s in _draw("zh", 2, 200) + _draw("ja", 2, 200))
    assert all(" " in s.text for s in _draw("en", 2, 200))


def test_partitions_are_fixed_and_disjoint():
    rng = np.random.default_rng(3)
    by_partition = {name: sample_sentences("zh", 150, rng, name) for name in PARTITIONS}
    for name, sentences in by_partition.items():
        texts = [s.text for s in sentences]
        assert len(set(texts)) == len(texts) == 150
        assert all(partition_of(s) == name for s in sentences)
        assert all(partition_of(s.text, "zh") == name for s in sentences)
    train = {s.text for s in by_partition["train"]}
    assert not train & {s.text for s in by_partition["eval"]}
    # Roughly 70 / 15 / 15 of the sentence space.
    counts = {name: 0 for name in PARTITIONS}
    for sentence in _draw("en", 4, 4000):
        counts[partition_of(sentence)] += 1
    assert 0.64 < counts["train"] / 4000 < 0.76
    assert 0.10 < counts["eval"] / 4000 < 0.20


def test_asking_for_too_many_distinct_sentences_fails_clearly():
    with pytest.raises(ValueError, match="distinct ja sentences"):
        # ~15 % of the few thousand ja sentences are eval sentences: 3000 cannot exist.
        sample_sentences("ja", 3000, np.random.default_rng(0), "eval", max_draws_per_sentence=3)
    with pytest.raises(ValueError, match="unknown partition"):
        sample_sentences("en", 1, np.random.default_rng(0), "test")
    with pytest.raises(ValueError, match="unsupported language"):
        generate_sentence("xx", np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs the language"):
        partition_of("the cat slept.")


# --- the large grammar (zh and en, for GPU-sized models) -----------------------------------

@pytest.mark.parametrize("language", ["zh", "en"])
def test_large_grammar_scripts_lengths_and_vocabulary(language):
    vocab = vocabulary(language, "large")
    assert len(vocab) > 3 * len(vocabulary(language))  # a few hundred words, not ~25
    fewest, most = word_bounds("large")
    rng = np.random.default_rng(0)
    used, lengths = set(), set()
    for _ in range(20000):
        sentence = generate_sentence(language, rng, "large")
        assert SCRIPTS[language].fullmatch(sentence.text), sentence.text
        assert fewest <= len(sentence.words) <= most
        assert set(sentence.words) <= vocab, sentence.words
        used.update(sentence.words)
        lengths.add(len(sentence.words))
    assert used == vocab, f"never produced: {sorted(vocab - used)}"
    assert min(lengths) == 3 and max(lengths) >= 8


@pytest.mark.parametrize("language", ["zh", "en"])
def test_large_grammar_has_far_more_sentences_than_the_small_one(language):
    rng = np.random.default_rng(1)
    large = {generate_sentence(language, rng, "large").text for _ in range(20000)}
    small = {generate_sentence(language, rng).text for _ in range(20000)}
    assert len(small) < 2000
    # Almost every draw is new: the grammar holds far more than 20,000 sentences.
    assert len(large) > 15000
    # Its train partition alone supplies the study's 10,000 training sentences per language.
    assert len(sample_sentences(language, 10000, rng, "train", grammar="large")) == 10000


def test_large_grammar_articles_and_aspect():
    rng = np.random.default_rng(2)
    en = [generate_sentence("en", rng, "large").words for _ in range(5000)]
    for words in en:
        for article, following in zip(words, words[1:], strict=False):
            if article in ("a", "an"):
                assert (article == "an") == (following[0] in "aeiou"), words
    zh = [generate_sentence("zh", rng, "large").words for _ in range(5000)]
    assert any("了" in words for words in zh)
    for words in zh:  # 了 (finished action) never follows a modal or joins a future time
        if "了" in words:
            assert not {"想", "要", "会", "不", "明天", "晚上", "周末", "现在"} & set(words), words


def test_large_grammar_refuses_other_languages_and_unknown_grammars():
    with pytest.raises(ValueError, match="unsupported language 'de' for the large grammar"):
        generate_sentence("de", np.random.default_rng(0), "large")
    with pytest.raises(ValueError, match="unknown grammar 'huge'"):
        generate_sentence("en", np.random.default_rng(0), "huge")
    assert GRAMMARS == ("small", "large")
