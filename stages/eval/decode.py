"""Batched greedy decoding of a manifest with a model adapter, for evaluation.

Utterances are decoded in batches of similar duration (longest first: less padding, and a batch
that does not fit shows at once), with the adapter's own ``generate`` and ``decode_response``, so
evaluation uses exactly the blocked-token set and stop rule of training rollouts. Predictions come
back in manifest order whatever the decoding order.

A failed batch is an error, never a row of empty predictions: :class:`DecodeError` names the
batch's utterance ids and the cause, and nothing is returned. Empty predictions in the output are
therefore always what the model wrote.

Language hint: with ``language_hint`` each utterance's manifest ``language`` goes to the adapter
(Qwen3-ASR then forces its ``language X<asr_text>`` header, as the OPD teacher is prompted; audio
chat LMs do not use it); without it every prompt is language-free and a Qwen3-ASR model detects
the language itself (``Prediction.language`` reports what it wrote).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from stages.common.errors import UserError
from stages.data.batching import Utterance, duration_sorted_batches, load_batch
from stages.models.base import AsrAdapter

log = logging.getLogger(__name__)


class DecodeError(UserError):
    """A batch could not be decoded; the message names its utterance ids and the cause."""

    def __init__(self, message: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


@dataclass(frozen=True)
class Prediction:
    """What the model wrote for one utterance."""

    utterance: Utterance
    text: str  # transcript: response cut at the stop token, header dropped, specials skipped
    tokens: int  # response ids before the stop token
    stopped: bool  # False: ran into max_new_tokens without writing the stop token
    language: str | None  # ISO code the response declared (Qwen3-ASR header), else None


@dataclass(frozen=True)
class DecodeResult:
    predictions: list[Prediction]  # manifest order
    decode_seconds: float  # audio loading + feature extraction + generation, all batches
    batches: int


def prompt_languages(utterances: Sequence[Utterance], language_hint: bool) -> list[str | None]:
    """The language each prompt is built with: the manifest's, or none without the hint."""
    return [u.language if language_hint else None for u in utterances]


def _describe(err: BaseException) -> str:
    text = str(err).strip() or "(no message)"
    return text if isinstance(err, UserError) else f"{type(err).__name__}: {text}"


def decode_batch(adapter: AsrAdapter, utterances: Sequence[Utterance], *, max_new_tokens: int,
                 language_hint: bool = True) -> list[Prediction]:
    """Load and decode one batch; any failure becomes a :class:`DecodeError` naming its ids."""
    ids = [u.id for u in utterances]
    try:
        batch = load_batch(utterances)
        responses = adapter.generate(batch.audios, prompt_languages(utterances, language_hint),
                                     max_new_tokens=max_new_tokens)
        if len(responses) != len(utterances):
            raise RuntimeError(f"the model returned {len(responses)} responses for "
                               f"{len(utterances)} clips")
        predictions = []
        for utt, response in zip(utterances, responses, strict=True):
            stopped = bool(response) and response[-1] == adapter.stop_token_id
            predictions.append(Prediction(
                utterance=utt, text=adapter.decode_response(response),
                tokens=len(response) - int(stopped), stopped=stopped,
                language=adapter.response_language(response)))
        return predictions
    except Exception as err:
        message = (f"decoding failed for the batch of utterances {', '.join(ids)}: "
                   f"{_describe(err)}. No predictions were written.")
        # A user error already says what to do; an audio or model error gets its traceback
        # in the log and the usual remedies.
        if not isinstance(err, UserError):
            log.error("decoding failed for %s", ", ".join(ids), exc_info=err)
            message += (" A corrupt or missing audio file needs the manifest revalidated "
                        "(python -m stages.validate); an out-of-memory error a smaller "
                        "--batch-size; the traceback is in the log.")
        raise DecodeError(message, ids) from err


def decode_utterances(adapter: AsrAdapter, utterances: Sequence[Utterance], *, batch_size: int,
                      max_new_tokens: int, language_hint: bool = True,
                      progress: bool = True) -> DecodeResult:
    """Greedy-decode every utterance in duration-sorted batches; predictions in input order."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError("utterance ids must be unique")
    by_id: dict[str, Prediction] = {}
    batches = 0
    # mininterval: under Snakemake stderr is a log file, where every refresh is a new line.
    bar = tqdm(total=len(utterances), unit="utt", desc="decode", file=sys.stderr,
               disable=not progress, mininterval=2, dynamic_ncols=True)
    start = time.perf_counter()
    with bar:
        for batch in duration_sorted_batches(utterances, batch_size):
            for prediction in decode_batch(adapter, batch, max_new_tokens=max_new_tokens,
                                           language_hint=language_hint):
                by_id[prediction.utterance.id] = prediction
            batches += 1
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    return DecodeResult([by_id[i] for i in ids], seconds, batches)
