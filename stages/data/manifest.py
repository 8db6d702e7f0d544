"""The manifest line contract (DESIGN.md §3): field rules, audio path resolution, ids, reason codes.

A manifest is JSONL, one utterance per line:
``{"audio": "a.wav", "text": "...", "task": "asr", "begin_time": -1, "end_time": -1,
"language": "zh", "id": "utt1"}``. This module checks everything that can be checked without
opening the audio; ``stages.data.validation`` adds the audio checks and drives a whole file.
Every problem is a ``LineProblem`` carrying one of the ``REASONS`` codes and a human detail.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

# Reason code -> what it means (shown by `python -m stages.validate --help` and in REPORT.md).
REASONS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON (or not UTF-8; NaN/Infinity are not JSON)",
    "not_an_object": "the line is JSON but not an object ({...})",
    "missing_field": "a required field is absent: audio, or text unless --no-require-text",
    "bad_type": "a field has the wrong type (audio/text/id/language: string; times: number)",
    "bad_task": 'task is present but not "asr"',
    "audio_not_found": "the audio file does not exist (relative paths start at the manifest)",
    "audio_unreadable": "soundfile cannot open or decode the file (not audio, corrupt, cut short)",
    "audio_empty": "the file or the segment holds no samples",
    "audio_not_finite": "the segment holds NaN or infinite samples (float WAV/FLAC)",
    "bad_segment": "begin_time/end_time negative (other than -1), not finite, or end <= begin",
    "segment_out_of_range": "begin_time or end_time lies past the end of the file",
    "too_short": "the segment is shorter than --min-seconds",
    "too_long": "the segment is longer than --max-seconds",
    "empty_text": "text is empty or only whitespace (while text is required)",
    "duplicate_id": "the id (given or derived) is already used by an earlier line",
    "bad_language": "language is not a lower-case ISO 639-1 code (or a 639-3 code a model family "
                    "uses, such as yue) from the accepted list",
}

# ISO 639-1: every two-letter code, with the English name (the teacher's language header and the
# report use the names). Strictly codes: names, regional tags ("en-US") and upper case are refused.
LANGUAGES: dict[str, str] = {
    "aa": "Afar", "ab": "Abkhazian", "ae": "Avestan", "af": "Afrikaans", "ak": "Akan",
    "am": "Amharic", "an": "Aragonese", "ar": "Arabic", "as": "Assamese", "av": "Avaric",
    "ay": "Aymara", "az": "Azerbaijani", "ba": "Bashkir", "be": "Belarusian", "bg": "Bulgarian",
    "bi": "Bislama", "bm": "Bambara", "bn": "Bengali", "bo": "Tibetan", "br": "Breton",
    "bs": "Bosnian", "ca": "Catalan", "ce": "Chechen", "ch": "Chamorro", "co": "Corsican",
    "cr": "Cree", "cs": "Czech", "cu": "Church Slavic", "cv": "Chuvash", "cy": "Welsh",
    "da": "Danish", "de": "German", "dv": "Divehi", "dz": "Dzongkha", "ee": "Ewe", "el": "Greek",
    "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque",
    "fa": "Persian", "ff": "Fulah", "fi": "Finnish", "fj": "Fijian", "fo": "Faroese",
    "fr": "French", "fy": "Western Frisian", "ga": "Irish", "gd": "Scottish Gaelic",
    "gl": "Galician", "gn": "Guarani", "gu": "Gujarati", "gv": "Manx", "ha": "Hausa",
    "he": "Hebrew", "hi": "Hindi", "ho": "Hiri Motu", "hr": "Croatian", "ht": "Haitian Creole",
    "hu": "Hungarian", "hy": "Armenian", "hz": "Herero", "ia": "Interlingua", "id": "Indonesian",
    "ie": "Interlingue", "ig": "Igbo", "ii": "Sichuan Yi", "ik": "Inupiaq", "io": "Ido",
    "is": "Icelandic", "it": "Italian", "iu": "Inuktitut", "ja": "Japanese", "jv": "Javanese",
    "ka": "Georgian", "kg": "Kongo", "ki": "Kikuyu", "kj": "Kuanyama", "kk": "Kazakh",
    "kl": "Kalaallisut", "km": "Khmer", "kn": "Kannada", "ko": "Korean", "kr": "Kanuri",
    "ks": "Kashmiri", "ku": "Kurdish", "kv": "Komi", "kw": "Cornish", "ky": "Kyrgyz",
    "la": "Latin", "lb": "Luxembourgish", "lg": "Ganda", "li": "Limburgish", "ln": "Lingala",
    "lo": "Lao", "lt": "Lithuanian", "lu": "Luba-Katanga", "lv": "Latvian", "mg": "Malagasy",
    "mh": "Marshallese", "mi": "Maori", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian",
    "mr": "Marathi", "ms": "Malay", "mt": "Maltese", "my": "Burmese", "na": "Nauru",
    "nb": "Norwegian Bokmal", "nd": "North Ndebele", "ne": "Nepali", "ng": "Ndonga",
    "nl": "Dutch", "nn": "Norwegian Nynorsk", "no": "Norwegian", "nr": "South Ndebele",
    "nv": "Navajo", "ny": "Chichewa", "oc": "Occitan", "oj": "Ojibwa", "om": "Oromo",
    "or": "Odia", "os": "Ossetian", "pa": "Punjabi", "pi": "Pali", "pl": "Polish", "ps": "Pashto",
    "pt": "Portuguese", "qu": "Quechua", "rm": "Romansh", "rn": "Rundi", "ro": "Romanian",
    "ru": "Russian", "rw": "Kinyarwanda", "sa": "Sanskrit", "sc": "Sardinian", "sd": "Sindhi",
    "se": "Northern Sami", "sg": "Sango", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian",
    "sm": "Samoan", "sn": "Shona", "so": "Somali", "sq": "Albanian", "sr": "Serbian",
    "ss": "Swati", "st": "Southern Sotho", "su": "Sundanese", "sv": "Swedish", "sw": "Swahili",
    "ta": "Tamil", "te": "Telugu", "tg": "Tajik", "th": "Thai", "ti": "Tigrinya", "tk": "Turkmen",
    "tl": "Tagalog", "tn": "Tswana", "to": "Tonga", "tr": "Turkish", "ts": "Tsonga", "tt": "Tatar",
    "tw": "Twi", "ty": "Tahitian", "ug": "Uyghur", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek",
    "ve": "Venda", "vi": "Vietnamese", "vo": "Volapuk", "wa": "Walloon", "wo": "Wolof",
    "xh": "Xhosa", "yi": "Yiddish", "yo": "Yoruba", "za": "Zhuang", "zh": "Chinese", "zu": "Zulu",
}
# ISO 639-3 codes the model families prompt with where ISO 639-1 has none (Qwen3-ASR's
# Cantonese and Filipino, Whisper's Hawaiian); tests/test_validate.py checks every family's codes
# are accepted.
LANGUAGES.update({"yue": "Cantonese", "fil": "Filipino", "haw": "Hawaiian"})
_CODE_BY_NAME = {name.lower(): code for code, name in LANGUAGES.items()}
_CODE_BY_NAME.update({"mandarin": "zh", "farsi": "fa"})

WHOLE_FILE = -1  # the begin_time/end_time value that means "from the start" / "to the end"


class LineProblem(Exception):
    """One manifest line breaks the contract: ``reason`` is a ``REASONS`` code."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Fields:
    """The checked contract fields of one line (other fields ride along untouched)."""

    audio: str
    begin: float  # seconds, or WHOLE_FILE
    end: float  # seconds, or WHOLE_FILE
    language: str | None
    id: str | None  # as given; None when it is to be derived

    @property
    def segmented(self) -> bool:
        return self.begin != WHOLE_FILE or self.end != WHOLE_FILE


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads with options would build a new decoder for every line.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_line(raw: bytes | str) -> dict[str, Any]:
    """Decode one manifest line into a dict, or raise LineProblem (invalid_json, not_an_object).

    NaN and Infinity are refused (Python's json accepts them, other readers do not).
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LineProblem("invalid_json", f"not valid UTF-8 (byte {err.start})") from None
    try:
        value = _DECODER.decode(raw)
    except json.JSONDecodeError as err:
        raise LineProblem("invalid_json", f"{err.msg} at column {err.colno}") from None
    except ValueError as err:
        raise LineProblem("invalid_json", str(err)) from None
    if not isinstance(value, dict):
        raise LineProblem("not_an_object",
                          f"expected a JSON object {{...}}, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _show(value: Any, limit: int = 60) -> str:
    """A value as JSON for a detail message, cut short if long."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _time(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    if value is None:
        return WHOLE_FILE
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LineProblem("bad_type", f"{key} must be a number of seconds or -1, "
                                      f"got {_json_type(value)} {_show(value)}")
    if not math.isfinite(value):
        raise LineProblem("bad_segment", f"{key} must be finite, got {value}")
    if value < 0 and value != WHOLE_FILE:
        raise LineProblem("bad_segment", f"{key} is {value}: use seconds >= 0, or -1 for the "
                                         f"{'start' if key == 'begin_time' else 'end'} of the file")
    return float(value)


def check_language(value: str) -> str:
    """Return ``value`` if it is an accepted code, else raise LineProblem(bad_language)."""
    if value in LANGUAGES:
        return value
    base = value.replace("_", "-").split("-")[0].strip().lower()
    suggestion = base if base in LANGUAGES else _CODE_BY_NAME.get(value.strip().lower())
    hint = f' (did you mean "{suggestion}"?)' if suggestion else ""
    raise LineProblem("bad_language", f"language {_show(value)} is not "
                      f"an accepted code{hint}; accepted: lower-case ISO 639-1 two-letter codes "
                      f"such as zh, en, de, fr, ja, ko, es, it, pt, ru, ar, and the 639-3 codes "
                      f"yue and fil (all {len(LANGUAGES)} are listed in `python -m "
                      f"stages.validate --help`)")


def check_fields(row: dict[str, Any], require_text: bool = True) -> Fields:
    """Check the contract fields of a decoded line; raise LineProblem on the first problem.

    Order: presence and types, task, segment bounds, text content, language, id. Optional
    fields that are null count as absent.
    """
    audio = row.get("audio")
    if "audio" not in row or audio is None:
        raise LineProblem("missing_field", 'no "audio" field: give the audio file path')
    if not isinstance(audio, str) or not audio.strip():
        raise LineProblem("bad_type", f"audio must be a non-empty path string, got "
                                      f"{_json_type(audio)} {_show(audio)}")
    text = row.get("text")
    if require_text and "text" not in row:
        raise LineProblem("missing_field", 'no "text" field: give the reference transcript '
                                           "(or use --no-require-text for a teacher-data pool)")
    if (require_text or text is not None) and not isinstance(text, str):
        raise LineProblem("bad_type", f"text must be a string, got {_json_type(text)}")
    for key in ("id", "language", "task"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise LineProblem("bad_type", f"{key} must be a string, got {_json_type(value)} "
                                          f"{_show(value)}")
    task = row.get("task")
    if task is not None and task != "asr":
        raise LineProblem("bad_task", f'task is {_show(task)}; only "asr" is supported')
    begin, end = _time(row, "begin_time"), _time(row, "end_time")
    if end != WHOLE_FILE and end <= max(begin, 0):
        since = f"begin_time {begin:g}" if begin != WHOLE_FILE else "the start of the file"
        raise LineProblem("bad_segment", f"end_time {end:g} is not after {since}")
    if require_text and not text.strip():
        raise LineProblem("empty_text", "text is empty or only whitespace")
    language = row.get("language")
    if language is not None:
        check_language(language)
    utt_id = row.get("id")
    if utt_id is not None and not utt_id.strip():
        raise LineProblem("bad_type", "id must be a non-empty string (or leave it out)")
    return Fields(audio, begin, end, language, utt_id)


def resolve_audio(audio: str, manifest_dir: str) -> str:
    """Absolute, normalized path of ``audio``; relative paths start at the manifest's folder."""
    return os.path.normpath(os.path.join(os.path.abspath(manifest_dir), audio))


def _seconds_label(seconds: float) -> str:
    # Millisecond precision, no trailing zeros: 1.5 -> "1.5", 3.0 -> "3".
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def derive_id(fields: Fields, audio_path: str, manifest_dir: str) -> str:
    """The id of a line that gives none: the audio path without extension, plus the segment.

    The path is relative to the manifest folder when the file lies under it (else the absolute
    path without its root), with "/" separators: ``wav/spk1/utt3``. A segmented line appends
    ``_<begin>-<end>`` in seconds (millisecond precision; an open end reads "end"):
    ``wav/long_12.5-17.25``, ``wav/long_0-3``, ``wav/long_60-end``.
    """
    folder = os.path.join(os.path.abspath(manifest_dir), "")  # with a trailing separator
    if audio_path.startswith(folder):
        relative = audio_path[len(folder):]
    else:
        relative = os.path.splitdrive(audio_path)[1].lstrip(os.sep)
    stem = os.path.splitext(relative)[0].replace(os.sep, "/")
    if not fields.segmented:
        return stem
    begin = _seconds_label(fields.begin) if fields.begin != WHOLE_FILE else "0"
    end = _seconds_label(fields.end) if fields.end != WHOLE_FILE else "end"
    return f"{stem}_{begin}-{end}"
