"""Deterministic sentence generator for the demo speech corpus, one small grammar per language.

The vocabulary is deliberately tiny (23-29 words per language, 2-5 words per sentence) so that
models trained from scratch on a CPU for minutes learn to hear every word: with a larger one,
a few thousand training clips hold each word too rarely and tiny models learn the grammar but
not the sound. The combinations still number about a thousand for zh and en (the evaluated
languages) and a few hundred for the others. Every sentence falls into one fixed *partition*
(train, td_pool or eval) by a hash of its text, which keeps evaluation sentences
disjoint from training sentences whatever the split sizes or seed.

A second, *large* grammar for zh and en (``grammar="large"``, ``stages.demo.grammar_large``)
has millions of sentences of 3-12 words, for models trained on a GPU.

Conventions: en/de/fr/ko separate words with spaces and end with "." or "?"; zh (Chinese
characters) and ja (kana only) are written without spaces and end with "。" or "？". Text is
lower case except German nouns. Randomness comes only from the ``numpy.random.Generator`` passed
in, never from global state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from stages.demo import grammar_large
from stages.demo.draw import maybe, pick

Language = Literal["zh", "en", "de", "fr", "ko", "ja"]
LANGUAGES: tuple[str, ...] = get_args(Language)
MIN_WORDS, MAX_WORDS = 2, 5
Grammar = Literal["small", "large"]
GRAMMARS: tuple[str, ...] = get_args(Grammar)

# Sentence-space partitions, by hash bucket out of 100: sizes 70 / 15 / 15.
PARTITIONS = {"train": range(0, 70), "td_pool": range(70, 85), "eval": range(85, 100)}

_UNSPACED = {"zh", "ja"}


@dataclass(frozen=True)
class Sentence:
    """A generated sentence: its words (vocabulary units) and the final punctuation mark."""

    language: str
    words: tuple[str, ...]
    end: str

    @property
    def text(self) -> str:
        joiner = "" if self.language in _UNSPACED else " "
        return joiner.join(self.words) + self.end


# --- English: past tense, so subjects and verbs never need agreement -------------------------
_EN = {
    "det": ("the", "a", "my"),
    "adj": ("big", "red", "old"),
    "animate": ("cat", "dog", "man", "girl"),
    "thing": ("ball", "book", "cup", "hat"),
    "transitive": ("saw", "took", "liked", "washed"),
    "intransitive": ("slept", "sang", "ran"),
    "adverb": ("today", "again"),
}


def _english(rng: np.random.Generator) -> tuple[list[str], str]:
    # Every adjective and noun starts with a consonant, so "a" never needs to become "an".
    kind = rng.random()
    if kind < 0.08:
        return ["where", "was", pick(rng, _EN["det"]),
                pick(rng, _EN["thing"] + _EN["animate"])], "?"
    subject = [pick(rng, _EN["det"]), pick(rng, _EN["animate"])]
    if kind < 0.25:
        return [*subject, "was", pick(rng, _EN["adj"])], "."
    if kind < 0.5:
        if maybe(rng, 0.5):
            subject.insert(1, pick(rng, _EN["adj"]))
        adverb = [pick(rng, _EN["adverb"])] if maybe(rng, 0.5) else []
        return [*subject, pick(rng, _EN["intransitive"]), *adverb], "."
    return [*subject, pick(rng, _EN["transitive"]), pick(rng, _EN["det"]),
            pick(rng, _EN["thing"])], "."


# --- German: present tense, third person singular, noun phrases with their articles --------
_DE = {
    "subject": ("der Hund", "die Katze", "das Kind", "er", "sie"),
    "object": ("den Ball", "das Buch", "die Blume"),
    "transitive": ("sieht", "kauft", "findet"),
    "intransitive": ("schläft", "singt", "lacht"),
    "adverb": ("heute", "oft"),
    "adjective": ("klein", "alt", "müde"),
}


def _german(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = pick(rng, _DE["subject"]).split()
    kind = rng.random()
    adverb = [pick(rng, _DE["adverb"])] if maybe(rng, 0.4) else []
    if kind < 0.08:
        return ["ist", *subject, pick(rng, _DE["adjective"])], "?"
    if kind < 0.25:
        return [*subject, "ist", *adverb, pick(rng, _DE["adjective"])], "."
    if kind < 0.45:
        return [*subject, pick(rng, _DE["intransitive"]), *adverb], "."
    adverb = adverb if len(subject) == 1 else []  # at most five words
    return [*subject, pick(rng, _DE["transitive"]), *adverb,
            *pick(rng, _DE["object"]).split()], "."


# --- French: present tense, adjectives agree with the subject's gender -----------------------
_FR = {
    "subject": (("le chat", "m"), ("la fille", "f"), ("mon ami", "m"), ("il", "m"),
                ("elle", "f")),
    "transitive": ("regarde", "prend", "aime"),
    "object": ("le livre", "la pomme", "une fleur"),
    "intransitive": ("dort", "chante", "mange"),
    "time": ("aujourd'hui", "encore"),
    "adjective": (("petit", "petite"), ("grand", "grande"), ("content", "contente")),
}


def _french(rng: np.random.Generator) -> tuple[list[str], str]:
    subject_text, gender = pick(rng, _FR["subject"])
    subject = subject_text.split()
    kind = rng.random()
    time = [pick(rng, _FR["time"])] if maybe(rng, 0.35) else []
    if kind < 0.08:
        return ["est-ce", "que", *subject, pick(rng, _FR["intransitive"])], "?"
    if kind < 0.25:
        adjective = pick(rng, _FR["adjective"])[0 if gender == "m" else 1]
        return [*subject, "est", adjective, *time], "."
    if kind < 0.45:
        return [*subject, pick(rng, _FR["intransitive"]), *time], "."
    time = time if len(subject) == 1 else []  # at most five words
    return [*subject, pick(rng, _FR["transitive"]), *pick(rng, _FR["object"]).split(),
            *time], "."


# --- Mandarin: Chinese characters, verb-object pairs that collocate --------------------------
_ZH = {
    "subject": ("我", "你", "他", "我们", "老师", "妈妈"),
    "time": ("今天", "明天", "昨天"),
    "verb_objects": {
        "看": ("书", "电视"),
        "吃": ("饭", "苹果"),
        "喝": ("水", "茶"),
        "买": ("书", "苹果", "花"),
        "喜欢": ("花", "茶"),
    },
    "adjective": ("忙", "累", "高兴"),
}


def _mandarin(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = [pick(rng, _ZH["subject"])]
    time = [pick(rng, _ZH["time"])] if maybe(rng, 0.4) else []
    head = [*time, *subject] if maybe(rng, 0.5) else [*subject, *time]
    if rng.random() < 0.2:
        return [*head, "很", pick(rng, _ZH["adjective"])], "。"
    verb = pick(rng, tuple(_ZH["verb_objects"]))
    # 了 marks a finished action: never with 明天/今天 or with 喜欢.
    aspect = ["了"] if verb != "喜欢" and time in ([], ["昨天"]) and maybe(rng, 0.4) else []
    words = [*head, verb, *aspect, pick(rng, _ZH["verb_objects"][verb])]
    if not aspect and maybe(rng, 0.1):
        return [*words, "吗"], "？"
    return words, "。"


# --- Japanese: kana only; units are a word with its particle or polite ending ----------------
_JA = {
    "subject": ("わたしは", "ねこは", "せんせいは", "ともだちは"),
    "time": ("きょう", "きのう"),
    "place": ("がっこう", "いえ"),
    "verb_objects": {  # present, past, objects
        "eat": ("たべます", "たべました", ("パンを", "りんごを", "ごはんを")),
        "drink": ("のみます", "のみました", ("みずを", "おちゃを")),
    },
    "motion": ("いきます", "いきました"),
    "adjective": ("おおきいです", "げんきです", "かわいいです"),
}


def _japanese(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = [pick(rng, _JA["subject"])]
    time = [pick(rng, _JA["time"])] if maybe(rng, 0.45) else []
    past = int(time == ["きのう"])
    kind = rng.random()
    if kind < 0.2:
        return [*subject, *(["とても"] if maybe(rng, 0.4) else []),
                pick(rng, _JA["adjective"])], "。"
    if kind < 0.45:
        return [*subject, *time, pick(rng, _JA["place"]) + "へ", _JA["motion"][past]], "。"
    place = [pick(rng, _JA["place"]) + "で"] if maybe(rng, 0.3) else []
    present, past_form, objects = _JA["verb_objects"][pick(rng, tuple(_JA["verb_objects"]))]
    return [*subject, *time, *place, pick(rng, objects), (present, past_form)[past]], "。"


# --- Korean: Hangul words (noun + particle), tense follows the time word --------------------
_KO = {
    "subject": ("나는", "친구는", "엄마는", "고양이는"),
    "time": ("오늘", "어제"),
    "place": ("집", "학교"),
    "verbs": {  # present, past, objects
        "eat": ("먹어요", "먹었어요", ("밥을", "사과를")),
        "drink": ("마셔요", "마셨어요", ("물을", "우유를")),
    },
    "motion": ("가요", "갔어요"),
    "adjective": ("커요", "바빠요"),
}


def _korean(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = [pick(rng, _KO["subject"])]
    time = [pick(rng, _KO["time"])] if maybe(rng, 0.45) else []
    past = int(time == ["어제"])
    end = "?" if maybe(rng, 0.1) else "."
    kind = rng.random()
    if kind < 0.2:
        degree = ["아주"] if maybe(rng, 0.4) else []
        return [*subject, *degree, pick(rng, _KO["adjective"])], end
    if kind < 0.45:
        return [*subject, *time, pick(rng, _KO["place"]) + "에", _KO["motion"][past]], end
    place = [pick(rng, _KO["place"]) + "에서"] if maybe(rng, 0.3) else []
    present, past_form, objects = _KO["verbs"][pick(rng, tuple(_KO["verbs"]))]
    return [*subject, *time, *place, pick(rng, objects), (present, past_form)[past]], end


_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[list[str], str]]] = {
    "en": _english, "de": _german, "fr": _french, "zh": _mandarin, "ja": _japanese,
    "ko": _korean,
}
# Each grammar's builders and word bounds.
_GRAMMARS = {
    "small": (_BUILDERS, (MIN_WORDS, MAX_WORDS)),
    "large": (grammar_large.BUILDERS, (grammar_large.MIN_WORDS, grammar_large.MAX_WORDS)),
}


def _builders(language: str, grammar: str = "small"
              ) -> Callable[[np.random.Generator], tuple[list[str], str]]:
    """The builder of ``language`` in ``grammar``; ValueError for an unknown pair."""
    if grammar not in _GRAMMARS:
        raise ValueError(f"unknown grammar {grammar!r}; expected one of {list(GRAMMARS)}")
    builders = _GRAMMARS[grammar][0]
    if language not in builders:
        raise ValueError(f"unsupported language {language!r} for the {grammar} grammar; "
                         f"expected one of {list(builders)}")
    return builders[language]


def word_bounds(grammar: str = "small") -> tuple[int, int]:
    """The fewest and most words a sentence of ``grammar`` has."""
    return _GRAMMARS[grammar][1]


def generate_sentence(language: str, rng: np.random.Generator, grammar: str = "small"
                      ) -> Sentence:
    """One random sentence in ``language`` from ``grammar``, drawn with ``rng``."""
    build = _builders(language, grammar)
    fewest, most = word_bounds(grammar)
    while True:  # redraw the rare combinations outside the length bounds
        words, end = build(rng)
        if fewest <= len(words) <= most:
            return Sentence(language, tuple(words), end)


def partition_of(sentence: Sentence | str, language: str | None = None) -> str:
    """The fixed partition (``train``, ``td_pool`` or ``eval``) a sentence belongs to."""
    if isinstance(sentence, Sentence):
        text, language = sentence.text, sentence.language
    elif language is None:
        raise ValueError("partition_of(text) needs the language of the text")
    else:
        text = sentence
    digest = hashlib.sha256(f"{language}\t{text}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(name for name, buckets in PARTITIONS.items() if bucket in buckets)


def sample_sentences(language: str, count: int, rng: np.random.Generator,
                     partition: str | None = None, max_draws_per_sentence: int = 200,
                     grammar: str = "small") -> list[Sentence]:
    """``count`` distinct sentences, all from ``partition`` when given.

    Raises ValueError when the grammar cannot supply that many distinct sentences.
    """
    if partition is not None and partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; expected one of {list(PARTITIONS)}")
    chosen: dict[str, Sentence] = {}
    draws = 0
    while len(chosen) < count:
        draws += 1
        if draws > max_draws_per_sentence * max(count, 1):
            raise ValueError(f"only {len(chosen)} distinct {language} sentences found in "
                             f"partition {partition!r} after {draws - 1} draws; ask for fewer "
                             f"than {count}")
        sentence = generate_sentence(language, rng, grammar)
        if sentence.text in chosen:
            continue
        if partition is not None and partition_of(sentence) != partition:
            continue
        chosen[sentence.text] = sentence
    return list(chosen.values())


def _strings(values: Iterable) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            yield from _strings(value.keys())
            yield from _strings(value.values())
        else:
            yield from _strings(value)


_EXTRA_WORDS = {  # words the builders spell out inline rather than in their tables
    "en": ("where", "was"),
    "de": ("ist",),
    "fr": ("est-ce", "que", "est"),
    "zh": ("很", "了", "吗"),
    "ja": ("とても",),
    "ko": ("아주",),
}
_TABLES = {"en": _EN, "de": _DE, "fr": _FR, "zh": _ZH, "ja": _JA, "ko": _KO}
_NON_WORDS = {"m", "f", "drink", "eat"}  # table labels


def vocabulary(language: str, grammar: str = "small") -> frozenset[str]:
    """Every word ``grammar`` can produce (space-separated units; table entries for zh/ja)."""
    _builders(language, grammar)
    if grammar == "large":
        words = set(grammar_large.EXTRA_WORDS[language])
        for entry in _strings(grammar_large.TABLES[language].values()):
            words.update(entry.split())
        return frozenset(words)
    words = set(_EXTRA_WORDS[language])
    for key, value in _TABLES[language].items():
        for entry in _strings([value]):
            if entry in _NON_WORDS:
                continue
            if language == "ko" and key == "place":
                words.update({entry + "에", entry + "에서"})
            elif language == "ja" and key == "place":
                words.update({entry + "へ", entry + "で"})
            else:
                words.update(entry.split())
    return frozenset(words)
