"""Whisper (transformers' ``WhisperForConditionalGeneration``): an encoder-decoder family.

The audio goes to the encoder as one 30-second log-mel window; the decoder's prompt is Whisper's
task prefix ``<|startoftranscript|><|xx|><|transcribe|><|notimestamps|>`` and the response the
transcript and ``<|endoftext|>``. The language is the manifest's when the caller gives one, else
Whisper's own detection (the most likely language token after ``<|startoftranscript|>``), so the
prefix always names a language and every row's prompt has the same length: the response starts at
the same decoder position in every row, as it does after left padding in the decoder-only
families.

Decoding uses transformers' plain ``GenerationMixin.generate`` with ``decoder_input_ids`` (not
Whisper's own ``generate``, whose long-form and timestamp logic the pipeline does not use), with
the adapter's blocked ids, stop rule and static cache as for every family. Clips longer than
30 seconds are refused: Whisper would silently transcribe only their first 30 seconds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch.distributed.fsdp import FSDPModule
from transformers import GenerationMixin
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from stages.common.errors import UserError
from stages.data.audio import TARGET_SAMPLE_RATE
from stages.models.base import AsrAdapter, Encoding, PromptBatch, collate_audio

START, TRANSCRIBE, NO_TIMESTAMPS = "<|startoftranscript|>", "<|transcribe|>", "<|notimestamps|>"
_LANGUAGE_TOKEN = "<|{}|>"
# Whisper's code -> ISO code where they differ (Whisper writes Javanese as "jw").
_ISO = {"jw": "jv"}


class WhisperAdapter(AsrAdapter):
    family = "whisper"
    # Whisper's languages; an instance narrows them to the tokens its tokenizer has.
    prompt_languages = frozenset(_ISO.get(code, code) for code in LANGUAGES)

    def __init__(self, model, processor, **options) -> None:
        if not getattr(model.config, "is_encoder_decoder", False):
            raise UserError(f"{type(model).__name__} is not an encoder-decoder model; the "
                            "whisper family needs WhisperForConditionalGeneration")
        tokenizer = processor.tokenizer
        self._start_id, self._transcribe_id, self._no_timestamps_id = (
            self._token_id(tokenizer, token) for token in (START, TRANSCRIBE, NO_TIMESTAMPS))
        # Every ISO code with a language token in this tokenizer (Whisper's LANGUAGES order).
        vocab = tokenizer.get_vocab()
        self.language_ids = {_ISO.get(code, code): vocab[_LANGUAGE_TOKEN.format(code)]
                             for code in LANGUAGES if _LANGUAGE_TOKEN.format(code) in vocab}
        if not self.language_ids:
            raise UserError("the Whisper tokenizer has no language tokens (<|en|>, ...)")
        self.prompt_languages = frozenset(self.language_ids)
        extractor = processor.feature_extractor
        self.max_samples = int(extractor.n_samples)
        super().__init__(model, processor, **options)

    @staticmethod
    def _token_id(tokenizer, token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        if found is None or found == tokenizer.unk_token_id:
            raise UserError(f"the Whisper tokenizer has no {token} token")
        return int(found)

    def _resolve_stop_token(self, stop_token: str | None) -> int:
        if stop_token is None:  # Whisper ends a transcript with <|endoftext|>
            return int(self.tokenizer.eos_token_id)
        return super()._resolve_stop_token(stop_token)

    def prefix(self, language: str) -> list[int]:
        """The decoder prompt for a transcription in ``language`` (ISO code)."""
        if language not in self.language_ids:
            raise UserError(f"language {language!r} has no Whisper language token; known: "
                            f"{', '.join(sorted(self.language_ids))}")
        return [self._start_id, self.language_ids[language], self._transcribe_id,
                self._no_timestamps_id]

    def _sft_prompt_language(self, language: str | None) -> str | None:
        # Training reads the prompt it is given: detecting the language with the model being
        # trained would make the labels depend on its current weights (and, sharded, make ranks
        # run different numbers of forwards).
        if language is None:
            raise UserError("Whisper fine-tuning needs the language of every utterance (its "
                            "decoder prompt names it); set `language` in the manifest")
        return language

    # ---- encoding -------------------------------------------------------------------------------

    def _features(self, clip: np.ndarray, *, on_host: bool = False) -> dict[str, torch.Tensor]:
        if clip.size > self.max_samples:
            raise UserError(f"a {clip.size / TARGET_SAMPLE_RATE:.1f} s clip is longer than "
                            f"Whisper's {self.max_samples / TARGET_SAMPLE_RATE:.0f} s window; "
                            "split long recordings into segments (begin_time/end_time in the "
                            "manifest)")
        gpu = not on_host and self.device.type == "cuda"
        extra = {"device": str(self.device)} if gpu else {}
        out = self.processor.feature_extractor(clip, sampling_rate=TARGET_SAMPLE_RATE,
                                               return_tensors="pt", **extra)
        return {"input_features": out["input_features"]}

    def _encode_clip(self, audio: np.ndarray, language: str | None, *,
                     on_host: bool = False) -> Encoding:
        # Without a language the prompt is only <|startoftranscript|>: what detection reads
        # (own_languages, which build_batch calls for open rows).
        clip = self._as_clip(audio)
        prompt = self.prefix(language) if language is not None else [self._start_id]
        # The features do not depend on the language: a clip first encoded to detect its
        # language is not featurised again for the detected one.
        detected = self._encodings.get(audio, None) if language is not None else None
        return prompt, detected[1] if detected else self._features(clip, on_host=on_host)

    @torch.no_grad()
    def detect_languages(self, features: torch.Tensor) -> list[str]:
        """Whisper's language detection: the most likely language token after
        ``<|startoftranscript|>``, per row of ``features``."""
        start = torch.full((features.shape[0], 1), self._start_id, dtype=torch.long,
                           device=self.device)
        logits = self.model(input_features=features, decoder_input_ids=start,
                            use_cache=False).logits[:, -1]
        codes = list(self.language_ids)
        ids = torch.tensor([self.language_ids[c] for c in codes], device=logits.device)
        return [codes[i] for i in logits[:, ids].argmax(-1).tolist()]

    def own_languages(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]
                      ) -> list[str | None]:
        filled = list(languages)
        open_rows = [row for row, language in enumerate(languages) if language is None]
        # A sharded model's forward is a collective: every rank runs exactly one detection
        # forward per call, over all its rows, whether or not it has open ones.
        rows = list(range(len(audios))) if isinstance(self.model, FSDPModule) else open_rows
        if not rows:
            return filled
        encoded = self._encode_clips([audios[r] for r in rows], [languages[r] for r in rows])
        features = collate_audio([a for _, a in encoded])["input_features"]
        found = self.detect_languages(features.to(self.device, self.model.dtype))
        for row, language in zip(rows, found, strict=True):
            if languages[row] is None:
                filled[row] = language
        return filled

    def build_batch(self, audios: Sequence[np.ndarray], languages: Sequence[str | None],
                    responses: Sequence[Sequence[int]] | None = None) -> PromptBatch:
        """Encoder features, and decoder ids: the four-token prefix, then right-padded
        ``responses`` (if given)."""
        if len(audios) != len(languages):
            raise ValueError(f"{len(audios)} clips but {len(languages)} languages")
        if responses is not None and len(responses) != len(audios):
            raise ValueError(f"{len(audios)} clips but {len(responses)} responses")
        if None in languages:
            languages = self.own_languages(audios, languages)
        encoded = self._encode_clips(audios, languages)
        features = collate_audio([a for _, a in encoded])["input_features"]
        features = features.to(self.device, self.model.dtype)
        prompts = [p for p, _ in encoded]
        responses = [list(r) for r in responses] if responses is not None else [[]] * len(prompts)
        for row, response in enumerate(responses):
            if response and not 0 <= min(response) <= max(response) < self.vocab_size:
                raise ValueError(f"response {row} holds ids outside [0, {self.vocab_size})")
        width = len(prompts[0])
        total = width + max(map(len, responses))
        ids = torch.full((len(prompts), total), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), total), dtype=torch.long)
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            ids[row, :width] = torch.tensor(prompt, dtype=torch.long)
            ids[row, width:width + len(response)] = torch.tensor(response, dtype=torch.long)
            mask[row, :width + len(response)] = 1
        inputs = {"input_features": features, "decoder_input_ids": ids.to(self.device),
                  "decoder_attention_mask": mask.to(self.device)}
        return PromptBatch(inputs=inputs, prompt_length=width)

    def _generate(self, inputs: dict[str, torch.Tensor], **options):
        # Equal-length prompts: no mask needed while decoding. GenerationMixin's generate, not
        # Whisper's (see the module docstring).
        inputs = {k: v for k, v in inputs.items() if k != "decoder_attention_mask"}
        # Whisper's encoder takes no mask (every window is 30 s); an all-ones one stops
        # generate from guessing one from pad ids, and from warning that it cannot.
        features = inputs["input_features"]
        inputs["attention_mask"] = torch.ones(features.shape[0], features.shape[-1],
                                              dtype=torch.long, device=features.device)
        config = copy.copy(options.pop("generation_config"))
        config.decoder_start_token_id = self._start_id  # required, though the prompt is given
        return GenerationMixin.generate(self.model, **inputs, generation_config=config,
                                        **options)
