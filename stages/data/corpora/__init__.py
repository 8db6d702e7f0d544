"""Corpus readers for the prepare stage, one module per source layout.

Each module has ``LAYOUT`` (its --help text), ``USES`` (the options it reads),
``DEFAULT_LANGUAGE`` (None: the rows or --language must say) and ``read(source, options) ->
Listing``; ``stages.data.prepare`` drives them.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

from stages.data.corpora import aishell, hf, kaldi, librispeech, wenetspeech

Format = Literal["librispeech", "aishell", "wenetspeech", "kaldi", "hf"]
FORMATS: dict[str, ModuleType] = {
    "librispeech": librispeech,
    "aishell": aishell,
    "wenetspeech": wenetspeech,
    "kaldi": kaldi,
    "hf": hf,
}
