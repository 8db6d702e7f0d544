"""The teacher's prompt language for each rollout (DESIGN §5, step 2).

A teacher such as Qwen3-ASR scores a transcript after a ``language X<asr_text>`` header, so it
needs a language for every row. The manifest's ``language`` wins when present. Otherwise the
language is read off the script of the student's own transcript, deterministically:

- every character is assigned at most one script by its code point: Han (CJK ideographs), kana
  (Hiragana, Katakana, half-width Katakana), Hangul, Latin (ASCII and Latin-1/Extended letters,
  full-width Latin); digits, punctuation, spaces and letters of other scripts count for nothing;
- scripts vote for languages: Han -> ``zh``, kana -> ``ja``, Hangul -> ``ko``, Latin ->
  ``latin_language`` (``en`` by default). Japanese mixes kanji with kana, so when a text holds any
  kana its Han characters vote for ``ja`` too (a Chinese text never holds kana);
- the language with the most votes wins; a tie goes to the first in :data:`TIE_BREAK_ORDER`
  (``zh``, ``ja``, ``ko``, then the Latin language);
- a text without any counted letter (empty rollout, digits, an unsupported script) gets the
  configured fallback language.

Latin script cannot tell English from German or French by itself; rather than guess from a few
accented letters (``café`` in an English sentence), all Latin text goes to one configurable
language. Corpora with several Latin-script languages should set ``language`` in the manifest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

HAN, KANA, HANGUL, LATIN = "han", "kana", "hangul", "latin"

# Inclusive code-point ranges per script.
_SCRIPT_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, LATIN), (0x0061, 0x007A, LATIN),
    (0x00C0, 0x00D6, LATIN), (0x00D8, 0x00F6, LATIN), (0x00F8, 0x024F, LATIN),  # no × ÷
    (0x1E00, 0x1EFF, LATIN),                      # Latin Extended Additional (Vietnamese etc.)
    (0xFF21, 0xFF3A, LATIN), (0xFF41, 0xFF5A, LATIN),  # full-width A-Z a-z
    (0x3040, 0x309F, KANA), (0x30A0, 0x30FF, KANA), (0x31F0, 0x31FF, KANA),
    (0xFF66, 0xFF9F, KANA),                       # half-width Katakana
    (0x1100, 0x11FF, HANGUL), (0x3130, 0x318F, HANGUL), (0xAC00, 0xD7AF, HANGUL),
    (0x3400, 0x4DBF, HAN), (0x4E00, 0x9FFF, HAN), (0xF900, 0xFAFF, HAN),
    (0x20000, 0x2FA1F, HAN),
)
_SCRIPT_LANGUAGE = {HAN: "zh", KANA: "ja", HANGUL: "ko"}
#: Tie-break order; the Latin language (``latin_language``) comes last.
TIE_BREAK_ORDER: tuple[str, ...] = ("zh", "ja", "ko")

SOURCE_MANIFEST, SOURCE_DETECTED, SOURCE_FALLBACK = "manifest", "detected", "fallback"


def char_script(ch: str) -> str | None:
    """The script of one character (``han``, ``kana``, ``hangul``, ``latin``) or None."""
    code = ord(ch)
    for low, high, script in _SCRIPT_RANGES:
        if low <= code <= high:
            return script
    return None


def script_counts(text: str) -> Counter[str]:
    """Characters per script in ``text`` (only scripts that occur)."""
    return Counter(s for s in map(char_script, text) if s is not None)


def detect_language(text: str, *, latin_language: str = "en") -> str | None:
    """The language the script of ``text`` points to, or None when it has no counted letter.

    See the module docstring for the rule and the tie-break order.
    """
    counts = script_counts(text)
    if not counts:
        return None
    votes: Counter[str] = Counter()
    for script, n in counts.items():
        language = _SCRIPT_LANGUAGE.get(script, latin_language)
        if script == HAN and counts[KANA]:
            language = "ja"
        votes[language] += n
    order = [*TIE_BREAK_ORDER, latin_language]
    return min(votes, key=lambda lang: (-votes[lang],
                                        order.index(lang) if lang in order else len(order)))


@dataclass(frozen=True)
class LanguageChoice:
    """Per row: the teacher's prompt language and where it came from (manifest, detected or
    fallback)."""

    languages: list[str]
    sources: list[str]

    def stats(self) -> dict[str, int]:
        """``lang_<code>`` and ``lang_source_<source>`` counts (summed over ranks)."""
        out: dict[str, int] = {}
        for language in self.languages:
            out[f"lang_{language}"] = out.get(f"lang_{language}", 0) + 1
        for source in (SOURCE_MANIFEST, SOURCE_DETECTED, SOURCE_FALLBACK):
            out[f"lang_source_{source}"] = self.sources.count(source)
        return out


def choose_languages(manifest_languages: Sequence[str | None], texts: Sequence[str], *,
                     fallback: str, latin_language: str = "en") -> LanguageChoice:
    """The teacher language of every row: the manifest's when set (not None/empty), else the
    one detected from the row's transcript, else ``fallback``."""
    if len(manifest_languages) != len(texts):
        raise ValueError(f"{len(manifest_languages)} manifest languages but {len(texts)} texts")
    languages, sources = [], []
    for given, text in zip(manifest_languages, texts, strict=True):
        if given:
            languages.append(given)
            sources.append(SOURCE_MANIFEST)
            continue
        detected = detect_language(text, latin_language=latin_language)
        languages.append(detected if detected is not None else fallback)
        sources.append(SOURCE_DETECTED if detected is not None else SOURCE_FALLBACK)
    return LanguageChoice(languages, sources)
