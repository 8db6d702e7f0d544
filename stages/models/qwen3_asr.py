"""Qwen3-ASR (transformers' native ``qwen3_asr``): chat prompt plus a language header.

The model answers ``language Chinese<asr_text>transcript<|im_end|>``. When the caller knows the
language, the prompt ends with that header (the processor's own forced-language prefill) and the
response is just the transcript and the stop token; when it does not, the model writes the header
itself, ``decode_response`` drops it and ``response_language`` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

from stages.common.errors import UserError
from stages.models.base import AsrAdapter, ResponseHeader

NAME_TO_LANGUAGE_CODE = {name.lower(): code for code, name in LANGUAGE_CODE_TO_NAME.items()}


def language_name(language: str) -> str:
    """Qwen3-ASR's name for an ISO code (``zh`` -> ``Chinese``); names pass through."""
    if language in LANGUAGE_CODE_TO_NAME:
        return LANGUAGE_CODE_TO_NAME[language]
    if language.lower() in NAME_TO_LANGUAGE_CODE:
        return LANGUAGE_CODE_TO_NAME[NAME_TO_LANGUAGE_CODE[language.lower()]]
    known = ", ".join(sorted(LANGUAGE_CODE_TO_NAME))
    raise UserError(f"language {language!r} is not one Qwen3-ASR can be prompted with; use one "
                    f"of {known}, or leave `language` empty to let the model detect it")


class Qwen3AsrAdapter(AsrAdapter):
    family = "qwen3_asr"
    writes_header = True
    # The languages its processor has a header name for (ISO 639-1, and 639-3 yue, fil).
    prompt_languages = frozenset(LANGUAGE_CODE_TO_NAME)

    def __init__(self, model, processor, **options) -> None:
        if not hasattr(processor, "apply_transcription_request"):
            raise UserError(f"{type(processor).__name__} is not a Qwen3-ASR processor (no "
                            "apply_transcription_request); check the model family")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        # The header comes from the processor's own forced-language prompt, never from a
        # hard-coded string: the part a language adds to the plain prompt.
        probe = np.zeros(1600, dtype=np.float32)
        plain = self._transcription_prompt(probe, None)
        forced = self._transcription_prompt(probe, "English")
        if not forced.startswith(plain) or "English" not in forced[len(plain):]:
            raise UserError("the Qwen3-ASR processor's forced-language prompt does not extend its "
                            "plain prompt; cannot tell the language header apart")
        self.header_template = forced[len(plain):].replace("English", "{language}", 1)
        header_ids = self.tokenizer.encode(self.header_template.format(language="English"),
                                           add_special_tokens=False)
        # The id that closes the header (``<asr_text>``): an added token, so it always stands
        # alone in the token stream whatever text precedes it.
        self.header_end_id = header_ids[-1]
        super().__init__(model, processor, **options)

    def _transcription_prompt(self, audio: np.ndarray, name: str | None) -> str:
        prompts = self.processor.apply_transcription_request(
            audio=[audio], language=None if name is None else [name], tokenize=False)
        return prompts[0]

    def _allowed_control_ids(self) -> set[int]:
        # A detected-language response contains the header marker; it must stay generable.
        return {self.header_end_id}

    def _render_prompt(self, audio: np.ndarray, language: str | None) -> str:
        return self._transcription_prompt(audio, None if language is None
                                          else language_name(language))

    def header(self, language: str) -> str:
        """The assistant header for a language, e.g. ``language Chinese<asr_text>``."""
        return self.header_template.format(language=language_name(language))

    def _sft_prompt_language(self, language: str | None) -> str | None:
        # SFT teaches the header too: the prompt stays open, the assistant part carries it.
        return None

    def _sft_assistant_prefix(self, language: str | None) -> str:
        if language is None:
            raise UserError("Qwen3-ASR fine-tuning needs the language of every utterance (its "
                            "answers start with `language X<asr_text>`); set `language` in the "
                            "manifest")
        return self.header(language)

    def split_header(self, ids: Sequence[int]) -> tuple[str | None, list[int]]:
        """(language name or None, transcript ids) of a generated response.

        Only a leading ``language X<asr_text>`` is a header. A header marker anywhere else (a
        model that repeats it after a forced header) is a control token, not text: it is dropped
        and the ids around it are kept, so no transcript text is lost.
        """
        ids = [int(i) for i in ids]
        name = None
        if self.header_end_id in ids:
            cut = ids.index(self.header_end_id)
            prefix = self.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()
            keyword, _, value = prefix.partition(" ")
            if keyword.lower() == "language" and value.strip() and " " not in value.strip():
                name, ids = value.strip(), ids[cut + 1:]
        return name, [i for i in ids if i != self.header_end_id]

    def response_header(self, ids: Sequence[int]) -> ResponseHeader:
        """The leading ``language X<asr_text>`` of a response written without a forced header:
        its length in ids (marker included) and language. Without the marker the response has
        no header (``complete`` False, length 0): all of it counts as transcript."""
        ids = [int(i) for i in ids]
        if self.header_end_id not in ids:
            return ResponseHeader(length=0, complete=False)
        cut = ids.index(self.header_end_id) + 1
        name, _ = self.split_header(ids[:cut])
        return ResponseHeader(length=cut, complete=True,
                              language=NAME_TO_LANGUAGE_CODE.get((name or "").lower()))

    def _strip_header(self, ids: list[int]) -> list[int]:
        return self.split_header(ids)[1]

    def response_language(self, ids: Sequence[int]) -> str | None:
        """ISO code of the language a generated header names (None: no header, or unknown)."""
        name, _ = self.split_header(ids)
        if name is None:
            return None
        return NAME_TO_LANGUAGE_CODE.get(name.lower())
