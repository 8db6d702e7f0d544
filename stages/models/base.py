"""The one interface the pipeline uses to talk to a speech-recognition model.

An adapter wraps a transformers model and its processor and gives every stage the same four
operations on a batch of 16 kHz clips: batched decoding with a blocked-token set, teacher-forced
scoring at the response positions only, SFT inputs with assistant-only labels, and response
encode/decode. Families (one subclass each) only say how a prompt and a response look.

Batch layout, shared by decoding, scoring and SFT so the three see identical token positions:
every clip's prompt is built alone and its features never depend on its batch (one processor call
per clip, or on CUDA one batched STFT equal to it: stages/models/features.py), prompts are
left-padded to one length P, responses follow from column P on and are right-padded (an
encoder-decoder family puts the prompt and response in the decoder ids). Position ids follow the
attention mask exactly as ``generate`` builds them.
Nothing here assumes a vocabulary size or a special-token id: all come from the checkpoint.

A clip's encoding (prompt ids and features) is kept as long as the clip array lives, per prompt
language, so decoding and then scoring the same batch encode it once. Clip arrays are treated as
immutable.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import jinja2
import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
)

from stages.common.errors import UserError
from stages.data.audio import TARGET_SAMPLE_RATE
from stages.models.features import LogMelRecipe, difference, log_mel_batch, verified_recipe

log = logging.getLogger(__name__)

# Processor outputs that belong to the text side; every other tensor is an audio input.
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})
# Auto classes tried in order: the audio-LLM families register as seq2seq LMs in transformers
# (not causal LMs); remote-code checkpoints often register only a causal LM.
# The Auto classes a checkpoint loads with, first match wins: speech seq2seq first (Whisper is
# also a causal LM there, WhisperForCausalLM: its decoder alone), then the audio LLMs, which
# register as seq2seq LMs, then plain causal LMs.
MODEL_AUTO_CLASSES = (AutoModelForSpeechSeq2Seq, AutoModelForSeq2SeqLM, AutoModelForCausalLM)
IGNORE_INDEX = -100
# An added token spelled like markup (``<think>``, ``</tool_call>``, ``<|fim_prefix|>``) is a
# control token even when the tokenizer does not flag it special: never transcript text.
_CONTROL_SPELLING = re.compile(r"<[^<>\s]+>")


def load_model_and_processor(path_or_id: str, *, device: str | torch.device = "cpu",
                             dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """Load a checkpoint with the Auto classes (local dir or hub id), in eval mode on ``device``."""
    errors = []
    model = None
    for loader in MODEL_AUTO_CLASSES:
        try:
            model = loader.from_pretrained(path_or_id, dtype=dtype,
                                           trust_remote_code=trust_remote_code)
            break
        except ValueError as err:  # "Unrecognized configuration class" for this Auto class
            errors.append(f"{loader.__name__}: {err}")
        except OSError as err:
            raise UserError(f"{path_or_id}: cannot load the model ({err}); give a model folder "
                            "or hub id that holds config.json and weights") from err
    if model is None:
        raise UserError(f"{path_or_id}: no Auto class can load this model as a text generator "
                        f"({'; '.join(errors)}); set trust_remote_code if it ships its own code")
    try:
        processor = AutoProcessor.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{path_or_id}: cannot load the processor ({err}); the folder needs the "
                        "processor, feature-extractor and tokenizer files") from err
    return model.to(device).eval(), processor


@dataclass(frozen=True)
class ResponseHeader:
    """The leading part of a response that is not transcript (Qwen3-ASR's ``language
    X<asr_text>``): its length in ids, the language it names (ISO code, None when it names
    none or one the family does not know), and whether the response had one."""

    length: int = 0
    language: str | None = None
    complete: bool = True


@dataclass
class PromptBatch:
    """Model inputs for a padded batch plus the geometry the callers need."""

    inputs: dict[str, torch.Tensor]
    prompt_length: int  # P: the padded prompt length; responses start at this column


class BlockTokens(LogitsProcessor):
    """Give blocked ids a logit of -inf so they can never be chosen.

    The index lives on the scores' device after the first step: a real checkpoint blocks
    ~150,000 padded rows, and copying that index to the GPU at every step is a synchronising
    transfer that stalls the decoding loop."""

    def __init__(self, blocked: torch.Tensor) -> None:
        self.blocked = blocked

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.blocked.device != scores.device:
            self.blocked = self.blocked.to(scores.device)
        # Not in place: with output_logits generate keeps this very tensor as the raw logits.
        return scores.index_fill(-1, self.blocked, float("-inf"))


class GumbelSample(LogitsProcessor):
    """Turn greedy decoding into exact sampling from softmax(logits / temperature).

    argmax(logits / T - log E) with E ~ Exp(1) is a sample of the softmax (the Gumbel-max trick);
    doing it here lets a caller's ``torch.Generator`` drive the randomness, which ``generate``'s
    own multinomial sampling cannot take. Blocked ids stay at -inf.
    """

    def __init__(self, temperature: float, generator: torch.Generator | None) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        self.temperature = temperature
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        noise = torch.empty_like(scores, dtype=torch.float32).exponential_(generator=self.generator)
        return scores.float() / self.temperature - noise.log()


class ChosenLogprobs(LogitsProcessor):
    """Record the log-probability of each chosen token under the decoding distribution (the
    scores it receives, blocked ids already at -inf), without keeping every step's logits:
    at each step the previous step's log-softmax is read at the token just appended, and only the
    latest one is kept (one [B, V] fp32 tensor, instead of [B, T, V])."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._record(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _record(self, chosen: torch.Tensor) -> None:
        if self.previous is not None:
            self.steps.append(self.previous.gather(-1, chosen[:, None].to(
                self.previous.device)).squeeze(-1))

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """[B, T] log-probs of the generated tokens, given the last chosen token of each row."""
        self._record(last_tokens)
        self.previous = None
        return torch.stack(self.steps, dim=1)


def collate_audio(per_clip: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join each clip's audio tensors along dim 0, zero-padding the other dims to the largest.

    Dim 0 holds a clip's items (one feature matrix, or one per fixed-size window): concatenation
    keeps them in clip order, which is the order the model scatters audio embeddings into the
    placeholder tokens. Zero padding is masked by the feature masks the processors return.
    """
    out = {}
    for key in per_clip[0]:
        tensors = [clip[key] for clip in per_clip]
        shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
        padded = []
        for t in tensors:
            pad = []
            for d in reversed(range(1, t.dim())):
                pad += [0, shape[d] - t.shape[d]]
            padded.append(F.pad(t, pad) if any(pad) else t)
        out[key] = torch.cat(padded, dim=0)
    return out


Encoding = tuple[list[int], dict[str, torch.Tensor]]  # a clip's prompt ids and audio inputs


class ClipEncodings:
    """Encodings per (clip array, prompt language), each dropped when its clip array is garbage
    collected: a batch's entries live exactly as long as the batch (no size to tune, and an id
    cannot be reused by another array while its entry exists). Thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, dict[str | None, Encoding]]] = {}
        # Reentrant: a collection inside a locked section may run _drop in the same thread.
        self._lock = threading.RLock()

    def get(self, audio: np.ndarray, language: str | None) -> Encoding | None:
        with self._lock:
            entry = self._entries.get(id(audio))
            if entry is None or entry[0]() is not audio:
                return None
            return entry[1].get(language)

    def put(self, audio: np.ndarray, language: str | None, encoding: Encoding) -> None:
        key = id(audio)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0]() is not audio:
                try:
                    ref = weakref.ref(audio, lambda dead, key=key: self._drop(key, dead))
                except TypeError:  # a list or other plain sequence: not kept
                    return
                entry = self._entries[key] = (ref, {})
            entry[1][language] = encoding

    def _drop(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            if key in self._entries and self._entries[key][0] is ref:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class AsrAdapter:
    """One model family behind one interface (see the module docstring for the batch layout).

    Attributes: ``model``, ``processor``, ``tokenizer``, ``stop_token_id`` (the id a response the
    pipeline writes ends with), ``stop_token_ids`` (every id that ends a decoded response: that
    one first, then every other end id the checkpoint declares), ``pad_token_id``,
    ``blocked_token_ids`` (every control id -- special, or an added token spelled like markup
    such as ``<think>`` -- except the stop ids and the family's own header marker, plus the ids
    past the tokenizer when the logits are wider), ``vocab_size`` (logit width).

    Class attributes: ``writes_header`` (responses start with a header when the prompt names no
    language), ``prompt_languages`` (the ISO codes a prompt can name; None: the family takes no
    language, so any code is fine).
    """

    family: ClassVar[str] = ""
    writes_header: ClassVar[bool] = False
    prompt_languages: ClassVar[frozenset[str] | None] = None

    def __init__(self, model, processor, *, stop_token: str | None = None) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            raise UserError(f"{self._name}: the processor has no tokenizer")
        extractor = getattr(processor, "feature_extractor", None)
        rate = getattr(extractor, "sampling_rate", TARGET_SAMPLE_RATE)
        if rate != TARGET_SAMPLE_RATE:
            raise UserError(f"{self._name}: the feature extractor expects {rate} Hz audio; the "
                            f"pipeline feeds {TARGET_SAMPLE_RATE} Hz")
        self.vocab_size = self._logit_width()
        self.stop_token_id = self._resolve_stop_token(stop_token)
        self.stop_token_ids = self._stop_ids()
        self.pad_token_id = self._resolve_pad_token()
        self.blocked_token_ids = self._blocked_ids()
        self._prompt_cache: dict[str | None, str] = {}
        # Shared with with_model() views: a decoding copy decodes the batch the trained model
        # then scores.
        self._encodings = ClipEncodings()
        # Batched features (stages.models.features), checked against the processor on first use;
        # prompt ids by (language, audio frames per piece), filled by the processor.
        self._feature_recipe: LogMelRecipe | None | bool = False  # False: not yet checked
        # None: on CUDA only. On the CPU one processor call per clip is faster (measured: the
        # batched STFT over padded clips is memory-bound there, 0.43 s against 0.27 s for 40).
        self.batched_features: bool | None = None
        self._prompt_ids: dict[tuple[str | None, tuple[int, ...]], list[int]] = {}

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path_or_id: str, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
             **options: Any) -> AsrAdapter:
        model, processor = load_model_and_processor(
            path_or_id, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(model, processor, **options)

    def with_model(self, model) -> AsrAdapter:
        """This adapter (processor, token sets, prompts) on another model of the same
        architecture, e.g. a decoding copy of a sharded one."""
        view = copy.copy(self)
        view.model = model
        return view

    @property
    def _name(self) -> str:
        return str(getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _logit_width(self) -> int:
        head = self.model.get_output_embeddings()
        width = getattr(head, "out_features", None)
        if width is None:
            width = self.model.config.get_text_config().vocab_size
        return int(width)

    def _eos_ids(self) -> list[int]:
        """End-of-sequence ids the checkpoint declares (generation config first, then config)."""
        ids: list[int] = []
        sources = (getattr(self.model, "generation_config", None), self.model.config,
                   self.model.config.get_text_config())
        for source in sources:
            value = getattr(source, "eos_token_id", None)
            for i in [value] if isinstance(value, int) else list(value or []):
                if i not in ids:
                    ids.append(int(i))
        return ids

    def _resolve_stop_token(self, stop_token: str | None) -> int:
        """The single id responses end with.

        An explicit ``stop_token`` wins. Otherwise the chat template decides: the token it puts
        right after an assistant message, when that token is one of the declared eos ids (Qwen's
        ``<|im_end|>``). Templates that put nothing after the assistant turn (GLM-style) fall back
        to the first declared eos id, then to the tokenizer's eos token.
        """
        if stop_token is not None:
            ids = self.tokenizer.convert_tokens_to_ids([stop_token])
            if not ids or ids[0] is None or ids[0] == self.tokenizer.unk_token_id:
                raise UserError(f"{self._name}: stop token {stop_token!r} is not in the tokenizer")
            return int(ids[0])
        eos = self._eos_ids()
        after = self._token_after_assistant_turn()
        if after is not None and (after in eos or not eos):
            return after
        if eos:
            return eos[0]
        if self.tokenizer.eos_token_id is not None:
            return int(self.tokenizer.eos_token_id)
        raise UserError(f"{self._name}: cannot tell which token ends a response (no eos id in "
                        "the generation config, config or tokenizer); pass stop_token")

    def _stop_ids(self) -> tuple[int, ...]:
        """The stop id, then every other end id the checkpoint declares (a model may end a turn
        with any of them)."""
        others = [i for i in self._eos_ids()
                  if i != self.stop_token_id and 0 <= i < self.vocab_size]
        return (self.stop_token_id, *others)

    def cut_at_stop(self, ids: Sequence[int]) -> tuple[list[int], bool]:
        """(``ids`` up to and including the first stop id, whether there was one)."""
        ids = [int(i) for i in ids]
        for position, token in enumerate(ids):
            if token in self.stop_token_ids:
                return ids[:position + 1], True
        return ids, False

    def can_prompt(self, language: str) -> bool:
        """Whether a prompt can name ``language`` (always, for a family that takes none)."""
        return self.prompt_languages is None or language in self.prompt_languages

    def _token_after_assistant_turn(self) -> int | None:
        marker = "Zq9marker"
        chat = [{"role": "user", "content": [{"type": "text", "text": "hello"}]},
                {"role": "assistant", "content": [{"type": "text", "text": marker}]}]
        try:
            text = self.processor.apply_chat_template(chat, tokenize=False)
        except (ValueError, TypeError, KeyError, AttributeError, jinja2.TemplateError) as err:
            log.debug("chat template cannot render an assistant turn: %s", err)
            return None
        if isinstance(text, list):
            text = text[0]
        if marker not in text:
            return None
        tail = text.split(marker, 1)[1]
        ids = self.tokenizer.encode(tail, add_special_tokens=False) if tail else []
        return int(ids[0]) if ids else None

    def _resolve_pad_token(self) -> int:
        for value in (getattr(self.model.generation_config, "pad_token_id", None),
                      self.tokenizer.pad_token_id,
                      getattr(self.model.config, "pad_token_id", None)):
            if isinstance(value, int):
                return value
        return self.stop_token_id  # pads are always masked, any id works

    def _control_ids(self) -> set[int]:
        """Ids the model must never emit: added tokens that are special or spelled like markup,
        named specials, audio slots."""
        ids = {i for i, tok in self.tokenizer.added_tokens_decoder.items()
               if tok.special or _CONTROL_SPELLING.fullmatch(tok.content)}
        ids.update(i for i in self.tokenizer.all_special_ids if i is not None)
        for holder in (self.model.config, self.processor):
            for name in ("audio_token_id", "audio_bos_token_id", "audio_eos_token_id",
                         "image_token_id", "video_token_id"):
                value = getattr(holder, name, None)
                if isinstance(value, int):
                    ids.add(value)
        return ids

    def _allowed_control_ids(self) -> set[int]:
        """Control ids a family's responses legitimately contain (besides the stop token)."""
        return set()

    def _blocked_ids(self) -> torch.Tensor:
        ids = self._control_ids() - self._allowed_control_ids() - set(self.stop_token_ids)
        ids.update(range(len(self.tokenizer), self.vocab_size))
        return torch.tensor(sorted(i for i in ids if 0 <= i < self.vocab_size), dtype=torch.long)

    # ---- family hooks ----------------------------------------------------------------------------

    def _render_prompt(self, audio: np.ndarray, language: str | None) -> str:
        """The prompt text for one clip (audio placeholder unexpanded), ending where the
        response starts."""
        raise NotImplementedError

    def _sft_prompt_language(self, language: str | None) -> str | None:
        """The language to put in an SFT prompt (the assistant part may carry it instead)."""
        return language

    def _sft_assistant_prefix(self, language: str | None) -> str:
        """Text that precedes the transcript in an SFT assistant turn."""
        return ""

    def response_header(self, ids: Sequence[int]) -> ResponseHeader:
        """The header a response written without a prompt language starts with (none here)."""
        return ResponseHeader()

    def response_language(self, ids: Sequence[int]) -> str | None:
        """The language a generated response declares (ISO code), if the family has a header."""
        return None

    def _strip_header(self, ids: list[int]) -> list[int]:
        return ids

    # ---- responses ------------------------------------------------------------------------------

    def encode_response(self, text: str) -> list[int]:
        """Transcript tokens followed by the stop token: what a response looks like."""
        return self.tokenizer.encode(text, add_special_tokens=False) + [self.stop_token_id]

    def decode_response(self, ids: Sequence[int]) -> str:
        """Transcript text of a response: cut at the stop token, drop a family header."""
        ids, stopped = self.cut_at_stop(ids)
        ids = self._strip_header(ids[:-1] if stopped else ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- batching -------------------------------------------------------------------------------

    def _prompt_text(self, audio: np.ndarray, language: str | None) -> str:
        # The rendered text does not depend on the clip (its placeholder is expanded later).
        if language not in self._prompt_cache:
            self._prompt_cache[language] = self._render_prompt(audio, language)
        return self._prompt_cache[language]

    @staticmethod
    def _as_clip(audio: np.ndarray) -> np.ndarray:
        clip = np.asarray(audio, dtype=np.float32)
        if clip.ndim != 1 or clip.size == 0:
            raise ValueError(f"expected a non-empty mono clip, got shape {clip.shape}")
        return clip

    def _encode_clip(self, audio: np.ndarray, language: str | None, *,
                     on_host: bool = False) -> Encoding:
        clip = self._as_clip(audio)
        # On CUDA the log-mel features are computed there too (transformers' torch STFT; equal
        # to the CPU ones within 1e-5): on the CPU they cost more than a decoding step.
        # ``on_host``: in a loader process, which must not touch the GPU.
        gpu = not on_host and self.device.type == "cuda"
        extra = {"device": str(self.device)} if gpu else {}
        out = self.processor(text=[self._prompt_text(clip, language)], audio=[clip],
                             return_tensors="pt", **extra)
        keep = out["attention_mask"][0].bool() if "attention_mask" in out else slice(None)
        prompt = out["input_ids"][0][keep].tolist()
        unused = set(getattr(self.processor, "unused_input_names", None) or ())
        audio_inputs = {k: v for k, v in out.items()
                        if k not in _TEXT_KEYS and k not in unused and torch.is_tensor(v)}
        return prompt, audio_inputs

    def _encode_clips(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]
                      ) -> list[Encoding]:
        """Each clip's prompt ids and audio inputs, encoded once per clip array and language
        (an OPD step decodes, then scores the batch)."""
        encoded = [self._encodings.get(audio, language)
                   for audio, language in zip(audios, languages, strict=True)]
        missing = [row for row, encoding in enumerate(encoded) if encoding is None]
        if missing:
            fresh = self._encode_batch([audios[row] for row in missing],
                                       [languages[row] for row in missing])
            for row, encoding in zip(missing, fresh, strict=True):
                self._encodings.put(audios[row], languages[row], encoding)
                encoded[row] = encoding
        return encoded

    def _batched_features(self) -> LogMelRecipe | None:
        wanted = self.batched_features
        if not (self.device.type == "cuda" if wanted is None else wanted):
            return None
        if self._feature_recipe is False:
            self._feature_recipe = verified_recipe(
                self.processor, lambda probe: self._encode_clip(probe, None, on_host=True)[1])
        return self._feature_recipe

    def _encode_batch(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]
                      ) -> list[Encoding]:
        """Encodings of clips not seen before: features in one batched pass where the family's
        recipe is known (equal to the processor's own, see stages.models.features), the prompt
        from the processor once per (language, audio length in frames); else one processor
        call per clip."""
        recipe = self._batched_features()
        clips = [self._as_clip(audio) for audio in audios]
        batched = log_mel_batch(recipe, clips, self.device) if recipe is not None else None
        if batched is None:
            return [self._encode_clip(clip, language) for clip, language in zip(
                clips, languages, strict=True)]
        encoded = []
        for clip, language, (audio_inputs, frames) in zip(clips, languages, batched,
                                                          strict=True):
            prompt = self._prompt_ids.get((language, frames))
            if prompt is None:
                prompt, theirs = self._encode_clip(clip, language)
                problem = difference(audio_inputs, theirs)
                if problem:  # a processor the probes did not catch: trust the processor
                    log.warning("%s: batched features disabled (%s)", self._name, problem)
                    self._feature_recipe = None
                    return self._encode_batch(audios, languages)
                self._prompt_ids[(language, frames)] = prompt
            encoded.append((prompt, audio_inputs))
        return encoded

    def encode_on_host(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]
                       ) -> list[Encoding]:
        """Each clip's encoding computed on the CPU, touching neither the model nor the GPU:
        what a loader process (forked from this one) runs; the decoding process hands the
        results to :meth:`remember_encodings`."""
        return [self._encode_clip(a, lang, on_host=True)
                for a, lang in zip(audios, languages, strict=True)]

    def remember_encodings(self, audios: Sequence[np.ndarray], languages: Sequence[str | None],
                           encodings: Sequence[Encoding]) -> None:
        """Use ``encodings`` (made elsewhere, e.g. by :meth:`encode_on_host`) for these clips
        while they live."""
        for audio, language, encoding in zip(audios, languages, encodings, strict=True):
            self._encodings.put(audio, language, encoding)

    def build_batch(self, audios: Sequence[np.ndarray], languages: Sequence[str | None],
                    responses: Sequence[Sequence[int]] | None = None) -> PromptBatch:
        """Left-padded prompts, then right-padded ``responses`` (if given), plus audio inputs."""
        if len(audios) != len(languages):
            raise ValueError(f"{len(audios)} clips but {len(languages)} languages")
        if responses is not None and len(responses) != len(audios):
            raise ValueError(f"{len(audios)} clips but {len(responses)} responses")
        encoded = self._encode_clips(audios, languages)
        prompts = [p for p, _ in encoded]
        responses = [list(r) for r in responses] if responses is not None else [[]] * len(prompts)
        for row, response in enumerate(responses):
            if response and not 0 <= min(response) <= max(response) < self.vocab_size:
                raise ValueError(f"response {row} holds ids outside [0, {self.vocab_size})")
        width = max(map(len, prompts))
        total = width + max(map(len, responses))
        input_ids = torch.full((len(prompts), total), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), total), dtype=torch.long)
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            start = width - len(prompt)
            input_ids[row, start:width] = torch.tensor(prompt, dtype=torch.long)
            input_ids[row, width:width + len(response)] = torch.tensor(response, dtype=torch.long)
            mask[row, start:width + len(response)] = 1
        # Same rule as GenerationMixin._prepare_position_ids_for_generation.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        audio_inputs = collate_audio([a for _, a in encoded])
        float_dtype = self.model.dtype
        for key, value in audio_inputs.items():
            inputs[key] = value.to(float_dtype) if value.is_floating_point() else value
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return PromptBatch(inputs=inputs, prompt_length=width)

    # ---- decoding -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _decoding_mode(self) -> Iterator[None]:
        """Decode with the model's plain distribution, in eval mode.

        ``generate`` fills every option left unset from the checkpoint's generation config, so a
        shipped repetition penalty, suppress list or top-k would silently change rollouts; the
        checkpoint's config is swapped for an empty one while decoding. Eval mode keeps dropout
        out of rollouts taken in the middle of training; both are restored afterwards.
        """
        saved, training = self.model.generation_config, self.model.training
        self.model.generation_config = GenerationConfig()
        self.model.eval()
        try:
            yield
        finally:
            self.model.generation_config = saved
            self.model.train(training)

    def _static_cache(self) -> bool:
        """Decode with a static KV cache (and so transformers' compiled step): on CUDA, for a
        model that is not sharded. On the CPU the dynamic cache is as fast (measured on the
        demo models) and needs no compilation."""
        return self.device.type == "cuda" and not isinstance(self.model, FSDPModule)

    @torch.no_grad()
    def generate(self, audios: Sequence[np.ndarray], languages: Sequence[str | None], *,
                 max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                 synced_gpus: bool = False, generator: torch.Generator | None = None,
                 output_logits: bool = False, output_logprobs: bool = False):
        """Batched decoding; each row's response ids up to and including the stop token.

        Any of ``stop_token_ids`` ends a row. Rows that never stop end after ``max_new_tokens``
        ids without one. Blocked ids get -inf
        logits. ``do_sample`` draws from softmax(logits / temperature) with ``generator`` (on the
        model's device). Under FSDP pass ``synced_gpus=True`` so all ranks step together.
        With ``output_logits`` also returns the raw logits [B, T, V] (fp32) that chose each id;
        with ``output_logprobs`` the log-probability of each response id under the decoding
        distribution (blocked ids excluded), a list per row (memory: one step's logits).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        batch = self.build_batch(audios, languages)
        if self.blocked_token_ids.device != self.device:  # moved once, not at every step
            self.blocked_token_ids = self.blocked_token_ids.to(self.device)
        processors = LogitsProcessorList([BlockTokens(self.blocked_token_ids)])
        recorder = ChosenLogprobs() if output_logprobs else None
        if recorder is not None:
            processors.append(recorder)
        if do_sample:
            processors.append(GumbelSample(temperature, generator))
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=list(self.stop_token_ids), pad_token_id=self.pad_token_id,
            return_dict_in_generate=True, output_logits=output_logits,
            cache_implementation="static" if self._static_cache() else None)
        inputs = {k: v for k, v in batch.inputs.items() if k != "position_ids"}
        with self._decoding_mode():
            out = self._generate(inputs, generation_config=config,
                                 logits_processor=processors, synced_gpus=synced_gpus)
        new = out.sequences[:, batch.prompt_length:]
        responses = [self.cut_at_stop(row)[0] for row in new.tolist()]
        if output_logits:
            return responses, torch.stack(out.logits, dim=1).float()
        if recorder is not None:
            logprobs = recorder.finish(new[:, -1]).cpu()
            return responses, [logprobs[row, :len(r)].tolist()
                               for row, r in enumerate(responses)]
        return responses

    def own_languages(self, audios: Sequence[np.ndarray], languages: Sequence[str | None]
                      ) -> list[str | None]:
        """``languages`` with the rows the caller left open (None) filled by the model's own
        choice where the family makes it before decoding (Whisper's language detection); None
        stays None for families that decide while decoding or not at all."""
        return list(languages)

    def _generate(self, inputs: dict[str, torch.Tensor], **options):
        """The model's ``generate`` on :meth:`build_batch` inputs (a family may call another)."""
        return self.model.generate(**inputs, **options)

    # ---- scoring --------------------------------------------------------------------------------

    def response_logits(self, audios: Sequence[np.ndarray], languages: Sequence[str | None],
                        responses: Sequence[Sequence[int]], *, mask_blocked: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits at the response positions only.

        Returns fp32 logits [B, R, V] where [b, j] predicts ``responses[b][j]``, and a bool mask
        [B, R]. The LM head runs on R positions per row, never on the whole sequence. Gradients
        flow when called under grad. ``mask_blocked`` sets the blocked ids to -inf, i.e. scores
        under the same distribution decoding samples from.
        """
        lengths = [len(r) for r in responses]
        longest = max(lengths, default=0)
        mask = torch.zeros((len(responses), longest), dtype=torch.bool)
        for row, n in enumerate(lengths):
            mask[row, :n] = True
        mask = mask.to(self.device)
        if longest == 0:
            return torch.zeros((len(responses), 0, self.vocab_size), device=self.device), mask
        # The last response id is never an input: position P-1+j predicts response id j.
        batch = self.build_batch(audios, languages, [list(r)[:-1] for r in responses])
        logits = self.logits_at_tail(batch.inputs, longest).float()
        if mask_blocked:
            logits = logits.index_fill(-1, self.blocked_token_ids.to(logits.device),
                                       float("-inf"))
        return logits, mask

    def logits_at_tail(self, inputs: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        """The model's logits at the last ``keep`` positions of ``inputs`` (model inputs as
        :meth:`build_batch` makes them), shape (batch, keep, logit width): the LM head runs
        only there, never on the audio and prompt positions before them."""
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            return self.model(**inputs, logits_to_keep=keep, use_cache=False).logits
        # Remote-code models without logits_to_keep: cut the LM head's input to the tail.
        head = self.model.get_output_embeddings()
        handle = head.register_forward_pre_hook(
            lambda _module, args: (args[0][:, -keep:], *args[1:]))
        try:
            return self.model(**inputs, use_cache=False).logits
        finally:
            handle.remove()

    # ---- supervised fine-tuning -----------------------------------------------------------------

    def sft_inputs(self, audios: Sequence[np.ndarray], languages: Sequence[str | None],
                   texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Model inputs plus ``labels``: -100 except on the assistant tokens (stop included)."""
        if len(texts) != len(audios):
            raise ValueError(f"{len(audios)} clips but {len(texts)} transcripts")
        targets = [self.tokenizer.encode(self._sft_assistant_prefix(lang) + text,
                                         add_special_tokens=False) + [self.stop_token_id]
                   for lang, text in zip(languages, texts, strict=True)]
        prompt_languages = [self._sft_prompt_language(lang) for lang in languages]
        batch = self.build_batch(audios, prompt_languages, targets)
        # The token ids the model reads (the decoder's in an encoder-decoder family).
        ids = batch.inputs.get("decoder_input_ids", batch.inputs.get("input_ids"))
        labels = torch.full_like(ids, IGNORE_INDEX)
        width = batch.prompt_length
        for row, target in enumerate(targets):
            labels[row, width:width + len(target)] = torch.tensor(target, dtype=torch.long)
        return {**batch.inputs, "labels": labels}
