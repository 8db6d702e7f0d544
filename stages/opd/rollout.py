"""Student rollouts for OPD (DESIGN §5, step 1): decode without gradients, then clean.

:func:`rollout` decodes a batch with the student adapter's ``generate`` (greedy by default;
sampling from softmax(logits / temperature) with a seeded ``torch.Generator`` when asked), with the
adapter's blocked-token set at -inf, up to ``max_new_tokens`` ids per row, and cleans the result
with :func:`clean_responses` into a :class:`Rollout`.

Cleaning rules (the supervised positions are what the loss sees; position j is the state that
predicts response id j):

- each row is cut right after its first stop token; ids after it are dropped;
- ``keep_stop_token=True`` (default): the stop token is the row's last supervised position, so the
  teacher can say whether the student stopped at the right time. ``False``: the stop token stays
  in the response (it is scored, the teacher and student see the same ids) but its position is not
  supervised;
- a row that never stopped (it ran into ``max_new_tokens``) is kept as it is, truncated, every
  position supervised; ``stopped`` counts how many rows did stop;
- an *empty* row is one without any transcript token: only the stop token (the student stopped at
  once) or nothing at all. It is still supervised when the stop is kept: stopping at once is a
  decision the teacher may disagree with (it then puts its mass on a first word), and training on
  it is how the student unlearns empty outputs. ``nonempty`` counts the rows with a transcript;
- any of the student's stop ids ends a row (a checkpoint may declare several end ids);
- a student that writes its own header when its prompt names no language (Qwen3-ASR's
  ``language X<asr_text>``) keeps the header in its response -- it is what the student
  conditioned on -- but the header is not transcript: its positions are never supervised, and
  the OPD step hands the teacher only what follows it, under a prompt that names the header's
  language (stages/opd/step.py). ``headers`` holds each row's header length (0: none).

Decoding a sharded student. By default the rollout runs on a *decoding copy*
(:class:`DecodingCopy`): a plain, unsharded model of the student's architecture in the compute
dtype (bf16 on CUDA), whose weights are refreshed from the trained ones before every rollout
(one all-gather per parameter, all ranks together). On the copy, decoding is what it is for any
model that is not being trained: no FSDP hooks on each of its forwards, a static KV cache and a
compiled step on CUDA (``AsrAdapter.generate``), and no synchronisation between ranks -- each
rank stops as soon as its own rows have stopped. It costs one compute-dtype copy of the student
per rank (1.2 GB for a 0.6 B student in bf16), what keeping the sharded model gathered costs.

With ``reshard_during_decode`` the sharded model decodes itself instead, re-gathering its
parameters on every step (least memory, slowest). Then every rank must run the same number of
forward passes, or the per-layer all-gathers deadlock: ``generate(synced_gpus=True)`` guarantees
it (every step all-reduces a "this rank is done" flag, a finished rank keeps calling ``forward``
until every rank is done, and the output of a finished rank is unchanged by the extra steps).
``synced_gpus`` None turns it on when a process group of more than one rank is initialized and
the sharded model decodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from stages.models.base import AsrAdapter


@dataclass(frozen=True)
class Rollout:
    """Cleaned student responses of one batch.

    Attributes:
        responses: student ids per row, ending with the stop token when the row stopped.
        stopped: whether each row reached the stop token.
        supervised: end of the supervised positions per row: the response length, minus one for
            a stopped row when the stop token is not kept.
        keep_stop_token: the cleaning switch the rollout was made with.
        headers: ids of the student's own header at the start of each row; positions from
            ``headers[b]`` to ``supervised[b]`` are supervised.
        header_languages: the language each header names (None: no header, or unknown).
    """

    responses: list[list[int]]
    stopped: list[bool]
    supervised: list[int]
    keep_stop_token: bool
    headers: list[int] = field(default_factory=list)  # leading header ids per row (or none)
    header_languages: list[str | None] = field(default_factory=list)
    # The language each row's prompt named (None: none); a family that picks a language before
    # decoding (Whisper) has filled the rows the caller left open. Scoring uses the same.
    prompt_languages: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.headers:  # a rollout without student headers
            object.__setattr__(self, "headers", [0] * len(self.responses))
            object.__setattr__(self, "header_languages", [None] * len(self.responses))
        if not self.prompt_languages:
            object.__setattr__(self, "prompt_languages", [None] * len(self.responses))

    @property
    def lengths(self) -> list[int]:
        """Ids per response, the stop token included (what the student generated)."""
        return [len(r) for r in self.responses]

    @property
    def nonempty(self) -> list[bool]:
        """Whether each row holds at least one transcript id (not header, not stop)."""
        return [n > h + int(s) for n, h, s in zip(self.lengths, self.headers, self.stopped,
                                                  strict=True)]

    def bodies(self) -> list[list[int]]:
        """Each response without its header: what the teacher scores."""
        return [r[h:] for r, h in zip(self.responses, self.headers, strict=True)]

    def supervised_mask(self, width: int | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [B, width] (default width: the longest response), True at supervised
        positions."""
        width = max(self.lengths, default=0) if width is None else width
        columns = torch.arange(width)[None, :]
        mask = ((columns < torch.tensor(self.supervised, dtype=torch.long)[:, None])
                & (columns >= torch.tensor(self.headers, dtype=torch.long)[:, None]))
        return mask.to(device) if device is not None else mask

    def stats(self) -> dict[str, float]:
        """Trainer stats (see ``stages.train.metrics``): ``rollout_len`` (mean ids per row, stop
        included; also ``rollout_len_max``), ``stopped`` and ``nonempty`` ratios, ``tokens``
        (generated ids, for tokens/s) and ``rows``."""
        rows = len(self.responses)
        lengths = self.lengths
        return {
            "rows": rows,
            "tokens": sum(lengths),
            "rollout_len_sum": sum(lengths), "rollout_len_count": rows,
            "rollout_len_max": max(lengths, default=0),
            "stopped_sum": sum(self.stopped), "stopped_count": rows,
            "nonempty_sum": sum(self.nonempty), "nonempty_count": rows,
            "student_header_rows": sum(1 for h in self.headers if h),
        }


def clean_responses(raw: Sequence[Sequence[int]], stop_token_ids: int | Sequence[int], *,
                    keep_stop_token: bool = True) -> Rollout:
    """Cut each row after its first stop id and mark its supervised positions (rules in the
    module docstring)."""
    stops = {stop_token_ids} if isinstance(stop_token_ids, int) else set(stop_token_ids)
    responses, stopped, supervised = [], [], []
    for row in raw:
        ids = [int(i) for i in row]
        end = next((position for position, token in enumerate(ids) if token in stops), None)
        if end is not None:
            ids = ids[: end + 1]
            stopped.append(True)
            supervised.append(len(ids) if keep_stop_token else len(ids) - 1)
        else:
            stopped.append(False)
            supervised.append(len(ids))
        responses.append(ids)
    return Rollout(responses, stopped, supervised, keep_stop_token)


def with_student_headers(roll: Rollout, student: AsrAdapter,
                         prompt_languages: Sequence[str | None]) -> Rollout:
    """Mark the header a header-writing student put at the start of the rows whose prompt named
    no language (a forced header is in the prompt, never in the response)."""
    if not student.writes_header:
        return roll
    headers, languages = [], []
    for response, language in zip(roll.responses, prompt_languages, strict=True):
        header = student.response_header(response) if language is None else None
        headers.append(header.length if header else 0)
        languages.append(header.language if header else None)
    return replace(roll, headers=headers, header_languages=languages)


def default_synced_gpus() -> bool:
    """True when this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class DecodingCopy:
    """A plain copy of an FSDP2-sharded student for decoding (see the module docstring).

    Built once from the sharded model's architecture (its class without FSDP, from its config),
    in ``dtype`` on the student's device; :meth:`refresh` copies the current weights in (a
    collective: every rank calls it). :attr:`adapter` is the student's adapter on the copy.
    """

    def __init__(self, student: AsrAdapter, dtype: torch.dtype) -> None:
        model = student.model
        plain = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
        with torch.device(student.device):
            copy = plain(model.config)
        for param in copy.parameters():  # buffers (rotary tables) keep their dtype, as in FSDP
            param.data = param.data.to(dtype)
        self.model = copy.eval().requires_grad_(False)
        self.model.generation_config = model.generation_config
        self.adapter = student.with_model(self.model)
        self._student = model
        self._buffers = dict(model.named_buffers())

    @torch.no_grad()
    def refresh(self) -> AsrAdapter:
        """Copy the student's current weights in; returns :attr:`adapter`. The sharded model is
        unsharded group by group (FSDP's own all-gathers, one per block, in its compute dtype)
        rather than parameter by parameter."""
        groups = [m for m in self._student.modules() if isinstance(m, FSDPModule)]
        for group in groups:
            group.unshard()
        try:
            sources = dict(self._student.named_parameters())
            for name, target in self.model.named_parameters():
                source = sources[name]
                target.copy_(source.full_tensor() if isinstance(source, DTensor) else source)
        finally:
            for group in groups:
                group.reshard()
        for name, target in self.model.named_buffers():
            if name in self._buffers:
                target.copy_(self._buffers[name])
        return self.adapter


def decoding_copy(student: AsrAdapter) -> AsrAdapter:
    """The student's adapter on its refreshed decoding copy (built on first use and kept on the
    adapter); the student itself when its model is not sharded."""
    if not isinstance(student.model, FSDPModule):
        return student
    copy = getattr(student, "_decoding_copy", None)
    if copy is None:
        dtype = torch.bfloat16 if student.device.type == "cuda" else torch.float32
        copy = DecodingCopy(student, dtype)
        student._decoding_copy = copy
    return copy.refresh()


def rollout(student: AsrAdapter, audios: Sequence[np.ndarray], languages: Sequence[str | None],
            *, max_new_tokens: int, keep_stop_token: bool = True, do_sample: bool = False,
            temperature: float = 1.0, generator: torch.Generator | None = None,
            synced_gpus: bool | None = None, reshard_during_decode: bool = False) -> Rollout:
    """Decode ``audios`` with the student (no gradients, eval mode for the duration) and clean.

    ``languages`` go to the student's prompt (families without a language prompt ignore them).
    ``do_sample`` draws with ``temperature`` from ``generator`` (on the student's device; seed it
    per rank and step for reproducible rollouts). A sharded student decodes on its decoding copy,
    or with ``reshard_during_decode`` itself (``synced_gpus`` None: on when several ranks run);
    see the module docstring.
    """
    if reshard_during_decode:
        decoder = student
        if synced_gpus is None:
            synced_gpus = default_synced_gpus()
    else:
        decoder, synced_gpus = decoding_copy(student), False
    # The model that decodes also picks the open languages (Whisper's detection): on the
    # decoding copy no rank waits for another.
    languages = decoder.own_languages(audios, languages)
    raw = decoder.generate(audios, languages, max_new_tokens=max_new_tokens,
                           do_sample=do_sample, temperature=temperature,
                           synced_gpus=synced_gpus, generator=generator)
    cleaned = clean_responses(raw, student.stop_token_ids, keep_stop_token=keep_stop_token)
    return replace(with_student_headers(cleaned, student, languages),
                   prompt_languages=list(languages))
