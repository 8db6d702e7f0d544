"""Text normalizers applied to references and predictions before errors are counted.

Four names, chosen per metric (``default_normalizer``: ``zh`` for CER, ``en`` for WER):

- ``zh``: Unicode NFKC (full-width letters, digits and symbols become their ASCII forms; half-width
  katakana becomes full-width; CJK unified ideographs are left as they are), lower-case, every
  punctuation (P*) and symbol (S*) character becomes a space, invisible control/format characters
  (Cc, Cf: zero-width space, BOM) are dropped, whitespace collapsed. Under CER the spaces vanish
  anyway; under WER they keep "hello,world" as two words.
- ``en``: Whisper's English normalizer from transformers (contractions, titles, spelled-out numbers
  to digits, fillers removed, punctuation removed). Its British-to-American spelling map is not
  part of the transformers package: Whisper tokenizers read it from a ``normalizer.json`` in the
  checkpoint folder. Without a map spellings are kept as written ("colour" stays "colour"); pass
  ``english_spelling`` (a mapping, or the path of such a ``normalizer.json``) to apply one.
- ``basic``: Whisper's ``BasicTextNormalizer`` (lower-case, bracketed/parenthesized spans removed,
  symbols and punctuation to spaces, whitespace collapsed); language-neutral.
- ``none``: the text as it is, only stripped of leading and trailing whitespace.

Every normalizer returns stripped text with single spaces between words.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from stages.common.errors import UserError

NormalizerName = Literal["zh", "en", "basic", "none"]
NORMALIZERS: tuple[str, ...] = get_args(NormalizerName)
DEFAULT_NORMALIZER = {"cer": "zh", "wer": "en"}

Normalizer = Callable[[str], str]


def default_normalizer(metric: str) -> str:
    """The normalizer used when none is named: ``zh`` for CER, ``en`` for WER."""
    try:
        return DEFAULT_NORMALIZER[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; expected one of cer, wer") from None


def _collapse(text: str) -> str:
    return " ".join(text.split())


@lru_cache(maxsize=65536)
def _zh_char(char: str) -> str:
    """What one NFKC-normalized, lower-cased character becomes under the ``zh`` normalizer."""
    if char.isspace():
        return " "
    category = unicodedata.category(char)
    if category[0] in "PS":  # punctuation and symbols: ，。！？《》、~ $ + ° emoji …
        return " "
    if category in ("Cc", "Cf"):  # invisible: zero-width space, BOM, joiners, controls
        return ""
    return char


def normalize_zh(text: str) -> str:
    """Chinese (and mixed-script) normalization for CER; see the module docstring."""
    # NFKC before lower(): full-width capitals only become ASCII capitals under NFKC.
    folded = unicodedata.normalize("NFKC", text).lower()
    return _collapse("".join(_zh_char(char) for char in folded))


def normalize_none(text: str) -> str:
    """Identity, apart from stripping surrounding whitespace."""
    return text.strip()


def load_spelling_mapping(path: str | Path) -> dict[str, str]:
    """Read a British-to-American spelling map (a Whisper checkpoint's ``normalizer.json``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: spelling map not found; give the path of a JSON object "
                        "mapping spellings, e.g. the normalizer.json of a Whisper checkpoint")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(mapping, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in mapping.items()
    ):
        raise UserError(f"{path}: expected a JSON object of string to string "
                        "(e.g. {\"colour\": \"color\"})")
    return mapping


def _whisper_english(mapping: Mapping[str, str]) -> Normalizer:
    # Imported here: transformers takes about a second to import and CER scoring never needs it.
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    whisper = EnglishTextNormalizer(dict(mapping))

    def normalize_en(text: str) -> str:
        return _collapse(whisper(text))

    return normalize_en


def _whisper_basic() -> Normalizer:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    whisper = BasicTextNormalizer()

    def normalize_basic(text: str) -> str:
        return _collapse(whisper(text))

    return normalize_basic


def normalizer(name: str, *,
               english_spelling: Mapping[str, str] | str | Path | None = None) -> Normalizer:
    """The normalizer called ``name`` (one of ``NORMALIZERS``) as a function ``str -> str``.

    ``english_spelling`` only applies to ``en``: a spelling map, or the path of a JSON file
    holding one.
    """
    if name not in NORMALIZERS:
        raise UserError(f"unknown normalizer {name!r}; choose one of {', '.join(NORMALIZERS)}")
    if english_spelling is not None and name != "en":
        raise UserError(f"a spelling map only applies to the 'en' normalizer, not {name!r}")
    if name == "zh":
        return normalize_zh
    if name == "none":
        return normalize_none
    if name == "basic":
        return _whisper_basic()
    if isinstance(english_spelling, str | Path):
        english_spelling = load_spelling_mapping(english_spelling)
    return _whisper_english(english_spelling or {})
