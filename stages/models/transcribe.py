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

import torch
import torch.utils.data
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
    # ISO code the model chose itself: its response header (Qwen3-ASR) or its language detection
    # for an open prompt (Whisper); None when the prompt named the language or nothing did.
    language: str | None
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
    loader_workers: int = setting(
        0, help="processes that read and encode the next batches (prompts, features on the "
                "CPU) while one decodes; 0: a thread reads the audio and the decoder encodes "
                "(features on the GPU when decoding there). Each is a CPU core; on a CPU-only "
                "host they compete with decoding for the cores")

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                                f"{getattr(self, name)}")
        if self.loader_workers < 0:
            raise UserError(f"--loader-workers must be 0 or more, got {self.loader_workers}")


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


Loader = Callable[[], AudioBatch]


def prefetched(batches: Sequence[Sequence[Utterance]], adapter: AsrAdapter | None = None, *,
               language_hint: bool = True, workers: int = 0
               ) -> Iterator[tuple[Sequence[Utterance], Loader]]:
    """Each batch with a loader for its audio, prepared while the previous batch decodes.

    ``workers`` 0: one thread reads the audio (file reading and resampling stay off the
    decoder's path) and the decoder encodes. ``workers`` > 0 (with ``adapter``): that many
    processes read the audio and also encode each clip (prompt ids, features on the CPU), so
    the decoding process does not spend the host time encoding takes between two batches; a
    thread would not do: encoding and the decoding loop are both Python and share the GIL
    (measured: decoding slowed by as much as encoding took). A loading or encoding error
    surfaces, unchanged, when its loader is called."""
    if not batches:
        return
    if workers > 0:
        if adapter is None:
            raise ValueError("encoding in loader processes needs the adapter")
        yield from _encoded_in_processes(batches, adapter, language_hint, workers)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audio-prefetch") as pool:
        pending = pool.submit(load_batch, batches[0])
        for index, group in enumerate(batches):
            current = pending
            if index + 1 < len(batches):
                pending = pool.submit(load_batch, batches[index + 1])
            yield group, current.result


class _EncodedBatches(torch.utils.data.Dataset):
    """Batch ``i``: its audio as tensors (shared memory, no copy through the pipe) and each
    clip's encoding, or the exception that stopped it (re-raised as is by its loader)."""

    def __init__(self, batches: Sequence[Sequence[Utterance]], adapter: AsrAdapter,
                 language_hint: bool) -> None:
        self.batches, self.adapter, self.language_hint = batches, adapter, language_hint

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        group = self.batches[index]
        try:
            batch = load_batch(group)
            languages = prompt_languages(self.adapter, group, self.language_hint)
            encodings = self.adapter.encode_on_host(batch.audios, languages)
            return [torch.from_numpy(a) for a in batch.audios], languages, encodings
        except Exception as err:  # noqa: BLE001 - handed to the decoding process as is
            return err


def _encoded_in_processes(batches, adapter: AsrAdapter, language_hint: bool, workers: int
                          ) -> Iterator[tuple[Sequence[Utterance], Loader]]:
    # Forked: the adapter is inherited, not pickled (its model may be on the GPU, which the
    # loaders never touch). One batch per loader call, in order.
    loader = torch.utils.data.DataLoader(
        _EncodedBatches(batches, adapter, language_hint), batch_size=None, shuffle=False,
        num_workers=workers, prefetch_factor=2, multiprocessing_context="fork")
    for group, item in zip(batches, loader, strict=True):
        if isinstance(item, Exception):
            def failed(err=item):
                raise err
            yield group, failed
            continue
        tensors, languages, encodings = item
        batch = AudioBatch(list(group), [t.numpy() for t in tensors])
        adapter.remember_encodings(batch.audios, languages, encodings)
        yield group, _returning(batch)


def _returning(batch: AudioBatch) -> Loader:
    return lambda: batch


def _decode(adapter: AsrAdapter, utterances: Sequence[Utterance], *, max_new_tokens: int,
            language_hint: bool, logprobs: bool,
            loader: Callable[[], AudioBatch] | None) -> list[Transcript]:
    batch = loader() if loader is not None else load_batch(utterances)
    asked = prompt_languages(adapter, utterances, language_hint)
    # A family that picks open languages before decoding (Whisper) picks them here, once, so
    # the transcripts can say what it picked.
    languages = adapter.own_languages(batch.audios, asked)
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
            tokens=len(body), stopped=stopped,
            language=adapter.response_language(response) or (
                languages[row] if asked[row] is None else None),
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
               progress: bool = True, loader_workers: int = 0) -> TranscriptionResult:
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
        batches_in_order = list(duration_sorted_batches(utterances, batch_size))
        for batch, loader in prefetched(batches_in_order, adapter, language_hint=language_hint,
                                        workers=loader_workers):
            for transcript in transcribe_batch(adapter, batch, max_new_tokens=max_new_tokens,
                                               language_hint=language_hint, logprobs=logprobs,
                                               loader=loader):
                by_id[transcript.utterance.id] = transcript
            batches += 1
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    return TranscriptionResult([by_id[i] for i in ids], seconds, batches)
