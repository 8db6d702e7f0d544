"""Batched transcription of utterances with a model adapter: the one decoding path that
evaluation and teacher data share.

Utterances are decoded in batches of similar duration (longest first: less padding, and a batch
that does not fit shows at once), with the adapter's own ``generate`` and ``decode_response``, so
every stage uses exactly the blocked-token set and stop rule of training rollouts. Results come
back in input order whatever the decoding order.

A failed batch is an error, never a row of empty transcripts: :class:`DecodeError` names the
batch's utterance ids and the cause. An empty transcript is therefore always what the model
wrote.

Language: with ``language_hint`` each utterance's manifest ``language`` goes to the adapter
(Qwen3-ASR then forces its ``language X<asr_text>`` header, as the OPD teacher is prompted; audio
chat LMs do not use it); without it every prompt is language-free and a Qwen3-ASR model detects
the language itself (``Transcript.language`` reports what it wrote); so does a model whose family
has no prompt for the manifest's code (``sw`` for Qwen3-ASR).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

from stages.common.errors import UserError
from stages.common.settings import setting
from stages.data.batching import AudioBatch, Utterance, duration_sorted_batches, load_batch
from stages.models.base import AsrAdapter

log = logging.getLogger(__name__)


class DecodeError(UserError):
    """A batch could not be decoded; the message names its utterance ids and the cause."""

    def __init__(self, message: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


@dataclass(frozen=True)
class Transcript:
    """What the model wrote for one utterance."""

    utterance: Utterance
    text: str  # transcript: response cut at the stop token, header dropped, specials skipped
    raw_text: str  # the response before the stop token, decoded with every token (header too)
    tokens: int  # response ids before the stop token
    stopped: bool  # False: ran into max_new_tokens without writing the stop token
    language: str | None  # ISO code the response declared (Qwen3-ASR header), else None
    # Mean log-prob of every generated token (header, text and stop) under the decoding
    # distribution (blocked ids excluded); only with ``logprobs=True``, -inf for no token.
    mean_logprob: float | None = None

    @property
    def generated(self) -> int:
        """Generated ids, the stop token included."""
        return self.tokens + int(self.stopped)


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """batched decoding (duration-sorted batches, greedy)"""

    batch_size: int = setting(16, help="utterances per batch; lower it on out-of-memory")
    max_new_tokens: int = setting(256, help="response length cap in tokens")

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                                f"{getattr(self, name)}")


@dataclass(frozen=True)
class TranscriptionResult:
    transcripts: list[Transcript]  # input order
    decode_seconds: float  # audio loading + feature extraction + generation, all batches
    batches: int


def prompt_languages(adapter: AsrAdapter, utterances: Sequence[Utterance],
                     language_hint: bool) -> list[str | None]:
    """The language each prompt is built with: the manifest's when the hint is on and the
    family can be prompted with it; else none (the model detects it)."""
    return [u.language if language_hint and u.language and adapter.can_prompt(u.language)
            else None for u in utterances]


def _describe(err: BaseException) -> str:
    text = str(err).strip() or "(no message)"
    return text if isinstance(err, UserError) else f"{type(err).__name__}: {text}"


def prefetched(batches: Sequence[Sequence[Utterance]]
               ) -> Iterator[tuple[Sequence[Utterance], Callable[[], AudioBatch]]]:
    """Each batch with a loader for its audio, read in a background thread while the previous
    batch decodes (file reading and resampling stay off the decoder's critical path). A loading
    error surfaces when its loader is called."""
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audio-prefetch") as pool:
        pending = pool.submit(load_batch, batches[0])
        for index, group in enumerate(batches):
            current = pending
            if index + 1 < len(batches):
                pending = pool.submit(load_batch, batches[index + 1])
            yield group, current.result


def _decode(adapter: AsrAdapter, utterances: Sequence[Utterance], *, max_new_tokens: int,
            language_hint: bool, logprobs: bool,
            loader: Callable[[], AudioBatch] | None) -> list[Transcript]:
    batch = loader() if loader is not None else load_batch(utterances)
    languages = prompt_languages(adapter, utterances, language_hint)
    token_logprobs = None
    if logprobs:
        responses, token_logprobs = adapter.generate(batch.audios, languages,
                                                     max_new_tokens=max_new_tokens,
                                                     output_logprobs=True)
    else:
        responses = adapter.generate(batch.audios, languages, max_new_tokens=max_new_tokens)
    if len(responses) != len(utterances):
        raise RuntimeError(f"the model returned {len(responses)} responses for "
                           f"{len(utterances)} clips")
    transcripts = []
    for row, (utt, response) in enumerate(zip(utterances, responses, strict=True)):
        stopped = bool(response) and response[-1] in adapter.stop_token_ids
        body = response[:-1] if stopped else response
        mean = None
        if token_logprobs is not None:
            values = token_logprobs[row]
            mean = math.fsum(values) / len(values) if values else -math.inf
        transcripts.append(Transcript(
            utterance=utt, text=adapter.decode_response(response),
            raw_text=adapter.tokenizer.decode(body, skip_special_tokens=False),
            tokens=len(body), stopped=stopped, language=adapter.response_language(response),
            mean_logprob=mean))
    return transcripts


def transcribe_batch(adapter: AsrAdapter, utterances: Sequence[Utterance], *,
                     max_new_tokens: int, language_hint: bool = True, logprobs: bool = False,
                     loader: Callable[[], AudioBatch] | None = None) -> list[Transcript]:
    """Load (``loader``, e.g. from :func:`prefetched`; default: now) and decode one batch; any
    failure becomes a :class:`DecodeError` naming its ids."""
    ids = [u.id for u in utterances]
    try:
        return _decode(adapter, utterances, max_new_tokens=max_new_tokens,
                       language_hint=language_hint, logprobs=logprobs, loader=loader)
    except Exception as err:
        message = (f"decoding failed for the batch of utterances {', '.join(ids)}: "
                   f"{_describe(err)}.")
        # A user error already says what to do; an audio or model error gets its traceback
        # in the log and the usual remedies.
        if not isinstance(err, UserError):
            log.error("decoding failed for %s", ", ".join(ids), exc_info=err)
            message += (" A corrupt or missing audio file needs the manifest revalidated "
                        "(python -m stages.validate); an out-of-memory error a smaller "
                        "--batch-size; the traceback is in the log.")
        raise DecodeError(message, ids) from err


def transcribe(adapter: AsrAdapter, utterances: Sequence[Utterance], *, batch_size: int,
               max_new_tokens: int, language_hint: bool = True, logprobs: bool = False,
               progress: bool = True) -> TranscriptionResult:
    """Greedy-decode every utterance in duration-sorted batches; transcripts in input order."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError("utterance ids must be unique")
    by_id: dict[str, Transcript] = {}
    batches = 0
    # mininterval: under Snakemake stderr is a log file, where every refresh is a new line.
    bar = tqdm(total=len(utterances), unit="utt", desc="decode", file=sys.stderr,
               disable=not progress, mininterval=2, dynamic_ncols=True)
    start = time.perf_counter()
    with bar:
        for batch, loader in prefetched(list(duration_sorted_batches(utterances, batch_size))):
            for transcript in transcribe_batch(adapter, batch, max_new_tokens=max_new_tokens,
                                               language_hint=language_hint, logprobs=logprobs,
                                               loader=loader):
                by_id[transcript.utterance.id] = transcript
            batches += 1
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    return TranscriptionResult([by_id[i] for i in ids], seconds, batches)
