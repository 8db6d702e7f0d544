"""Deterministic sentence generator for the demo speech corpus, one small grammar per language.

The vocabulary is deliberately tiny (about 60-75 words per language) so that models trained on a
CPU for minutes can learn it, while the combinations run into the tens of thousands, so that
evaluation sentences are unseen as whole sentences. Every sentence falls into one fixed
*partition* (train, td_pool or eval) by a hash of its text, which keeps evaluation sentences
disjoint from training sentences whatever the split sizes or seed.

Conventions: en/de/fr/ko separate words with spaces and end with "." or "?"; zh (Chinese
characters) and ja (kana only) are written without spaces and end with "。" or "？". Text is
lower case except German nouns. Randomness comes only from the ``numpy.random.Generator`` passed
in, never from global state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

LANGUAGES = ("zh", "en", "de", "fr", "ko", "ja")
MIN_WORDS, MAX_WORDS = 3, 8

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


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _maybe(rng: np.random.Generator, probability: float) -> bool:
    return bool(rng.random() < probability)


# --- English: past tense, so subjects and verbs never need agreement -------------------------
_EN = {
    "det": ("the", "a", "my", "our"),
    "adj": ("red", "green", "big", "small", "old", "new", "happy", "little"),
    "animate": ("cat", "dog", "bird", "man", "woman", "child", "teacher", "friend", "doctor",
                "farmer"),
    "thing": ("ball", "book", "box", "cup", "car", "hat", "letter", "picture", "table", "bag"),
    "place": ("garden", "park", "kitchen", "house", "school", "river", "city"),
    "prep": ("in", "near", "behind"),
    "transitive": ("saw", "found", "took", "liked", "painted", "carried", "bought", "washed",
                   "moved", "dropped"),
    "intransitive": ("slept", "waited", "sang", "walked", "played", "laughed"),
    "adverb": ("today", "yesterday", "again", "quickly", "slowly", "early"),
}


def _en_noun_phrase(rng, nouns) -> list[str]:
    # Every adjective and noun starts with a consonant, so "a" never needs to become "an".
    words = [_pick(rng, _EN["det"])]
    if _maybe(rng, 0.4):
        words.append(_pick(rng, _EN["adj"]))
    return [*words, _pick(rng, nouns)]


def _english(rng: np.random.Generator) -> tuple[list[str], str]:
    kind = rng.random()
    if kind < 0.08:
        return ["where", "was", *_en_noun_phrase(rng, _EN["thing"] + _EN["animate"])], "?"
    subject = _en_noun_phrase(rng, _EN["animate"])
    if kind < 0.25:
        words = [*subject, "was"] + (["very"] if _maybe(rng, 0.3) else [])
        words.append(_pick(rng, _EN["adj"]))
    elif kind < 0.45:
        words = [*subject, _pick(rng, _EN["intransitive"])]
    else:
        words = [*subject, _pick(rng, _EN["transitive"]), *_en_noun_phrase(rng, _EN["thing"])]
    if _maybe(rng, 0.35):
        words += [_pick(rng, _EN["prep"]), "the", _pick(rng, _EN["place"])]
    if _maybe(rng, 0.35):
        words.append(_pick(rng, _EN["adverb"]))
    return words, "."


# --- German: present tense, third person singular, noun phrases with their articles --------
_DE = {
    "subject": ("der Hund", "die Katze", "das Kind", "der Mann", "die Frau", "der Lehrer",
                "mein Freund", "meine Schwester", "der Vogel", "das Mädchen"),
    "object": ("den Ball", "den Apfel", "die Blume", "das Buch", "das Auto", "die Tasche",
               "den Brief", "das Bild", "die Milch", "den Tisch"),
    "transitive": ("sieht", "findet", "kauft", "sucht", "trägt", "malt", "nimmt", "liebt",
                   "wäscht", "holt"),
    "intransitive": ("schläft", "läuft", "singt", "lacht", "spielt", "wartet"),
    "place": ("im Garten", "im Park", "in der Küche", "in der Schule", "am Fluss", "zu Hause"),
    "adverb": ("heute", "morgen", "jetzt", "wieder", "oft", "langsam", "schnell", "gern"),
    "adjective": ("klein", "groß", "alt", "neu", "müde", "schön", "rot", "froh"),
}


def _german(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = _pick(rng, _DE["subject"]).split()
    kind = rng.random()
    adverb = [_pick(rng, _DE["adverb"])] if _maybe(rng, 0.4) else []
    predicate = (["sehr"] if _maybe(rng, 0.3) else []) + [_pick(rng, _DE["adjective"])]
    if kind < 0.08:
        return ["ist", *subject, *predicate], "?"
    if kind < 0.25:
        return [*subject, "ist", *adverb, *predicate], "."
    place = _pick(rng, _DE["place"]).split() if _maybe(rng, 0.35) else []
    if kind < 0.45:
        return [*subject, _pick(rng, _DE["intransitive"]), *adverb, *place], "."
    verb = _pick(rng, _DE["transitive"])
    return [*subject, verb, *adverb, *_pick(rng, _DE["object"]).split(), *place], "."


# --- French: present tense, adjectives agree with the subject's gender -----------------------
_FR = {
    "subject": (("le chat", "m"), ("le chien", "m"), ("la fille", "f"), ("le garçon", "m"),
                ("la femme", "f"), ("mon ami", "m"), ("ma sœur", "f"), ("le professeur", "m"),
                ("la voisine", "f"), ("l'enfant", "m")),
    "transitive": ("regarde", "cherche", "trouve", "aime", "porte", "achète", "prend", "lave",
                   "ouvre", "dessine"),
    "object": ("le livre", "la pomme", "une fleur", "le ballon", "la lettre", "un gâteau",
               "la voiture", "une tasse", "le sac", "la porte"),
    "intransitive": ("dort", "chante", "mange", "joue", "arrive", "attend"),
    "place": ("dans le jardin", "à la maison", "près de la rivière", "dans la cuisine",
              "à l'école", "au parc"),
    "time": ("aujourd'hui", "demain", "ce matin", "ce soir", "encore", "souvent"),
    "adjective": (("petit", "petite"), ("grand", "grande"), ("content", "contente"),
                  ("fatigué", "fatiguée"), ("heureux", "heureuse"), ("malade", "malade")),
}


def _french(rng: np.random.Generator) -> tuple[list[str], str]:
    subject_text, gender = _pick(rng, _FR["subject"])
    subject = subject_text.split()
    kind = rng.random()
    time = _pick(rng, _FR["time"]).split() if _maybe(rng, 0.35) else []
    if kind < 0.08:
        return ["est-ce", "que", *subject, _pick(rng, _FR["intransitive"])], "?"
    if kind < 0.25:
        adjective = _pick(rng, _FR["adjective"])[0 if gender == "m" else 1]
        very = ["très"] if _maybe(rng, 0.3) else []
        return [*subject, "est", *very, adjective, *time], "."
    place = _pick(rng, _FR["place"]).split() if _maybe(rng, 0.35) else []
    if kind < 0.45:
        return [*subject, _pick(rng, _FR["intransitive"]), *place, *time], "."
    verb = _pick(rng, _FR["transitive"])
    return [*subject, verb, *_pick(rng, _FR["object"]).split(), *place, *time], "."


# --- Mandarin: Chinese characters, verb-object pairs that collocate --------------------------
_ZH = {
    "subject": ("我", "你", "他", "她", "我们", "他们", "老师", "妈妈", "爸爸", "朋友", "学生",
                "小猫", "小狗"),
    "time": ("今天", "明天", "昨天", "早上", "晚上", "现在"),
    "place": ("家", "学校", "公园", "商店", "图书馆", "外面"),
    "adverb": ("也", "常常"),
    "verb_objects": {
        "看": ("书", "电视", "电影", "报纸"),
        "吃": ("饭", "苹果", "面条", "水果"),
        "喝": ("水", "茶", "牛奶", "咖啡"),
        "买": ("书", "苹果", "水果", "衣服", "花"),
        "写": ("字", "信", "作业"),
        "找": ("朋友", "老师", "钥匙"),
        "喜欢": ("花", "茶", "水果", "小猫", "电影"),
    },
    "degree": ("很", "非常"),
    "adjective": ("高兴", "忙", "累", "开心"),
}


def _mandarin(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = [_pick(rng, _ZH["subject"])]
    time = [_pick(rng, _ZH["time"])] if _maybe(rng, 0.4) else []
    head = [*time, *subject] if _maybe(rng, 0.5) else [*subject, *time]
    if rng.random() < 0.2:
        return [*head, _pick(rng, _ZH["degree"]), _pick(rng, _ZH["adjective"])], "。"
    adverb = [_pick(rng, _ZH["adverb"])] if _maybe(rng, 0.25) else []
    place = ["在", _pick(rng, _ZH["place"])] if _maybe(rng, 0.35) else []
    verbs = tuple(_ZH["verb_objects"])
    verb = _pick(rng, verbs)
    aspect = ["了"] if verb != "喜欢" and time in ([], ["昨天"]) and _maybe(rng, 0.4) else []
    words = [*head, *adverb, *place, verb, *aspect, _pick(rng, _ZH["verb_objects"][verb])]
    if not aspect and _maybe(rng, 0.1):
        return [*words, "吗"], "？"
    return words, "。"


# --- Japanese: kana only, polite verb stems with ます / ました -------------------------------
_JA = {
    "subject": ("わたし", "ともだち", "せんせい", "はは", "ちち", "ねこ", "いぬ", "こども", "あに",
                "あね"),
    "time": ("きょう", "あした", "きのう", "まいにち", "あさ", "よる"),
    "place": ("がっこう", "こうえん", "いえ", "みせ", "えき", "としょかん"),
    "verb_objects": {
        "よみ": ("ほん", "しんぶん", "てがみ"),
        "のみ": ("みず", "おちゃ", "ミルク", "コーヒー"),
        "たべ": ("パン", "りんご", "ごはん", "ケーキ"),
        "み": ("テレビ", "えいが", "はな"),
        "かい": ("ほん", "パン", "りんご", "はな", "ケーキ"),
        "かき": ("てがみ", "なまえ"),
    },
    "motion": ("いき", "き", "かえり"),
    "adjective": ("かわいい", "おおきい", "ちいさい", "げんき"),
}


def _japanese(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = [_pick(rng, _JA["subject"]), "は"]
    time = [_pick(rng, _JA["time"])] if _maybe(rng, 0.45) else []
    tense = "ました" if time == ["きのう"] else "ます"
    kind = rng.random()
    if kind < 0.2:
        words = [*subject, *(["とても"] if _maybe(rng, 0.3) else []),
                 _pick(rng, _JA["adjective"]), "です"]
        return (words + ["か"], "。") if _maybe(rng, 0.3) else (words, "。")
    if kind < 0.45:
        return [*subject, *time, _pick(rng, _JA["place"]), "へ", _pick(rng, _JA["motion"]),
                tense], "。"
    place = [_pick(rng, _JA["place"]), "で"] if _maybe(rng, 0.3) else []
    verbs = tuple(_JA["verb_objects"])
    verb = _pick(rng, verbs)
    obj = _pick(rng, _JA["verb_objects"][verb])
    return [*subject, *time, *place, obj, "を", verb, tense], "。"


# --- Korean: Hangul words (noun + particle), tense follows the time word --------------------
_KO = {
    "subject": ("나는", "저는", "친구는", "선생님은", "엄마는", "아빠는", "아이는", "고양이는",
                "동생은", "학생은"),
    "time": ("오늘", "내일", "어제", "아침에", "저녁에", "매일"),
    "place": ("집", "학교", "공원", "시장", "도서관"),
    "verbs": {  # present, past, objects
        "read": ("읽어요", "읽었어요", ("책을", "신문을", "편지를")),
        "drink": ("마셔요", "마셨어요", ("물을", "우유를", "커피를", "차를")),
        "eat": ("먹어요", "먹었어요", ("밥을", "빵을", "사과를")),
        "see": ("봐요", "봤어요", ("영화를", "꽃을")),
        "buy": ("사요", "샀어요", ("책을", "빵을", "사과를", "꽃을", "옷을")),
        "write": ("써요", "썼어요", ("편지를", "이름을")),
    },
    "motion": (("가요", "갔어요"), ("와요", "왔어요")),
    "adjective": ("커요", "작아요", "예뻐요", "바빠요", "좋아요"),
    "degree": ("정말", "아주"),
}


def _korean(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = [_pick(rng, _KO["subject"])]
    time = [_pick(rng, _KO["time"])] if _maybe(rng, 0.45) else []
    past = int(time == ["어제"])
    end = "?" if _maybe(rng, 0.1) else "."
    kind = rng.random()
    if kind < 0.2:
        degree = [_pick(rng, _KO["degree"])] if _maybe(rng, 0.4) else []
        return [*subject, *time, *degree, _pick(rng, _KO["adjective"])], end
    if kind < 0.45:
        motion = _pick(rng, _KO["motion"])[past]
        return [*subject, *time, _pick(rng, _KO["place"]) + "에", motion], end
    place = [_pick(rng, _KO["place"]) + "에서"] if _maybe(rng, 0.3) else []
    verb = _pick(rng, tuple(_KO["verbs"]))
    present, past_form, objects = _KO["verbs"][verb]
    return [*subject, *time, *place, _pick(rng, objects), (present, past_form)[past]], end


_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[list[str], str]]] = {
    "en": _english, "de": _german, "fr": _french, "zh": _mandarin, "ja": _japanese,
    "ko": _korean,
}


def _check_language(language: str) -> None:
    if language not in _BUILDERS:
        raise ValueError(f"unsupported language {language!r}; expected one of {list(LANGUAGES)}")


def generate_sentence(language: str, rng: np.random.Generator) -> Sentence:
    """One random sentence of 3-8 words in ``language``, drawn with ``rng``."""
    _check_language(language)
    while True:  # redraw the rare combinations outside the length bounds
        words, end = _BUILDERS[language](rng)
        if MIN_WORDS <= len(words) <= MAX_WORDS:
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
                     partition: str | None = None, max_draws_per_sentence: int = 200
                     ) -> list[Sentence]:
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
        sentence = generate_sentence(language, rng)
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
    "en": ("where", "was", "very", "the"),
    "de": ("ist", "sehr"),
    "fr": ("est-ce", "que", "est", "très"),
    "zh": ("在", "了", "吗"),
    "ja": ("は", "へ", "で", "を", "ます", "ました", "とても", "です", "か"),
    "ko": (),
}
_TABLES = {"en": _EN, "de": _DE, "fr": _FR, "zh": _ZH, "ja": _JA, "ko": _KO}
_NON_WORDS = {"m", "f", "read", "drink", "eat", "see", "buy", "write"}  # table labels


def vocabulary(language: str) -> frozenset[str]:
    """Every word the grammar can produce (space-separated units; table entries for zh/ja)."""
    _check_language(language)
    words: set[str] = set(_EXTRA_WORDS[language])
    for key, value in _TABLES[language].items():
        for entry in _strings([value]):
            if entry in _NON_WORDS:
                continue
            if language == "ko" and key == "place":
                words.update({entry + "에", entry + "에서"})
            else:
                words.update(entry.split())
    return frozenset(words)
