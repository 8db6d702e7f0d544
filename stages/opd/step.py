"""One OPD step on a batch, forward part (DESIGN §5): rollout, teacher, student, loss.

API for the training and calibration stages::

    cfg = OpdConfig(top_k=32, max_new_tokens=64)
    prepare_teacher(teacher)                       # eval mode, no parameter needs a gradient
    loss_sum, positions, stats = opd_step(student, teacher, vocab_map, batch, cfg)
    # trainer: backward on loss_sum, normalize by the positions summed over ranks and
    # micro-batches (stages/train/loop.py does both); stats follow stages.train.metrics naming.

    out = opd_forward(..., compute_grad=False)     # calibration: also returns the rollout,
    out.rollout.responses, out.teacher_languages   # the teacher languages and the row masks

``student`` and ``teacher`` are :class:`~stages.models.base.AsrAdapter` s; the student's model may
be FSDP2-sharded (``fully_shard`` wraps it in place, the adapter keeps working). ``vocab_map``
maps student ids to teacher ids (:class:`~stages.opd.vocab.VocabMap`). ``batch`` is an
:class:`~stages.data.batching.AudioBatch`; its manifest languages go to the student's prompt and,
when set, to the teacher's.

What happens, in order:

1. rollout (:mod:`stages.opd.rollout`): the student decodes the batch without gradients and the
   rows are cleaned (cut at any stop id). A student that wrote its own header (Qwen3-ASR without
   a manifest language) keeps it in its response: it is the context the student's transcript
   was written in, so the student is scored with it; its positions are not supervised;
2. teacher language per row (:mod:`stages.opd.language`): the manifest's, else the student's
   header language, else detected from the transcript, else ``cfg.fallback_language`` (a
   language the teacher cannot be prompted with falls through, counted). The teacher's prompt
   names it (forced header), so teacher and student condition every supervised position on the
   same text: prompt, header, transcript so far;
3. teacher scoring without gradients: the transcript after the student's header is mapped to
   teacher ids (a secondary end id of the student becomes its main one). An id without a
   teacher counterpart is sent to the teacher as its pad id, so the teacher's predictions *after*
   it condition on a wrong prefix: those positions are dropped from the loss (the position that
   predicts the unmapped id itself has a correct prefix and stays; the unmapped id is -inf on the
   teacher side and simply not in the valid union). Counted as ``unmapped_tokens`` (ids) and
   ``unmapped_masked_positions``. The teacher's logits at the kept positions are turned into
   log-probabilities in fp32 over the teacher's *full* vocabulary first and only then gathered into
   the student vocabulary (student-blocked ids -inf), so teacher values are always normalized
   log-probabilities;
4. student scoring with gradients (unless ``compute_grad=False``): logits at response positions,
   with the student's blocked ids set to -inf (the distribution decoding draws from);
5. loss: :func:`stages.opd.loss.union_topk_kl` with ``reduction="sum"`` over the kept positions.
   ``positions`` is the number of *used* positions (≥ 2 valid union ids), the unit the trainer
   normalizes by. With no used position the loss is an exact zero still connected to the student's
   logits, so backward (and its FSDP collectives) runs on every rank. A NaN or +inf in the
   student's logits or the teacher's log-probs makes the loss NaN (counted as
   ``nonfinite_student_positions`` / ``nonfinite_teacher_positions``), so the trainer's
   non-finite guard skips the step instead of the loss dropping those positions unseen.

Every rank must call this in lock-step: the rollout syncs its decoding steps across ranks
(``synced_gpus``, default on when more than one rank runs) and each model runs exactly one
scoring forward per call, whatever the rollout (a response always holds at least one id).

Stats (floats, named for ``stages.train.metrics``): ``vuss_sum``/``vuss_count`` and the same
value under the reference recipe's name ``opd_valid_topk_mean_sum``/``_count``;
``teacher_mass_sum``/``_count``; ``top1_agree_sum``/``_count``; ``kl_sum``/``kl_count`` (mean KL
without τ²); ``used_fraction_sum``/``_count`` (used / scored positions); ``positions_scored``,
``positions_used``; from the rollout ``rollout_len_sum``/``_count``, ``rollout_len_max``,
``stopped_sum``/``_count``, ``nonempty_sum``/``_count``, ``tokens``, ``rows``,
``student_header_rows``; ``unmapped_tokens``, ``unmapped_masked_positions``; ``lang_<code>``,
``lang_source_{manifest,student_header,detected,fallback}`` and ``lang_unpromptable``;
``nonfinite_student_positions``, ``nonfinite_teacher_positions``;
and seconds ``time_rollout``, ``time_teacher``, ``time_student``, ``time_loss`` (CUDA is
synchronized before each clock read).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from stages.data.batching import AudioBatch
from stages.models.base import AsrAdapter
from stages.opd.config import OpdConfig
from stages.opd.language import LanguageChoice, choose_languages
from stages.opd.loss import union_topk_kl
from stages.opd.rollout import Rollout, rollout
from stages.opd.vocab import VocabMap


@dataclass
class OpdOutput:
    """Everything :func:`opd_forward` computed; :func:`opd_step` returns the first three."""

    loss_sum: Tensor
    positions: int
    stats: dict[str, float]
    rollout: Rollout
    teacher_languages: LanguageChoice
    scored_mask: Tensor  # bool [B, R]: positions given to the loss (supervised, not after unmapped)


def prepare_teacher(teacher: AsrAdapter) -> AsrAdapter:
    """Freeze the teacher: eval mode (no dropout) and no parameter requires a gradient."""
    teacher.model.eval()
    teacher.model.requires_grad_(False)
    return teacher


class _Clock:
    """Wall-clock phases; synchronizes CUDA first so asynchronous kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        spent, self.last = now - self.last, now
        return spent


def map_to_teacher(vocab_map: VocabMap, responses: Sequence[Sequence[int]], fill_id: int
                   ) -> tuple[list[list[int]], list[int], list[int | None]]:
    """Teacher ids of each response, unmapped ids replaced by ``fill_id``.

    Returns ``(teacher_responses, unmapped counts per row, index of each row's first unmapped id
    or None)``.
    """
    lengths = [len(r) for r in responses]
    width = max(lengths, default=0)
    ids = torch.zeros((len(responses), width), dtype=torch.long)
    for row, response in enumerate(responses):
        ids[row, : len(response)] = torch.as_tensor(list(response), dtype=torch.long)
    mapped, unmapped = vocab_map.to_teacher_ids(ids, fill_id)
    real = torch.arange(width)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
    unmapped = unmapped.cpu() & real
    mapped = mapped.cpu()
    teacher_responses = [mapped[row, :n].tolist() for row, n in enumerate(lengths)]
    counts = unmapped.sum(-1).tolist()
    first = [int(row.nonzero()[0, 0]) if c else None for row, c in zip(unmapped, counts,
                                                                         strict=True)]
    return teacher_responses, counts, first


def teacher_logprobs(teacher: AsrAdapter, vocab_map: VocabMap, audios: Sequence[np.ndarray],
                     languages: Sequence[str | None], teacher_responses: Sequence[Sequence[int]],
                     mask: Tensor, *, blocked_student_ids: Tensor | None) -> Tensor:
    """Teacher log-probabilities [N, student width] at the N positions where ``mask`` [B, R] is
    True (row-major order), fp32, normalized over the teacher's full vocabulary before mapping."""
    with torch.no_grad():
        logits, _ = teacher.response_logits(audios, languages, teacher_responses)
        selected = logits[mask.to(logits.device)]
        del logits
        logprobs = torch.log_softmax(selected.float(), dim=-1)
        return vocab_map.teacher_to_student_logprobs(logprobs,
                                                     blocked_student_ids=blocked_student_ids)


def student_picked_languages(roll: Rollout, asked: Sequence[str | None]
                             ) -> list[str | None]:
    """The language the student chose itself in each row, else None: the one its header names,
    or the one its family picked for a prompt left open (Whisper's detection). The teacher is
    prompted with it after the manifest's: it is what the student conditioned on."""
    return [header or (prompted if given is None else None)
            for header, prompted, given in zip(roll.header_languages, roll.prompt_languages,
                                               asked, strict=True)]


def nonfinite_rows(values: Tensor) -> int:
    """Rows of [N, V] values holding a NaN or +inf (-inf is a legitimate "impossible")."""
    return int((torch.isnan(values) | torch.isposinf(values)).any(-1).sum())


def opd_forward(student: AsrAdapter, teacher: AsrAdapter, vocab_map: VocabMap,
                batch: AudioBatch, cfg: OpdConfig, *, synced_gpus: bool | None = None,
                generator: torch.Generator | None = None, compute_grad: bool = True
                ) -> OpdOutput:
    """The OPD step's forward part with everything it computed (see the module docstring)."""
    if len(batch) == 0:
        raise ValueError("opd_forward: empty batch")
    device = student.device
    clock = _Clock(device)
    stats: dict[str, float] = {}

    # A language the student cannot be prompted with leaves its prompt open (it writes its own
    # header); the teacher's language is chosen below either way.
    student_languages = [lang if lang and student.can_prompt(lang) else None
                         for lang in batch.languages]
    roll = rollout(student, batch.audios, student_languages, max_new_tokens=cfg.max_new_tokens,
                   keep_stop_token=cfg.keep_stop_token, do_sample=cfg.sample,
                   temperature=cfg.sample_temperature, generator=generator,
                   synced_gpus=synced_gpus, reshard_during_decode=cfg.reshard_during_decode)
    stats.update(roll.stats())
    stats["time_rollout"] = clock.lap()

    bodies = roll.bodies()
    choice = choose_languages(batch.languages, [student.decode_response(b) for b in bodies],
                              fallback=cfg.fallback_language, latin_language=cfg.latin_language,
                              header_languages=student_picked_languages(
                                  roll, student_languages),
                              promptable=teacher.prompt_languages)
    stats.update(choice.stats())
    # Any of the student's end ids means "stop"; the teacher is told the student's main one.
    bodies = [[student.stop_token_id if i in student.stop_token_ids else i for i in body]
              for body in bodies]
    teacher_responses, unmapped, first_unmapped = map_to_teacher(
        vocab_map, bodies, teacher.pad_token_id)
    width = max(roll.lengths)
    supervised = roll.supervised_mask(width)
    scored = supervised.clone()
    for row, first in enumerate(first_unmapped):
        if first is not None:
            scored[row, roll.headers[row] + first + 1:] = False
    stats["unmapped_tokens"] = sum(unmapped)
    stats["unmapped_masked_positions"] = int((supervised & ~scored).sum())
    stats["positions_scored"] = int(scored.sum())
    # The teacher's positions are the student's minus the student's own header.
    teacher_mask = torch.zeros((len(bodies), max(map(len, bodies), default=0)), dtype=torch.bool)
    for row, header in enumerate(roll.headers):
        teacher_mask[row, :len(bodies[row])] = scored[row, header:header + len(bodies[row])]
    scored = scored.to(device)
    if teacher.model.training:
        teacher.model.eval()
    target = teacher_logprobs(teacher, vocab_map, batch.audios, choice.languages,
                              teacher_responses, teacher_mask,
                              blocked_student_ids=student.blocked_token_ids)
    stats["time_teacher"] = clock.lap()

    grad_mode = contextlib.nullcontext() if compute_grad else torch.no_grad()
    with grad_mode:
        logits, _ = student.response_logits(batch.audios, roll.prompt_languages,
                                            roll.responses)
        stats["time_student"] = clock.lap()
        # Blocked ids are -inf on the student side too: both distributions are the ones
        # decoding draws from, the student's top-k never wastes a union slot on an id it cannot
        # emit, and top-1 agreement compares the teacher's choice with the student's greedy one.
        # In place on the gathered copy: no second [N, V] tensor (indexing keeps no output for
        # backward).
        selected = logits[scored]
        selected.index_fill_(-1, student.blocked_token_ids.to(selected.device), float("-inf"))
        # With no used position (none scored, or none with 2 valid ids) this is an exact zero
        # that is still connected to ``logits`` (through the indexing above), so backward
        # reaches every parameter the forward used and its FSDP collectives match the other
        # ranks'.
        target = target.to(selected.device)
        loss_sum, loss_stats = union_topk_kl(selected, target, top_k=cfg.top_k,
                                             temperature=cfg.temperature, reduction="sum")
        # The loss drops ids that are not finite (-inf: blocked or unmapped), so a NaN or +inf
        # from a broken forward would vanish with them. Such a position poisons the loss
        # instead: the trainer's non-finite guard skips the step and counts it.
        broken = {"student": nonfinite_rows(selected), "teacher": nonfinite_rows(target)}
        if any(broken.values()):
            loss_sum = loss_sum + float("nan")
    stats["nonfinite_student_positions"] = broken["student"]
    stats["nonfinite_teacher_positions"] = broken["teacher"]
    positions = int(loss_stats["positions"])
    vuss = float(loss_stats["vuss_sum"])
    stats.update({
        "positions_used": positions,
        "vuss_sum": vuss, "vuss_count": positions,
        "opd_valid_topk_mean_sum": vuss, "opd_valid_topk_mean_count": positions,
        "teacher_mass_sum": float(loss_stats["teacher_mass_sum"]),
        "teacher_mass_count": positions,
        "top1_agree_sum": float(loss_stats["top1_agree_count"]), "top1_agree_count": positions,
        "kl_sum": float(loss_stats["kl_sum"]), "kl_count": positions,
        "used_fraction_sum": positions, "used_fraction_count": stats["positions_scored"],
    })
    stats["time_loss"] = clock.lap()
    return OpdOutput(loss_sum, positions, stats, roll, choice, scored)


def opd_step(student: AsrAdapter, teacher: AsrAdapter, vocab_map: VocabMap, batch: AudioBatch,
             cfg: OpdConfig, *, synced_gpus: bool | None = None,
             generator: torch.Generator | None = None, compute_grad: bool = True
             ) -> tuple[Tensor, int, dict[str, float]]:
    """``(loss_sum, used positions, stats)`` for one batch; see the module docstring.

    ``compute_grad=False`` (calibration) scores the student under ``no_grad``: no graph is built
    and ``loss_sum`` does not require a gradient. ``synced_gpus``: None = on when several ranks
    run. ``generator``: drives sampled rollouts (``cfg.sample``).
    """
    out = opd_forward(student, teacher, vocab_map, batch, cfg, synced_gpus=synced_gpus,
                      generator=generator, compute_grad=compute_grad)
    return out.loss_sum, out.positions, out.stats
