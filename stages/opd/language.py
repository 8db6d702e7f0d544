"""The teacher's prompt language for each rollout (DESIGN §5, step 2).

A teacher such as Qwen3-ASR scores a transcript after a ``language X<asr_text>`` header, so it
needs a language for every row, and it must be the context the student's transcript was written
in. In order, a row's teacher language is:

1. ``manifest``: the manifest's ``language``, when the teacher can be prompted with it;
2. ``student_header``: the language of the header the student wrote itself (a Qwen3-ASR student
   whose prompt named no language), when the teacher can be prompted with it;
3. ``detected``: read off the script of the student's transcript (below);
4. ``fallback``: the configured fallback language.

A manifest code the teacher has no prompt for (``sw`` for Qwen3-ASR) is counted as
``lang_unpromptable`` and the row falls through to the next rule: training never stops on it.

Detection, deterministic, by code point: Han (CJK ideographs), kana, Hangul and Latin letters are
counted; digits, punctuation, spaces and other scripts count for nothing. CJK scripts take
precedence over Latin: a code-switched ``我们今天讨论transformer模型`` is Chinese speech with an
English word, not English. Among CJK scripts, any kana makes the text Japanese (Japanese mixes
kanji with kana, Chinese never holds kana), else the more frequent of Hangul (``ko``) and Han
(``zh``; Han wins a tie). Han text with Cantonese-only characters (嘅, 咗, 冇, 佢, …; at least
two, or one in ten Han characters) is ``yue``, when the teacher can be prompted with it, else
``zh``. Text with only Latin letters is ``latin_language`` (``en`` by default): Latin script
cannot tell English from German or French by itself, so corpora with several Latin-script
languages should set ``language`` in the manifest. A text without a counted letter is undetected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from stages.common.errors import UserError

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
# Written Cantonese characters that standard written Chinese does not use.
CANTONESE_CHARACTERS = frozenset("嘅咗冇佢啲嚟嘢哋喺嗰噉乜咩睇攞諗冧揾搵咪嘥瞓")

SOURCE_MANIFEST, SOURCE_HEADER = "manifest", "student_header"
SOURCE_DETECTED, SOURCE_FALLBACK = "detected", "fallback"
SOURCES = (SOURCE_MANIFEST, SOURCE_HEADER, SOURCE_DETECTED, SOURCE_FALLBACK)


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


def is_cantonese(text: str, han: int) -> bool:
    """Han text written in Cantonese: at least two Cantonese-only characters, or one in ten."""
    markers = sum(1 for ch in text if ch in CANTONESE_CHARACTERS)
    return markers >= 2 or (markers >= 1 and 10 * markers >= han)


def detect_language(text: str, *, latin_language: str = "en") -> str | None:
    """The language the script of ``text`` points to, or None when it has no counted letter
    (the rules are in the module docstring)."""
    counts = script_counts(text)
    if not counts:
        return None
    if counts[KANA]:
        return "ja"
    if counts[HANGUL] or counts[HAN]:
        if counts[HANGUL] > counts[HAN]:
            return "ko"
        return "yue" if is_cantonese(text, counts[HAN]) else "zh"
    return latin_language


@dataclass(frozen=True)
class LanguageChoice:
    """Per row: the teacher's prompt language and where it came from (one of ``SOURCES``), and
    how many manifest languages the teacher could not be prompted with."""

    languages: list[str]
    sources: list[str]
    unpromptable: int = 0

    def stats(self) -> dict[str, int]:
        """``lang_<code>``, ``lang_source_<source>`` and ``lang_unpromptable`` counts (summed
        over ranks)."""
        out: dict[str, int] = {}
        for language in self.languages:
            out[f"lang_{language}"] = out.get(f"lang_{language}", 0) + 1
        for source in SOURCES:
            out[f"lang_source_{source}"] = self.sources.count(source)
        out["lang_unpromptable"] = self.unpromptable
        return out


def choose_languages(manifest_languages: Sequence[str | None], texts: Sequence[str], *,
                     fallback: str, latin_language: str = "en",
                     header_languages: Sequence[str | None] | None = None,
                     promptable: Collection[str] | None = None) -> LanguageChoice:
    """The teacher language of every row (the order of the module docstring).

    ``texts``: each row's transcript (header excluded). ``header_languages``: the language of
    each row's student-written header (None: none). ``promptable``: the codes the teacher can be
    prompted with (None: any, for a teacher that takes no language).
    """
    if len(manifest_languages) != len(texts):
        raise ValueError(f"{len(manifest_languages)} manifest languages but {len(texts)} texts")
    headers = list(header_languages) if header_languages is not None else [None] * len(texts)
    if len(headers) != len(texts):
        raise ValueError(f"{len(headers)} header languages but {len(texts)} texts")

    def usable(code: str | None) -> bool:
        return bool(code) and (promptable is None or code in promptable)

    if not usable(fallback):
        raise UserError(f"the fallback language {fallback!r} is not one the teacher can be "
                        f"prompted with ({', '.join(sorted(promptable or ()))}); set "
                        "opd.step.fallback_language to one of them")
    languages, sources, unpromptable = [], [], 0
    for given, header, text in zip(manifest_languages, headers, texts, strict=True):
        if given and not usable(given):
            unpromptable += 1
        detected = detect_language(text, latin_language=latin_language)
        if detected == "yue" and not usable(detected):
            detected = "zh"  # a teacher without Cantonese still reads Chinese characters
        for language, source in ((given, SOURCE_MANIFEST), (header, SOURCE_HEADER),
                                 (detected, SOURCE_DETECTED), (fallback, SOURCE_FALLBACK)):
            if usable(language):
                languages.append(language)
                sources.append(source)
                break
    return LanguageChoice(languages, sources, unpromptable)
